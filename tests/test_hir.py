"""HIR on a tiny random model: learning, instruction relabelling, resume, and bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from conftest import interruptible_reward
from rlhfkit import cli, config_io
from rlhfkit.conditioning import Conditioning, load_conditioning
from rlhfkit.config import GenCfg, LogCfg, ModelCfg, OptimCfg, PromptDataCfg, RunCfg
from rlhfkit.data.relabelling import binary_outcomes, relabel_instructions
from rlhfkit.errors import ConfigError
from rlhfkit.train.hindsight import hir
from rlhfkit.train.hindsight.rounds import RoundsCfg

SUCCESS, FAILURE = "{prompt} Be good.", "{prompt} Be bad."


def make_config(tmp_path, model_dir, prompts_file, reward, **hir_settings) -> hir.Config:
    return hir.Config(
        reward=reward,
        model=ModelCfg(path=str(model_dir), device="cpu"),
        data=PromptDataCfg(prompts=str(prompts_file), eval_size=0),
        gen=GenCfg(max_new_tokens=8, temperature=1.0, batch_size=32, chat_template="off"),
        optim=OptimCfg(lr=1e-2),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(tmp_path / "run")),
        rounds=RoundsCfg(rounds=12, prompts_per_round=32, steps_per_round=4, batch_size=16),
        hir=hir.HIRCfg(
            **{
                "success_instruction": SUCCESS,
                "failure_instruction": FAILURE,
                "threshold": 0.1,
                **hir_settings,
            }
        ),
    )


def test_success_rate_rises(tmp_path, tiny_model_dir, prompts_file, reward_spec):
    # success: at least 10% of the characters are the letter o (about half the samples at first).
    # One round's rate over 32 samples is noisy (sd ~0.08), and a CPU's float path (AMX or not)
    # sends the run down another trajectory, so two seeds are averaged and the rounds 7-12 are
    # compared with rounds 1-3. Measured on a 2-core AMD EPYC over seeds 0-7: that rise was
    # 0.14-0.37 (mean 0.25) per seed, the last round's matching accuracy 0.73-1.0; with no
    # learning the two-seed rise would be 0 +- 0.04.
    rises, accuracies = [], []
    for seed in (0, 1):
        cfg = make_config(tmp_path / f"seed{seed}", tiny_model_dir, prompts_file, reward_spec)
        result = hir.train(replace(cfg, run=replace(cfg.run, seed=seed)))
        rates = [row["success_rate"] for row in result.run.metrics()]
        rises.append(sum(rates[6:]) / 6 - sum(rates[:3]) / 3)
        # outputs are likelier under the instruction they fulfilled (chance is 0.5)
        accuracies.append(result.run.metrics()[-1]["matching_accuracy"])
    assert sum(rises) / 2 > 0.1, rises
    assert sum(accuracies) / 2 > 0.65, accuracies
    model_dir = result.run.path / "model"
    assert result.summary["model"] == str(model_dir) and (model_dir / "config.json").is_file()
    assert load_conditioning(model_dir) == Conditioning("hir", instruction=SUCCESS)


def test_relabelling_by_hand():
    success, failure = Conditioning("hir", SUCCESS), Conditioning("hir", FAILURE)
    chat = [{"role": "user", "content": "2+2?"}]
    matching, opposite = relabel_instructions(["Q1", chat], [True, False], success, failure)
    assert matching == ["Q1 Be good.", [{"role": "user", "content": "2+2? Be bad."}]]
    assert opposite == ["Q1 Be bad.", [{"role": "user", "content": "2+2? Be good."}]]
    assert binary_outcomes([0.0, 1.0, 1.0], None, "v") == [False, True, True]
    assert binary_outcomes([0.2, 0.5, 0.9], 0.5, "r") == [False, True, True]


def test_non_binary_reward_without_threshold_is_an_error(
    tmp_path, tiny_model_dir, prompts_file, reward_spec
):
    with pytest.raises(
        ConfigError,
        match=r"hir\.threshold is not set.*non-binary.*"
        r"--hir\.threshold",
    ):
        hir.train(make_config(tmp_path, tiny_model_dir, prompts_file, reward_spec, threshold=None))
    with pytest.raises(ConfigError, match=r"non-binary score 0\.5"):
        binary_outcomes([1.0, 0.5], None, "reasoning_gym:basic_arithmetic")


def test_resume_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, prompts_file):
    # the reward raises a Ctrl-C at the call named in stop_at: while scoring round 3
    reward, counter, stop_at = interruptible_reward(tmp_path)
    cfg = replace(
        make_config(tmp_path, tiny_model_dir, prompts_file, reward),
        rounds=RoundsCfg(rounds=4, prompts_per_round=8, steps_per_round=2, batch_size=4),
    )
    whole = hir.train(replace(cfg, run=replace(cfg.run, output_dir=str(tmp_path / "whole")))).run
    counter.unlink()
    stop_at.write_text("3")
    with pytest.raises(KeyboardInterrupt):
        hir.train(cfg)
    result = hir.train(replace(cfg, run=replace(cfg.run, resume=True)))
    resumed, summary = result.run, result.summary
    assert summary["rounds"] == 4 and int(counter.read_text()) == 5  # rounds 3 and 4 again
    rows, expected = resumed.metrics(), whole.metrics()
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    for row, want in zip(rows, expected, strict=True):
        row.pop("time", None), want.pop("time", None)
        assert row == pytest.approx(want)


def test_config_errors(tmp_path):
    problems = config_io.validate(
        hir.Config(
            method="coh",
            hir=hir.HIRCfg(success_instruction="no slot", failure_instruction="no slot"),
        )
    )
    text = "\n".join(problems)
    assert "method = 'coh'" in text and "hir.success_instruction = 'no slot'" in text
    assert "hir.failure_instruction = 'no slot': is the success instruction" in text


def test_summary_file(tmp_path, tiny_model_dir, prompts_file, reward_spec):
    cfg = replace(
        make_config(tmp_path, tiny_model_dir, prompts_file, reward_spec),
        rounds=RoundsCfg(rounds=1, prompts_per_round=4, steps_per_round=1, batch_size=4),
    )
    run = hir.train(cfg).run
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["rounds"] == 1 and 0.0 <= summary["success_rate_last"] <= 1.0


def test_cli_runs_and_reports_a_missing_threshold(
    tmp_path, tiny_model_dir, prompts_file, reward_spec, capsys
):
    common = [
        "hindsight",
        "--method",
        "hir",
        "--reward",
        reward_spec,
        "--model.path",
        str(tiny_model_dir),
        "--model.device",
        "cpu",
        "--data.prompts",
        str(prompts_file),
        "--gen.max_new_tokens",
        "4",
        "--gen.chat_template",
        "off",
        "--rounds.rounds",
        "1",
        "--rounds.prompts_per_round",
        "4",
        "--rounds.steps_per_round",
        "1",
        "--log.tensorboard",
        "false",
        "--log.progress",
        "false",
    ]
    assert (
        cli.main([*common, "--hir.threshold", "0.1", "--run.output_dir", str(tmp_path / "ok")]) == 0
    )
    assert load_conditioning(tmp_path / "ok" / "model").method == "hir"
    capsys.readouterr()
    assert cli.main([*common, "--run.output_dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the model loader's progress output
    assert "Traceback" not in err and last.startswith("rlhfkit hindsight: error: hir.threshold")
    assert "--hir.threshold" in last
