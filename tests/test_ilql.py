"""ILQL: each loss term by hand, the Polyak update, steered decoding raising a known reward, and
exact resume, on a tiny random model."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest
import torch

from rlhfkit.config import FeedbackDataCfg, GenCfg, LogCfg, ModelCfg, OptimCfg, RunCfg
from rlhfkit.losses import ilql as losses
from rlhfkit.train import ilql, offline

# --- the loss terms, by hand ---------------------------------------------------------------------


def test_terminal_rewards_sit_on_each_completions_last_token():
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    placed = losses.terminal_rewards(torch.tensor([2.0, -1.0]), mask)
    assert placed.tolist() == [[0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, -1.0]]


def test_td_target_bootstraps_from_the_next_value_and_stops_at_the_end():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 2.0, 3.0, 7.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0]])
    target = losses.td_target(rewards, values, mask, gamma=0.5)
    # y_0 = 0 + 0.5 * 2, y_1 = 0 + 0.5 * 3, y_2 = 1 + 0 (terminal: position 3 is padding)
    assert target[0, :3].tolist() == [1.0, 1.5, 1.0]
    assert not target.requires_grad


def test_q_loss_is_the_masked_mean_squared_td_error():
    q = torch.tensor([[1.0, 3.0, 9.0]])
    target = torch.tensor([[0.0, 1.0, 0.0]])
    assert losses.q_loss(q, target, torch.tensor([[1, 1, 0]])).item() == pytest.approx((1 + 4) / 2)


def test_expectile_weighs_under_and_over_estimates_by_tau_and_one_minus_tau():
    target_q = torch.tensor([[2.0, 0.0]])
    values = torch.tensor([[1.0, 2.0]], requires_grad=True)
    loss = losses.expectile_loss(target_q, values, torch.tensor([[1, 1]]), tau=0.8)
    # u = (1, -2): 0.8 * 1 + 0.2 * 4 = 1.6, mean over 2
    assert loss.item() == pytest.approx(0.8)
    loss.backward()
    # d/dV of w u^2 / 2 = -w u: (-0.8, 0.4)
    assert values.grad[0].tolist() == pytest.approx([-0.8, 0.4])


def test_cql_is_logsumexp_of_q_minus_the_taken_actions_q():
    q_all = torch.tensor([[[0.0, math.log(3.0)], [1.0, 1.0]]])  # (1, 2, 2)
    actions = torch.tensor([[0, 1]])
    loss = losses.cql_loss(q_all, actions, torch.tensor([[1, 1]]))
    # log(1 + 3) - 0 and log(2e) - 1 = log 2
    assert loss.item() == pytest.approx((math.log(4.0) + math.log(2.0)) / 2)


def test_ilql_loss_adds_both_q_heads_v_and_weighted_cql():
    q1 = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    q2 = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])
    actions = torch.tensor([[0, 1]])
    values = torch.tensor([[0.5, 1.0]])
    target_q = torch.tensor([[1.0, 1.0]])
    rewards = torch.tensor([[0.0, 1.0]])
    mask = torch.tensor([[1, 1]])
    loss, stats = losses.ilql_loss(
        q1, q2, target_q, values, actions, rewards, mask, gamma=1.0, tau=0.7, cql_weight=0.5
    )
    # y = (0 + V(s_1), 1) = (1, 1); Q1 taken (1, 2), Q2 taken (0, 1)
    q_loss = (0 + 1) / 2 + (1 + 0) / 2
    v_loss = (0.7 * 0.25 + 0.7 * 0.0) / 2
    lse = torch.logsumexp
    cql = (
        (lse(q1[0, 0], 0) - 1 + lse(q1[0, 1], 0) - 2) / 2
        + (lse(q2[0, 0], 0) - 0 + lse(q2[0, 1], 0) - 1) / 2
    ).item()
    assert stats.q_loss.item() == pytest.approx(q_loss)
    assert stats.v_loss.item() == pytest.approx(v_loss)
    assert stats.cql_loss.item() == pytest.approx(cql)
    assert loss.item() == pytest.approx(q_loss + v_loss + 0.5 * cql)


def test_polyak_moves_the_target_alpha_of_the_way_and_heads_use_it():
    from rlhfkit.models.ilql_heads import IlqlHeads

    assert losses.polyak(torch.tensor(2.0), torch.tensor(4.0), 0.25).item() == 2.5
    heads = IlqlHeads(hidden_size=2, vocab_size=3)
    with torch.no_grad():
        heads.q1.bias.fill_(4.0)
        heads.q2.bias.fill_(8.0)
    heads.update_targets(0.25)
    assert heads.target_q1.bias.tolist() == [1.0] * 3
    assert heads.target_q2.bias.tolist() == [2.0] * 3
    assert heads.target_q(torch.zeros(2)).tolist() == [1.0] * 3  # the min of the two
    assert not any(p.requires_grad for p in heads.target_q1.parameters())


def test_advantage_logits_add_beta_times_q_minus_v():
    logits = torch.tensor([[0.0, 1.0]])
    out = losses.advantage_logits(logits, torch.tensor([[2.0, 0.0]]), torch.tensor([1.0]), 0.5)
    assert out.tolist() == [[0.5, 0.5]]


# --- training on a tiny model ---------------------------------------------------------------------

PROMPTS = ["The movie was", "She said the food was", "The service was", "I think it was"]
WORDS = [" good", " slow", " long", " boring", " short", " small"]


def rated_file(tmp_path, rows: int = 96) -> str:
    """A random word per completion; the reward is 1 when it is " good"."""
    rng = random.Random(0)
    lines = []
    for i in range(rows):
        words = rng.choice(WORDS)
        row = {"prompt": PROMPTS[i % 4], "completion": words, "reward": float(" good" in words)}
        lines.append(json.dumps(row) + "\n")
    path = tmp_path / "rated.jsonl"
    path.write_text("".join(lines))
    return str(path)


def config(tmp_path, model_dir, data: str, steps: int, **algo) -> ilql.Config:
    return ilql.Config(
        model=ModelCfg(path=str(model_dir), device="cpu"),
        data=FeedbackDataCfg(path=data, rating_field="reward", eval_fraction=0.1),
        train=offline.TrainCfg(max_steps=steps, batch_size=8, max_length=32, chat_template="off"),
        optim=OptimCfg(lr=1e-2),
        algo=ilql.AlgoCfg(**{"gamma": 1.0, "polyak": 0.1, **algo}),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(tmp_path / "run"), checkpoint_every=0),
    )


def good_rates(model_dir, beta: float, seeds: range) -> list[float]:
    """Share of sampled completions holding " good", steered by ``beta``, one per seed."""
    from rlhfkit.generation.hf import HFBackend
    from rlhfkit.models import load_causal_lm
    from rlhfkit.models.ilql_heads import AdvantageSteer, load_heads

    model, tokenizer = load_causal_lm(ModelCfg(path=str(model_dir), device="cpu"))
    heads, _ = load_heads(model_dir)
    backend = HFBackend(model, tokenizer)
    gen = GenCfg(max_new_tokens=3, batch_size=32, chat_template="off")
    rates = []
    with AdvantageSteer(model, heads, beta) as steer:
        backend.steer = [steer]
        for seed in seeds:
            completions = backend.generate(PROMPTS * 8, gen, seed).completions
            rates.append(sum("good" in text for text in completions) / len(completions))
    return rates


def test_steered_decoding_raises_the_reward_over_plain_decoding(tmp_path, tiny_model_dir):
    # measured (3 seeds, 32 samples each): plain about 0.1 (the data's 1/6, less), steered
    # (beta = 4) about 0.8
    cfg = config(tmp_path, tiny_model_dir, rated_file(tmp_path), steps=30, polyak=0.5)
    model_dir = ilql.train(cfg).summary["model"]
    plain = good_rates(model_dir, 0.0, range(3))
    steered = good_rates(model_dir, 4.0, range(3))
    assert min(steered) > max(plain) + 0.3, (plain, steered)


def test_resume_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, monkeypatch):
    base = config(tmp_path, tiny_model_dir, rated_file(tmp_path, rows=40), steps=6)
    base = replace(base, run=replace(base.run, checkpoint_every=3))
    whole = ilql.train(replace(base, run=replace(base.run, output_dir=str(tmp_path / "whole"))))

    calls, real = [], losses.ilql_loss

    def interrupted_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5 + 1:  # no held-out rows here: 5 training steps, Ctrl-C in step 6
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    parts = replace(base, run=replace(base.run, output_dir=str(tmp_path / "parts")))
    monkeypatch.setattr(losses, "ilql_loss", interrupted_loss)
    with pytest.raises(KeyboardInterrupt):
        ilql.train(parts)
    monkeypatch.setattr(losses, "ilql_loss", real)
    assert (tmp_path / "parts" / "checkpoints" / "latest").read_text().strip() == "step-000003"
    resumed = ilql.train(replace(parts, run=replace(parts.run, resume=True)))
    assert _comparable(resumed.run.metrics()) == _comparable(whole.run.metrics())
    # the target heads were restored too: the exported heads are the same
    from safetensors.torch import load_file

    from rlhfkit.models.ilql_heads import WEIGHTS_FILE

    a = load_file(f"{whole.summary['model']}/{WEIGHTS_FILE}")
    b = load_file(f"{resumed.summary['model']}/{WEIGHTS_FILE}")
    assert all(torch.equal(a[key], b[key]) for key in a)


def _comparable(rows):
    return [{k: round(v, 5) for k, v in row.items() if k != "time"} for row in rows]


def test_generate_with_ilql_needs_heads(tmp_path, tiny_model_dir):
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.models.ilql_heads import load_heads

    with pytest.raises(RlhfkitError, match="no ILQL heads"):
        load_heads(tiny_model_dir)


def test_generate_and_eval_decode_with_the_saved_heads(tmp_path, tiny_model_dir, capsys):
    from rlhfkit.commands import generate

    cfg = config(tmp_path, tiny_model_dir, rated_file(tmp_path, rows=24), steps=3, beta=4.0)
    model_dir = ilql.train(cfg).summary["model"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")

    def sample(name: str, **steer) -> list[dict]:
        out = tmp_path / name
        generate.main(
            generate.Config(
                prompts=str(prompts),
                output=str(out),
                model=ModelCfg(path=model_dir, device="cpu"),
                gen=GenCfg(max_new_tokens=3, chat_template="off"),
                **steer,
            )
        )
        return [json.loads(line) for line in out.read_text().splitlines()]

    plain, steered = sample("plain.jsonl"), sample("steered.jsonl", ilql=True)
    assert json.loads((tmp_path / "run" / "model" / "ilql.json").read_text())["beta"] == 4.0
    # the same seed: only the advantage term changes what is sampled and its log-probs
    assert [r["logprobs"] for r in plain] != [r["logprobs"] for r in steered]

    # `rlhfkit eval` evaluates the ILQL policy as it decodes: steered, as generate --ilql
    from rlhfkit.commands import evaluate

    report = tmp_path / "eval.json"
    evaluate.main(
        evaluate.Config(
            model=ModelCfg(path=model_dir, device="cpu"),
            prompts=str(prompts),
            size=len(PROMPTS),
            reward=("length",),
            gen=GenCfg(max_new_tokens=3, chat_template="off"),
            output=str(report),
        )
    )
    evaluated = [row["completion"] for row in json.loads(report.read_text())["samples"]]
    assert evaluated == [r["completion"] for r in steered]
    assert "decoding steered by its ILQL heads (beta 4)" in capsys.readouterr().out


def test_torchrun_is_refused_before_anything_loads(monkeypatch):
    from rlhfkit import distributed
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.train import ilql

    monkeypatch.setattr(distributed, "active", lambda: True)
    with pytest.raises(RlhfkitError, match="ilql runs in one process"):
        ilql.train(ilql.Config(data=FeedbackDataCfg(path="never-read.jsonl")))
