"""The feedback studio in a real browser: sign in, label by keyboard, undo, export, train on it.

The app runs under uvicorn on a loopback port over a SQLite store; headless Chromium (Debian's
``/usr/bin/chromium``, driven by Playwright) uses it as an annotator would, so studio.js's
shortcuts, the CSRF'd forms, the redirects and the export download are all exercised for real.
The export then trains a reward model, the end of the loop the studio exists for.

Without Chromium the tests skip; CI sets ``RLHFKIT_REQUIRE_BROWSER=1`` to make that a failure.
``RLHFKIT_UPDATE_SCREENSHOTS=1`` also rewrites the README's screenshot of the labelling page.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from rlhfkit.feedback.store import Store, open_store
from rlhfkit.feedback.web import create_app
from rlhfkit.feedback.web.auth import hash_password

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "images" / "studio-labelling.png"
SECRET = "browser-test-secret-0123456789"
NAME, PASSWORD = "ada", "correct horse battery"
CAMPAIGN = "reviews"
SUBJECTS = ["the film", "the soundtrack", "the acting", "the ending", "the script", "the sets"]


# --- the browser and the server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, or a skip (a failure where RLHFKIT_REQUIRE_BROWSER=1) without one."""
    required = os.environ.get("RLHFKIT_REQUIRE_BROWSER") == "1"
    missing = (
        f"no Chromium at {CHROMIUM} (apt-get install chromium)" if not CHROMIUM.is_file() else ""
    )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = missing or "Playwright is not installed (pip install -e '.[dev]')"
    if missing:
        if required:
            pytest.fail(f"RLHFKIT_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(f"browser test skipped: {missing}")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@contextmanager
def serving(store: Store, campaign: str) -> Iterator[str]:
    """The studio over ``store`` under uvicorn in a background thread; yields its base URL.

    The socket is bound here, on port 0, and handed to uvicorn: the port is free and known
    before the server starts, with no window for another process to take it.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    app = create_app(store, secret_key=SECRET, campaign=campaign)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started or not thread.is_alive():
                break
            time.sleep(0.05)
        assert server.started, "uvicorn did not start within 10 s"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _campaign(store: Store, prompts_and_outputs: list[tuple[str, tuple[str, str]]]) -> None:
    """A pairwise campaign, one task per prompt, and the annotator (an admin, to export)."""
    store.create_campaign(CAMPAIGN, task_kinds=("pairwise",))
    for prompt, texts in prompts_and_outputs:
        prompt_id = store.add_prompt(CAMPAIGN, prompt)
        outputs = [
            store.add_output(prompt_id, text, model="tiny", model_hash="h", seed=seed)
            for seed, text in enumerate(texts)
        ]
        store.add_task(CAMPAIGN, "pairwise", outputs)
    store.add_annotator(NAME, hash_password(PASSWORD), is_admin=True)


def _sign_in(page, base_url: str) -> None:
    page.goto(f"{base_url}/label")
    assert page.url == f"{base_url}/login"  # no session yet
    page.fill("input[name=name]", NAME)
    page.fill("input[name=password]", PASSWORD)
    with page.expect_navigation():
        page.click("form[action='/login'] button[type=submit]")
    assert page.url == f"{base_url}/label"


def _expect_progress(page, labelled: int, remaining: int) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#progress")).to_have_text(f"{labelled} labelled · {remaining} remaining")


# --- the tests -----------------------------------------------------------------------------------


def test_keyboard_labelling_exports_pairs_that_train_a_reward_model(
    browser, tmp_path, tiny_model_dir
):
    from rlhfkit.config import FeedbackDataCfg, LogCfg, ModelCfg, RunCfg
    from rlhfkit.data.feedback import load_pairs
    from rlhfkit.models.reward_model import load_reward_model
    from rlhfkit.train import offline, reward

    liked = {s: f" {s} was wonderful, truly wonderful." for s in SUBJECTS}
    disliked = {s: f" {s} was terrible, just terrible." for s in SUBJECTS}
    prompts = {f"Review: {s}": s for s in SUBJECTS}
    with open_store(tmp_path / "feedback.db") as store:
        # the disliked text comes first for half the prompts, so both A and B get chosen
        _campaign(
            store,
            [
                (prompt, (liked[s], disliked[s]) if i % 2 else (disliked[s], liked[s]))
                for i, (prompt, s) in enumerate(prompts.items())
            ],
        )
        with serving(store, CAMPAIGN) as base_url:
            page = browser.new_page(accept_downloads=True)
            _sign_in(page, base_url)
            _expect_progress(page, 0, 6)

            labelled = []  # task ids, in order
            keys = {"A": ["1", "a"], "B": ["2", "b"]}
            for step in range(5):
                task_id = page.locator("#label-form input[name=task_id]").input_value()
                a, b = page.locator(".output .text").all_inner_texts()
                assert {a, b} == {
                    liked[prompts[page.inner_text(".prompt .text")]],
                    disliked[prompts[page.inner_text(".prompt .text")]],
                }
                choice = "A" if "wonderful" in a else "B"
                page.keyboard.press(keys[choice][step % 2])  # both keys of each answer
                assert page.is_checked(f"input[name=choice][value={choice}]")
                with page.expect_navigation():
                    page.keyboard.press("Enter")
                _expect_progress(page, step + 1, 5 - step)
                labelled.append(int(task_id))
                assert page.locator("#label-form input[name=task_id]").input_value() != task_id
            assert page.url == f"{base_url}/label"  # the POST was redirected: no re-post on reload

            with page.expect_navigation():
                page.keyboard.press("u")
            _expect_progress(page, 4, 2)
            assert f"took back your label on task {labelled[-1]}" in page.inner_text(".notice")

            page.goto(f"{base_url}/admin")
            with page.expect_download() as download_info:
                page.click("ul.exports a:text-is('pairs')")
            download = download_info.value
            assert download.suggested_filename == f"{CAMPAIGN}-pairs.jsonl"
            export = tmp_path / "pairs.jsonl"
            download.save_as(export)
            page.close()

        records = store.label_records(CAMPAIGN)
        assert len(records) == 4  # five labels, one undone
        assert sorted(r.task_id for r in records) == sorted(labelled[:4])

    rows = [json.loads(line) for line in export.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 4
    for row in rows:
        subject = prompts[row["prompt"]]
        assert (row["chosen"], row["rejected"]) == (liked[subject], disliked[subject])

    data = FeedbackDataCfg(path=str(export), eval_path=str(export))
    assert len(load_pairs(data, "train")) == 4
    cfg = reward.Config(
        model=ModelCfg(path=str(tiny_model_dir), device="cpu"),
        data=data,
        train=offline.TrainCfg(max_steps=3, batch_size=2, max_length=64),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(tmp_path / "rm"), checkpoint_every=0),
        rm=reward.RewardCfg(max_length=32),
    )
    result = reward.train(cfg)
    assert (result.summary["steps"], result.summary["train_examples"]) == (3, 4)
    model = load_reward_model(result.run.path / "model", device="cpu")
    scores = model.score_texts([rows[0]["prompt"] + rows[0]["chosen"]], batch_size=1)
    assert len(scores) == 1 and math.isfinite(scores[0])


@pytest.mark.skipif(
    os.environ.get("RLHFKIT_UPDATE_SCREENSHOTS") != "1",
    reason="rewrites docs/images only when RLHFKIT_UPDATE_SCREENSHOTS=1",
)
def test_update_labelling_screenshot(browser, tmp_path):
    prompt = (
        "Continue this movie review:\n"
        "I went into Paper Lanterns expecting a quiet festival drama, and"
    )
    kind = (
        " came out having seen one of the most moving films of the year. The two leads have "
        "an easy, lived-in chemistry, and the final scene on the river is earned rather "
        "than forced.\n\nNot flawless: the middle third drags. Still, go and see it."
    )
    unkind = (
        " that is what it is, only slower. The script explains every feeling twice, the "
        "score never stops swelling, and the festival print even had a subtitle that "
        "read <b>not bold</b>, tags and all, which the audience found funnier than "
        "any of the jokes."
    )
    with open_store(tmp_path / "feedback.db") as store:
        _campaign(store, [(prompt, (kind, unkind))])
        with serving(store, CAMPAIGN) as base_url:
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            _sign_in(page, base_url)
            assert "<b>not bold</b>" in page.locator(".output .text").all_inner_texts()[1]
            page.keyboard.press("1")  # shows a choice made, as mid-labelling
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            temporary = SCREENSHOT.with_suffix(".tmp.png")
            page.screenshot(path=str(temporary), full_page=True)
            os.replace(temporary, SCREENSHOT)
            page.close()
    assert re.match(rb"\x89PNG", SCREENSHOT.read_bytes()[:4])
