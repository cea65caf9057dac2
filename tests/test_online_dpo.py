"""Online DPO on a tiny random model: preferences, learning, no reference when free, resume."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from conftest import interruptible_reward
from rlhfkit import cli
from rlhfkit.config import GenCfg, LogCfg, ModelCfg, OptimCfg, PromptDataCfg, RunCfg
from rlhfkit.train import online_dpo


def make_config(tmp_path, model_dir, prompts_file, reward_spec, **algo) -> online_dpo.Config:
    return online_dpo.Config(
        reward=reward_spec,
        steps=30,
        model=ModelCfg(path=str(model_dir), device="cpu"),
        data=PromptDataCfg(prompts=str(prompts_file), eval_size=0),
        gen=GenCfg(max_new_tokens=8, temperature=1.0, batch_size=16, chat_template="off"),
        algo=online_dpo.AlgoCfg(**{"prompts_per_step": 8, "micro_batch_size": 8, **algo}),
        optim=OptimCfg(lr=1e-2),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(tmp_path / "run"), checkpoint_every=0),
    )


def seeded(cfg: online_dpo.Config, seed: int) -> online_dpo.Config:
    return replace(
        cfg, run=replace(cfg.run, seed=seed, output_dir=f"{cfg.run.output_dir}-seed{seed}")
    )


def test_pair_preferences_and_rows():
    # pairs (0.5, 0.2): the first wins; (0.1, 0.3): the second; (0.4, 0.4): a tie
    wins = online_dpo.pair_preferences([0.5, 0.2, 0.1, 0.3, 0.4, 0.4])
    assert wins == [True, False, None]
    chosen, rejected, weight = online_dpo.pair_rows(wins)
    assert chosen.tolist() == [0, 3, 4] and rejected.tolist() == [1, 2, 5]
    assert weight.tolist() == [1.0, 1.0, 0.0]


def test_a_judge_picks_in_both_orders_and_identical_texts_tie():
    class ByLength:  # prefers the longer response; a tie at equal lengths
        def prefer(self, prompt, a, b):
            return 0.5 if len(a) == len(b) else float(len(a) > len(b))

    rows = [{"prompt": "p"}] * 6
    completions = ["short", "longer one", "same", "same", "abcd", "ab"]
    picks = online_dpo.judged_preferences(ByLength(), rows, completions)
    assert picks == [False, None, True]


def test_reward_rises(tmp_path, tiny_model_dir, prompts_file, reward_spec):
    # the last 5 steps' mean reward minus the first 5's, seeds 0-5 on a 2-core AMD EPYC: 0.18,
    # 0.25, 0.10, 0.08, 0.20, 0.30, where a policy that learns nothing gives 0 +- 0.01
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, reward_spec)
    outcome = online_dpo.train(cfg)
    rewards = [row["reward"] for row in outcome.run.metrics()]
    assert sum(rewards[-5:]) / 5 - sum(rewards[:5]) / 5 > 0.04, rewards
    assert outcome.reference is not None  # dpo's reference: a frozen copy of the start


def test_reference_free_losses_load_no_reference(
    tmp_path, tiny_model_dir, prompts_file, reward_spec
):
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, reward_spec, loss="simpo", beta=2.0)
    outcome = online_dpo.train(replace(cfg, steps=2))
    assert outcome.reference is None
    rows = outcome.run.metrics()
    assert [row["kl"] for row in rows] == [0.0, 0.0]  # nothing to measure KL against
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in rows)


def _comparable(rows):
    drop = {"time", "step_seconds"}
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


def test_resume_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, prompts_file):
    # the reward raises a Ctrl-C at the call named in stop_at: during step 4
    reward, counter, stop_at = interruptible_reward(tmp_path)
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, reward, micro_batch_size=4)
    cfg = replace(
        cfg, steps=6, run=replace(cfg.run, checkpoint_every=3, output_dir=str(tmp_path / "whole"))
    )
    whole = online_dpo.train(cfg).run.metrics()

    counter.unlink()
    stop_at.write_text("4")
    interrupted = replace(cfg, run=replace(cfg.run, output_dir=str(tmp_path / "parts")))
    with pytest.raises(KeyboardInterrupt):
        online_dpo.train(interrupted)
    assert (tmp_path / "parts" / "checkpoints" / "latest").read_text().strip() == "step-000003"
    stop_at.unlink()
    resumed = online_dpo.train(replace(interrupted, run=replace(interrupted.run, resume=True)))
    rows = resumed.run.metrics()
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert _comparable(rows) == _comparable(whole)


def test_cli_runs_with_a_judge_and_refuses_greedy_pairs(
    tmp_path, tiny_model_dir, prompts_file, reward_spec, monkeypatch, capsys
):
    import rlhfkit.rewards.judge

    asked = []

    class Shortest:  # a stand-in for an LLM judge: prefers the shorter response
        def prefer(self, prompt, a, b):
            asked.append((prompt, a, b))
            return 0.5 if len(a) == len(b) else float(len(a) < len(b))

    loaded = []
    monkeypatch.setattr(
        rlhfkit.rewards.judge,
        "load_judge",
        lambda spec, **options: loaded.append(spec) or Shortest(),
    )
    args = [
        "--model",
        str(tiny_model_dir),
        "--model.device",
        "cpu",
        "--data.prompts",
        str(prompts_file),
        "--reward",
        reward_spec,
        "--judge",
        "judge-model@http://localhost:1/v1",
        "--steps",
        "1",
        "--algo.prompts_per_step",
        "4",
        "--gen.max_new_tokens",
        "6",
        "--gen.chat_template",
        "off",
        "--run.output_dir",
        str(tmp_path / "cli"),
        "--log.progress",
        "false",
        "--log.tensorboard",
        "false",
    ]
    assert cli.main(["online-dpo", *args]) == 0
    assert loaded == ["judge-model@http://localhost:1/v1"]
    assert len(asked) == 4 and {prompt for prompt, _, _ in asked} <= set(
        prompts_file.read_text().splitlines()
    )
    row = json.loads((tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()[0])
    decided = sum(len(a) != len(b) for _, a, b in asked) / 4
    assert row["decided_pairs"] == pytest.approx(decided)
    assert cli.main(["online-dpo", *args, "--gen.temperature", "0"]) == 2
    assert "gen.temperature = 0.0: samples the same completion twice" in capsys.readouterr().err


def test_held_out_evaluation_runs_before_and_after(tmp_path, tiny_model_dir, prompts_file):
    from rlhfkit.train.kit import EvalCfg

    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, "length:3")
    cfg = replace(
        cfg,
        steps=2,
        data=replace(cfg.data, eval_prompts=str(prompts_file), eval_size=4),
        eval=EvalCfg(judge="length:5"),
    )
    summary = online_dpo.train(cfg).summary["eval"]
    assert summary["steps"] == [0, 2] and summary["prompts"] == 4
    assert {"reward", "judge", "kl"} <= set(summary["after"])  # KL to dpo's reference
