"""``rlhfkit label``: campaigns built from a tiny random model, exported, extended, served."""

from __future__ import annotations

import json
import random
import stat
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from conftest import build_tiny_llama, build_tiny_tokenizer
from rlhfkit.cli import main
from rlhfkit.feedback.campaign import (
    Draft,
    PromptPlan,
    output_round,
    store_plans,
    weights_hash,
)
from rlhfkit.feedback.store import open_store

PROMPTS = ["The movie was", "What is two", "She said the"]
GEN = ["--gen.max_new_tokens", "6", "--model.device", "cpu"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Each test in its own folder: the default database is campaigns/NAME/feedback.db."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory):
    """A second tiny Llama with other weights: the "newly trained" or side-by-side model."""
    tokenizer = build_tiny_tokenizer()
    path = tmp_path_factory.mktemp("tiny-llama-2")
    build_tiny_llama(len(tokenizer), tokenizer.eos_token_id, seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def label(*args: str) -> int:
    return main(["label", *map(str, args)])


def db(campaign: str = "c"):
    return open_store(f"campaigns/{campaign}/feedback.db")


def all_tasks(store, campaign: str):
    """Every task of a campaign as annotators see it, by id (browsed as the admin's task view
    does: a task with its labels is no longer offered, so next_task cannot list them all)."""
    store.add_annotator("reader", "not-a-real-hash")
    details = [store.task_details(campaign)]
    while details[-1].next is not None:
        details.append(store.task_details(campaign, details[-1].next))
    return [detail.task for detail in details]


def test_init_samples_one_model_with_provenance(tiny_model_dir, prompts, capsys):
    assert (
        label(
            "init",
            "--campaign",
            "c",
            "--prompts",
            prompts,
            "--model",
            tiny_model_dir,
            "--kinds",
            "pairwise,rating",
            "--seed",
            "3",
            *GEN,
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "3 prompts, 6 outputs" in out and "9 tasks (pairwise 3, rating 6)" in out
    assert "next: rlhfkit label serve --campaign c" in out

    with db() as store:
        stored = store.campaign_outputs("c")
        assert [text for _, text, _ in stored] == PROMPTS
        digest = weights_hash(str(tiny_model_dir))
        assert len(digest) == 64
        for _, _, outputs in stored:
            assert [o.seed for o in outputs] == [3, 4]  # sample s is seeded seed + s
            for output in outputs:
                assert (output.model, output.model_hash) == (str(tiny_model_dir), digest)
                assert output.generation["max_new_tokens"] == 6 and output_round(output) == 1
                assert output.created_at
        tasks = all_tasks(store, "c")
        assert Counter(task.kind for task in tasks) == {"pairwise": 3, "rating": 6}
        pair_outputs = [{o.output_id for o in t.outputs} for t in tasks if t.kind == "pairwise"]
        assert pair_outputs == [{o.output_id for o in outputs} for _, _, outputs in stored]
        assert store.campaign_settings("c").overlap == 0.2


def test_init_compares_two_models_side_by_side(tiny_model_dir, other_model_dir, prompts, capsys):
    assert (
        label(
            "init",
            "--campaign",
            "c",
            "--prompts",
            prompts,
            "--model",
            tiny_model_dir,
            "--model2",
            other_model_dir,
            *GEN,
        )
        == 0
    )
    assert "3 prompts, 6 outputs" in capsys.readouterr().out
    with db() as store:
        tasks = all_tasks(store, "c")
    assert len(tasks) == 3
    for task in tasks:
        assert {o.model for o in task.outputs} == {str(tiny_model_dir), str(other_model_dir)}
        assert len({o.model_hash for o in task.outputs}) == 2


def test_display_order_is_random_and_reproducible():
    """Each pair's A/B order is drawn from the seed: neither output is always shown first."""

    class Recorder:
        def __init__(self):
            self.ids, self.tasks = 0, []

        def add_prompt(self, campaign, text, meta):
            return 0

        def add_output(self, prompt_id, text, **provenance):
            self.ids += 1
            return self.ids

        def add_task(self, campaign, kind, output_ids):
            self.tasks.append(output_ids)

        def refresh_statistics(self):
            """A real store analyses its tables here; a recorder has none."""

    def orders(seed):
        store = Recorder()
        draft = Draft("text", "m", "h", {}, 0)
        plans = [PromptPlan(f"p{i}", {}, [draft, draft], [(0, 1)]) for i in range(40)]
        store_plans(store, "c", plans, ["pairwise"], random.Random(seed))
        return [ids[0] < ids[1] for ids in store.tasks]

    first = orders(0)
    assert 10 < sum(first) < 30  # both orders, about half each
    assert orders(0) == first and orders(1) != first


def test_init_imports_outputs_with_their_provenance(tmp_path, capsys):
    rows = [
        {
            "prompt": "Say hi",
            "completion": "hi",
            "model": "gpt-x",
            "seed": 7,
            "completion_tokens": 1,
            "logprobs": [-0.1],
        },
        {"prompt": "Say hi", "completion": "hello", "model": "gpt-y", "model_hash": "abc"},
        {"prompt": "Count", "completions": ["1 2 3", "one two", "uno"]},
    ]
    path = tmp_path / "outputs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert label("init", "--campaign", "c", "--import", path) == 0
    assert "2 prompts, 5 outputs" in capsys.readouterr().out

    with db() as store:
        (_, _, hi), (_, _, count) = store.campaign_outputs("c")
        assert [(o.text, o.model, o.model_hash, o.seed) for o in hi] == [
            ("hi", "gpt-x", "unknown", 7),
            ("hello", "gpt-y", "abc", None),
        ]
        assert hi[0].generation == {"completion_tokens": 1, "round": 1, "imported_from": str(path)}
        assert [o.text for o in count] == ["1 2 3", "one two", "uno"]
        assert len(all_tasks(store, "c")) == 1 + 3  # every two outputs of a prompt


def test_export_pairs_loads_for_training(tiny_model_dir, prompts, capsys):
    from rlhfkit.config import FeedbackDataCfg
    from rlhfkit.data.feedback import load_pairs

    label("init", "--campaign", "c", "--prompts", prompts, "--model", tiny_model_dir, *GEN)
    chosen = {}
    with db() as store:
        store.add_annotator("ada", "not-a-real-hash")
        while (task := store.next_task("c", "ada")) is not None:
            store.submit_label(task.task_id, "ada", uuid.uuid4().hex, {"choice": "B"})
            chosen[task.prompt] = task.outputs[1].text
    capsys.readouterr()

    assert label("export", "--campaign", "c", "--as", "pairs", "--output", "pairs.jsonl") == 0
    assert "wrote 3 pairs rows from 3 labels to pairs.jsonl" in capsys.readouterr().out
    pairs = load_pairs(FeedbackDataCfg(path="pairs.jsonl", eval_fraction=0.0), "train")
    assert {pair.prompt: pair.chosen for pair in pairs} == chosen
    assert all(pair.meta["annotator"] == "ada" for pair in pairs)

    assert label("export", "--campaign", "c", "--as", "pairs", "--output", "pairs.jsonl") == 2
    assert "already exists" in capsys.readouterr().err
    assert label("export", "--campaign", "c", "--as", "ratings", "--output", "r.jsonl") == 2
    assert "its 3 labels give no ratings rows" in capsys.readouterr().err


def test_annotator_adds_accounts(tiny_model_dir, prompts, capsys, monkeypatch):
    from rlhfkit.feedback.web.auth import verify_password

    label("init", "--campaign", "c", "--prompts", prompts, "--model", tiny_model_dir, *GEN)
    assert (
        label(
            "annotator",
            "--campaign",
            "c",
            "--name",
            "ada",
            "--password",
            "correct horse",
            "--admin",
        )
        == 0
    )
    answers = iter(["battery staple"] * 2)
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    assert label("annotator", "--campaign", "c", "--name", "bob") == 0
    with db() as store:
        ada, bob = store.get_annotator("ada"), store.get_annotator("bob")
    assert ada.is_admin and verify_password(ada.password_hash, "correct horse")
    assert not bob.is_admin and verify_password(bob.password_hash, "battery staple")
    capsys.readouterr()
    assert label("annotator", "--campaign", "c", "--name", "ada", "--password", "whatever1") == 2
    assert "'ada': already has an account" in capsys.readouterr().err


def test_next_round_pairs_new_model_against_previous_round(
    tiny_model_dir, other_model_dir, prompts, tmp_path, capsys
):
    label(
        "init",
        "--campaign",
        "c",
        "--prompts",
        prompts,
        "--model",
        tiny_model_dir,
        "--kinds",
        "pairwise,rating",
        *GEN,
    )
    assert label("next-round", "--campaign", "c", "--model", other_model_dir, *GEN) == 0
    assert "round 2 of campaign 'c': 3 prompts" in capsys.readouterr().out

    new_prompts = tmp_path / "new.txt"
    new_prompts.write_text("Please write a\n")
    assert (
        label(
            "next-round",
            "--campaign",
            "c",
            "--model",
            other_model_dir,
            "--prompts",
            new_prompts,
            *GEN,
        )
        == 0
    )

    with db() as store:
        stored = store.campaign_outputs("c")
        tasks = all_tasks(store, "c")
    assert [len(outputs) for _, _, outputs in stored] == [3, 3, 3, 2]
    for _, _, outputs in stored[:3]:
        assert (output_round(outputs[-1]), outputs[-1].model) == (2, str(other_model_dir))
    # a new prompt has no round-2 output: one is sampled from round 2's model to compare with
    ((_, text, fresh),) = stored[3:]
    assert text == "Please write a" and [output_round(o) for o in fresh] == [2, 3]

    later = [t for t in tasks if output_round(max(t.outputs, key=output_round)) > 1]
    assert Counter(t.kind for t in later) == {"pairwise": 4, "rating": 5}
    for task in (t for t in later if t.kind == "pairwise"):
        rounds = sorted(output_round(o) for o in task.outputs)
        assert rounds in ([1, 2], [2, 3])


def test_failed_sampling_leaves_no_campaign(tiny_model_dir, prompts, tmp_path, capsys):
    broken = tmp_path / "broken-model"  # a config but no weights: loads only after model 1 ran
    broken.mkdir()
    (broken / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    assert (
        label(
            "init",
            "--campaign",
            "c",
            "--prompts",
            prompts,
            "--model",
            tiny_model_dir,
            "--model2",
            broken,
            *GEN,
        )
        == 1
    )
    assert "cannot load" in capsys.readouterr().err
    assert not Path("campaigns/c/feedback.db").exists()
    assert (
        label("init", "--campaign", "c", "--prompts", prompts, "--model", tiny_model_dir, *GEN) == 0
    )  # the name is still free


def _imported(tmp_path, *extra: str) -> None:
    """Campaign "c" of four imported prompts, two outputs each: four pairwise tasks."""
    path = tmp_path / "outputs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"p{i}", "completions": [f"a{i}", f"b{i}"]}) + "\n"
            for i in range(4)
        )
    )
    assert label("init", "--campaign", "c", "--import", path, *extra) == 0


def test_gold_marks_tasks_from_a_file_all_or_nothing(tmp_path, capsys):
    _imported(tmp_path)
    with db() as store:
        tasks = [task.task_id for task in all_tasks(store, "c")]
    gold = tmp_path / "gold.jsonl"

    def write(*rows):
        gold.write_text("".join(json.dumps(row) + "\n" for row in rows))

    write({"task_id": tasks[0], "choice": "A"}, {"task_id": tasks[1], "choice": "both_bad"})
    assert label("gold", "--campaign", "c", "--file", gold) == 0
    assert "marked gold: pairwise 2; it has 2 gold tasks now" in capsys.readouterr().out
    with db() as store:
        assert [(d.task.task_id, d.gold) for d in store.gold_tasks("c")] == [
            (tasks[0], {"choice": "A"}),
            (tasks[1], {"choice": "both_bad"}),
        ]

    for rows, message in [
        (
            ({"task_id": tasks[2], "choice": "A"}, {"task_id": tasks[3], "choice": "C"}),
            f"task {tasks[3]}: label field 'choice': 'C' is not one of",
        ),
        (({"task_id": "first", "choice": "A"},), "row 1: task_id 'first' is not a task number"),
        (({"task_id": tasks[2], "choice": "A"},) * 2, f"row 2: task {tasks[2]} is given twice"),
        (({"task_id": 999, "choice": "A"},), "no task with id 999"),
    ]:
        write(*rows)
        assert label("gold", "--campaign", "c", "--file", gold) == 2
        assert message in capsys.readouterr().err
    with db() as store:
        assert len(store.gold_answers("c")) == 2  # none of the bad files changed anything

    write({"task_id": tasks[0]})
    assert label("gold", "--campaign", "c", "--file", gold, "--clear") == 0
    assert "made plain again: pairwise 1; it has 1 gold tasks now" in capsys.readouterr().out
    with db() as store:
        assert list(store.gold_answers("c")) == [tasks[1]]


def test_overlap_changes_the_tasks_nobody_has_labelled(tmp_path, capsys):
    _imported(tmp_path, "--overlap", "0")
    with db() as store:
        store.add_annotator("ada", "not-a-real-hash")
        first = store.next_task("c", "ada").task_id
        store.submit_label(first, "ada", "ada-1", {"choice": "A"})
    assert label("overlap", "--campaign", "c", "--overlap", "0.5", "--overlap_annotators", "3") == 0
    out = capsys.readouterr().out
    assert (
        "overlap 0.5, 3 annotators per overlap task. Of the 3 tasks nobody has labelled "
        "yet, 2 now go to 3 annotators" in out
    )
    with db() as store:
        progress = store.progress("c")
        assert (progress.tasks, progress.complete) == (4, 1)  # the labelled task keeps its 1
        assert sorted(
            store.task_details("c", t.task_id).required for t in all_tasks(store, "c")
        ) == [1, 1, 3, 3]
    assert label("overlap", "--campaign", "c") == 2
    assert "overlap = None: is required; pass --overlap 0.2" in capsys.readouterr().err
    assert label("overlap", "--campaign", "c", "--overlap", "0.5", "--overlap_annotators", "1") == 2
    assert "overlap_annotators = 1" in capsys.readouterr().err


def test_verb_help_lists_its_options(capsys):
    assert label("export", "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rlhfkit label export") and "--format {pairs,ratings" in out
    out = label() == 0 and capsys.readouterr().out
    assert all(verb in out for verb in ("next-round", "gold", "overlap"))


def test_bad_input_is_one_line_with_exit_code_2(tiny_model_dir, prompts, capsys):
    def error(*args) -> str:
        assert label(*args) == 2
        return capsys.readouterr().err.strip()

    assert "label 'int': unknown verb; did you mean 'init'? use one of init, serve" in error("int")
    assert "no feedback database at campaigns/nope/feedback.db" in error(
        "export", "--campaign", "nope", "--as", "pairs", "--output", "x.jsonl"
    )
    assert "'ratng' is not a task kind; did you mean 'rating'?" in error(
        "init", "--campaign", "c", "--prompts", prompts, "--kinds", "pairwise,ratng"
    )
    assert "host = '0.0.0.0': opens the app to the network; add --allow_remote" in error(
        "serve", "--campaign", "c", "--host", "0.0.0.0"
    )

    label("init", "--campaign", "c", "--prompts", prompts, "--model", tiny_model_dir, *GEN)
    capsys.readouterr()
    assert "--campaign = 'c': already exists" in error(
        "init", "--campaign", "c", "--prompts", prompts, "--model", tiny_model_dir, *GEN
    )
    message = error(
        "annotator",
        "--campaign",
        "other",
        "--db",
        "campaigns/c",
        "--name",
        "x",
        "--password",
        "long enough",
    )
    assert "--campaign = 'other': no campaign 'other'" in message and "known: c" in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize(
    "args", [["serve", "--campaign", "c"], ["annotator", "--campaign", "c", "--name", "ada"]]
)
def test_studio_verbs_without_the_studio_extra_say_how_to_install_it(args, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the extra were not installed
    assert label(*args) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"rlhfkit label: error: label {args[0]} needs the studio's web packages, the optional "
        "extra 'studio' (uvicorn is not installed): pip install 'rlhfkit[studio]'"
    ]


def test_serve_creates_admin_once_and_keeps_its_key(tiny_model_dir, prompts, capsys, monkeypatch):
    web = pytest.importorskip("rlhfkit.feedback.web", reason="the web app is not written yet")
    if not hasattr(web, "create_app"):
        pytest.skip("rlhfkit.feedback.web does not export create_app yet")
    from rlhfkit.feedback.web.auth import verify_password

    served = []
    monkeypatch.setattr(
        "uvicorn.run", lambda app, host, port, **options: served.append((app, host, port))
    )
    label("init", "--campaign", "c", "--prompts", prompts, "--model", tiny_model_dir, *GEN)
    capsys.readouterr()

    assert label("serve", "--campaign", "c", "--port", "8123") == 0
    out = capsys.readouterr().out
    assert "at http://127.0.0.1:8123/" in out
    # not a terminal: the password is in a file only its owner reads (tests/test_studio_auth.py)
    password = Path("campaigns/c/admin-password.txt").read_text().strip()
    assert password not in out
    with db() as store:
        assert verify_password(store.get_annotator("admin").password_hash, password)
    assert served[0][1:] == ("127.0.0.1", 8123)
    key_file = Path("campaigns/c/web-secret.key")
    key = key_file.read_text()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    assert label("serve", "--campaign", "c") == 0
    assert password not in capsys.readouterr().out  # printed once, at creation
    assert key_file.read_text() == key  # sessions survive a restart
