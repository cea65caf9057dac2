"""The QA and translation recipes end to end at tiny scale: SFT on the task's train split, then
GRPO from that model with the task's metric as the reward, on stand-in data packages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfkit import cli
from task_fixtures import install

RECIPES = Path(__file__).parent.parent / "recipes"
TINY = ["--log.progress", "false", "--model.device", "cpu"]


@pytest.mark.parametrize(
    ("task", "package", "reward"),
    [("qa", "fanoutqa", "token_f1"), ("translation", "django", "chrf")],
)
def test_sft_then_grpo(task, package, reward, tmp_path, monkeypatch, tiny_model_dir):
    if reward == "chrf":
        from test_reference_rewards import needs_sacrebleu

        needs_sacrebleu()
    install(monkeypatch, tmp_path / "packages", package, extra=60)
    sft_dir, grpo_dir = tmp_path / "sft", tmp_path / "grpo"
    sft = [
        "sft",
        "--config",
        str(RECIPES / f"{task}-sft.toml"),
        "--model.path",
        str(tiny_model_dir),
    ]
    sft += ["--train.max_steps", "2", "--train.batch_size", "4", "--train.eval_every", "2"]
    sft += ["--train.max_eval", "4", "--run.output_dir", str(sft_dir), *TINY]
    assert cli.main(sft) == 0
    summary = json.loads((sft_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["eval_nll_after"] is not None

    grpo = ["grpo", "--config", str(RECIPES / f"{task}-grpo.toml")]
    grpo += ["--model.path", str(sft_dir / "model"), "--steps", "2", "--gen.max_new_tokens", "4"]
    grpo += ["--algo.group_size", "2", "--algo.micro_batch_size", "4", "--data.eval_size", "2"]
    grpo += ["--run.output_dir", str(grpo_dir), *TINY]
    assert cli.main(grpo) == 0
    metrics = [json.loads(line) for line in (grpo_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "reward" in m]  # the other rows are held-out evaluations
    assert len(steps) == 2 and all(0.0 <= m["reward"] <= 1.0 for m in steps), steps
