"""report.html: every section from a run directory's files, all text escaped, several runs side
by side with `rlhfkit report`, and the page in a real browser (Chromium via Playwright) with no
console error, no request beyond the page itself and its curves drawn.

The runs here are written by hand in the layout training writes (tests/test_monitors.py checks
that training writes report.html); without Chromium the browser test skips, and CI sets
``RLHFKIT_REQUIRE_BROWSER=1`` to make that a failure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rlhfkit import cli
from rlhfkit.eval import run_report

HOSTILE = "<script>alert('x')</script> & \"quotes\""
SECTIONS = ("monitors", "heldout", "curves", "samples", "tokens", "summary", "config")
CHROMIUM = Path("/usr/bin/chromium")


def interval(mean, half=0.1, n=4):
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def write_run(path: Path, reward_gain: float, alert: bool) -> Path:
    """A finished grpo run's files as training writes them, with a hostile prompt and completion."""
    path.mkdir(parents=True)
    (path / "config.toml").write_text(f'# rlhfkit grpo\nreward = "{HOSTILE}"\nsteps = 4\n')
    rows = [{"step": 0, "eval/reward": 0.1, "eval/length": 8.0}]
    rows += [
        {"step": s, "reward": 0.1 + reward_gain * s, "kl": 0.2 * s, "length": 8.0, "loss": -0.1,
         "grad_norm": 1.0, "lr": 1e-3, "entropy_proxy": 2.0}
        for s in range(1, 5)
    ]  # fmt: skip
    rows[-1].update({"eval/reward": 0.1 + reward_gain * 4, "eval/length": 8.0})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = [HOSTILE, "The movie was", "A cat has", "The sea and"]
    evaluations = [
        {
            "step": step,
            "figures": {"reward": interval(gain + 0.1), "length": interval(8.0, 0.0)},
            "change": {"reward": interval(gain)} if step else {},
            "values": {"reward": [gain + 0.1] * 4, "length": [8.0] * 4},
            "completions": [f"{HOSTILE} at step {step}", "ok", "fine", "good"],
        }
        for step, gain in ((0, 0.0), (4, reward_gain * 4))
    ]
    held_out = {"prompts": prompts, "scores": {"reward": HOSTILE}, "every": 4}
    (path / "heldout.json").write_text(json.dumps({**held_out, "evaluations": evaluations}))
    alerts = [{"step": 4, "monitor": "diversity", "reason": HOSTILE, "value": 0.1}] if alert else []
    monitors = {
        "alerts": alerts,
        "fired": ["diversity"] if alert else [],
        "off": {"proxy_gold": "needs an independent judge: --eval.judge SPEC"},
        "latest": {"diversity": {"step": 4, "value": 0.1, "fired": alert, "reason": HOSTILE}},
    }
    (path / "monitors.json").write_text(json.dumps(monitors))
    summary = {"steps": 4, "seconds": 1.5, "reward_last": 0.1 + reward_gain * 4}
    (path / "summary.json").write_text(json.dumps(summary))
    tokens = [[HOSTILE, 0.5, 0.01, -1.0], [" ok", -0.25, 0.04, -2.0]]  # text, advantage, KL, log p
    steps = [
        {"step": s, "samples": [{"prompt": HOSTILE, "score": 0.3, "tokens": tokens}]}
        for s in (1, 4)
    ]
    (path / "tokens.json").write_text(json.dumps(steps))
    return path


@pytest.fixture
def two_runs(tmp_path):
    return (
        write_run(tmp_path / "hacked", reward_gain=0.2, alert=True),
        write_run(tmp_path / "honest", reward_gain=0.05, alert=False),
    )


def test_report_has_every_section_and_escapes_every_text(two_runs):
    page = run_report.write_run_report(two_runs[0]).read_text()
    assert all(f'<section id="{name}">' in page for name in SECTIONS)
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from anywhere
    assert page.count("data:image/png;base64,") == 1  # the curves, inlined
    assert "needs an independent judge" in page and "step 4" in page
    # token by token: the strongest advantage and KL at full colour, the figures on hover
    assert 'background:rgba(0,160,60,0.60)" title="advantage +0.500 · KL +0.0100' in page
    assert 'background:rgba(220,40,40,0.30)" title="advantage -0.250' in page
    assert 'background:rgba(230,120,0,0.60)" title="advantage -0.250 · KL +0.0400' in page


def test_report_command_puts_two_runs_side_by_side(two_runs, tmp_path, capsys):
    out = tmp_path / "both.html"
    assert cli.main(["report", *map(str, two_runs), "--output", str(out)]) == 0
    page = out.read_text()
    assert 'class="runs" style="--runs:2"' in page
    assert page.count("<h3>") == 2 * (len(SECTIONS) - 1)  # a column per run; curves overlaid
    assert str(out) in capsys.readouterr().out
    # one run: its own report.html
    assert cli.main(["report", str(two_runs[1])]) == 0
    assert (two_runs[1] / "report.html").is_file()
    # a directory that is no run: a one-line error naming it
    assert cli.main(["report", str(tmp_path)]) != 0
    assert "not an rlhfkit run directory" in capsys.readouterr().err


@pytest.mark.slow
def test_report_in_a_real_browser(two_runs, tmp_path):
    required = os.environ.get("RLHFKIT_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not CHROMIUM.is_file():
        if required:
            pytest.fail(f"RLHFKIT_REQUIRE_BROWSER=1 but no Playwright or no {CHROMIUM}")
        pytest.skip("browser test skipped: needs Playwright and /usr/bin/chromium")
    single = run_report.write_run_report(two_runs[0])
    both = run_report.write_report([run_report.load_run(p) for p in two_runs], tmp_path / "b.html")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            for page_file in (single, both):
                check_page(browser, page_file)
        finally:
            browser.close()


def check_page(browser, page_file: Path) -> None:
    """Every section shown, the curves drawn, no script, no console error, no outside request."""
    page = browser.new_page()
    problems, requests = [], []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(page_file.as_uri())
    for name in SECTIONS:
        assert page.locator(f"section#{name} h2").is_visible()
    assert page.evaluate("document.querySelector('#curves img').naturalWidth") > 0
    assert "diversity" in page.locator("section#monitors").inner_text()
    assert page.evaluate("document.querySelectorAll('script').length") == 0
    assert problems == []
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    page.close()
