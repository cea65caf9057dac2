"""rlhfkit classify: the metrics by hand, labelled data, the trainer end to end with resume, the
classifier reward and the topics recipe at tiny scale."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from rlhfkit import config_io
from rlhfkit.config import ClassifyDataCfg, LogCfg, ModelCfg, OptimCfg, RunCfg
from rlhfkit.data.labelled import load_labelled
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.eval import classification
from rlhfkit.rewards import load_reward
from rlhfkit.train import classify, offline
from test_wiki import wiki_fixture  # noqa: F401  # the fixture, used by name

RECIPE = Path(__file__).parent.parent / "recipes" / "topics-classify.toml"

# --- metrics, against values worked out by hand ---------------------------------------------------


def test_metrics_match_hand_computed_values():
    # true:      0 0 0 1 1 2
    # predicted: 0 0 1 1 2 2
    result = classification.report([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2], ["a", "b", "c"])
    assert result["confusion"]["matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert result["accuracy"] == pytest.approx(4 / 6)
    a, b, c = (result["classes"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["f1"]) == pytest.approx((1.0, 2 / 3, 0.8))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((0.5, 1.0, 2 / 3))
    assert result["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert [a["support"], b["support"], c["support"]] == [3, 2, 1]
    text = classification.table(result)
    assert "macro-F1  0.656" in text and "accuracy  0.667 of 6 texts" in text


def test_a_class_never_predicted_scores_zero_and_absent_classes_do_not_count():
    result = classification.report([0, 0, 1], [0, 0, 0], ["a", "b", "c"])
    assert result["classes"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["classes"]["a"]["f1"] == pytest.approx(0.8)  # precision 2/3, recall 1
    assert result["macro_f1"] == pytest.approx(0.4)  # c has no texts: a and b only


# --- data -----------------------------------------------------------------------------------------


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def labelled_rows(count: int = 60) -> list[dict]:
    words = {"sea": "water waves boat sea", "sky": "cloud blue sky bird"}
    return [
        {"text": f"{words[kind]} {i}", "label": kind}
        for i in range(count)
        for kind in (("sea",) if i % 3 else ("sky",))
    ]


def test_a_file_is_split_by_text_hash_and_balanced_by_class(tmp_path):
    data = write_rows(tmp_path / "texts.jsonl", labelled_rows())
    cfg = ClassifyDataCfg(path=data, eval_fraction=0.25, balance="inverse-frequency")
    train, held_out = load_labelled(cfg, "train"), load_labelled(cfg, "eval")
    assert len(train) + len(held_out) == 60 and held_out
    assert not {r.text for r in train} & {r.text for r in held_out}
    weights = {label: sum(r.weight for r in train if r.label == label) for label in ("sea", "sky")}
    assert weights["sea"] == pytest.approx(weights["sky"]) == pytest.approx(len(train) / 2)
    assert load_labelled(cfg, "test") == []  # a file has no test split


def test_bad_rows_name_file_and_row(tmp_path):
    rows = labelled_rows(6)
    rows[3] = {"text": "x", "label": ["a", "b"]}
    data = write_rows(tmp_path / "texts.jsonl", rows)
    cfg = ClassifyDataCfg(path=data, eval_path=data)
    with pytest.raises(DataError, match=r"texts.jsonl: row 4: 'label' not a class name"):
        load_labelled(cfg, "eval")
    with pytest.warns(UserWarning, match=r"skipped 1 of 6"):
        assert len(load_labelled(replace(cfg, on_bad_row="skip"), "eval")) == 5


def test_the_data_path_is_checked_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError, match="data.path"):
        config_io.load(classify.Config, ["--data.path", str(tmp_path / "missing.jsonl")])


# --- the trainer ------------------------------------------------------------------------------------


def tiny_config(tmp_path, model_dir, data: ClassifyDataCfg, steps: int, name: str = "run"):
    return classify.Config(
        model=ModelCfg(path=str(model_dir), device="cpu"),
        data=data,
        train=offline.TrainCfg(max_steps=steps, batch_size=8, eval_batch_size=16),
        head=classify.HeadCfg(max_length=32),
        optim=OptimCfg(lr=1e-2, warmup_steps=0),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(tmp_path / name), checkpoint_every=2),
    )


def test_classify_learns_a_file_writes_its_report_and_resumes_exactly(
    tmp_path, tiny_model_dir, monkeypatch
):
    import torch.nn.functional as F

    data = write_rows(tmp_path / "texts.jsonl", labelled_rows())
    cfg = tiny_config(tmp_path, tiny_model_dir, ClassifyDataCfg(path=data, eval_path=data), steps=6)
    whole = classify.train(replace(cfg, run=replace(cfg.run, output_dir=str(tmp_path / "whole"))))
    assert whole.summary["eval_accuracy"] == 1.0 and whole.summary["eval_macro_f1"] == 1.0
    written = json.loads((whole.run.path / classify.REPORT_JSON).read_text())
    assert written["confusion"]["labels"] == ["sea", "sky"]
    assert "macro-F1" in (whole.run.path / classify.REPORT_TEXT).read_text()
    assert "Classification" in (whole.run.path / "report.html").read_text()

    calls, real = [], F.cross_entropy

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # Ctrl-C in step 3, after the checkpoint at step 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    parts = replace(cfg, run=replace(cfg.run, output_dir=str(tmp_path / "parts")))
    monkeypatch.setattr(F, "cross_entropy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        classify.train(parts)
    monkeypatch.setattr(F, "cross_entropy", real)
    resumed = classify.train(replace(parts, run=replace(parts.run, resume=True)))
    rounded = [
        [{k: round(v, 5) for k, v in row.items() if k != "time"} for row in run.metrics()]
        for run in (whole.run, resumed.run)
    ]
    assert rounded[0] == rounded[1]

    # the trained head as a reward: P(label | completion)
    reward = load_reward(f"classifier:{whole.run.path / 'model'}:sky")
    scores = reward(["", ""], ["cloud blue sky bird 1", "water waves boat sea 2"])
    assert scores[0] > 0.5 > scores[1]
    with pytest.raises(ConfigError, match="'land' is not one of its classes: sea, sky"):
        load_reward(f"classifier:{whole.run.path / 'model'}:land")
    with pytest.raises(ConfigError, match="no classifier.json"):
        load_reward(f"classifier:{tmp_path}:sea")


def test_the_topics_recipe_runs_on_wiki_topics_at_tiny_scale(
    tmp_path,
    tiny_model_dir,
    wiki_fixture,  # noqa: F811
):
    flags = ["--model.path", str(tiny_model_dir), "--model.device", "cpu"]
    flags += ["--train.max_steps", "2", "--train.batch_size", "4", "--head.max_length", "32"]
    flags += ["--run.output_dir", str(tmp_path / "topics"), "--log.progress", "false"]
    cfg = config_io.load(classify.Config, ["--config", str(RECIPE), *flags], command="classify")
    assert cfg.data.path == "wiki_topics" and cfg.data.balance == "inverse-frequency"
    result = classify.train(cfg)
    report = json.loads((result.run.path / classify.REPORT_JSON).read_text())
    assert report["split"] == "test" and report["confusion"]["labels"] == [
        "Arts",
        "Mathematics",
        "People",
    ]
    assert result.summary["classes"] == 3 and "test_macro_f1" in result.summary
