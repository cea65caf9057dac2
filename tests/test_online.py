"""Shared online-RL pieces: the non-finite guard (alone and in the loop), prompt stream, schedule."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import rlhfkit.losses.policy as policy_losses
from rlhfkit.config import OptimCfg
from rlhfkit.data.prompts import PromptStream
from rlhfkit.errors import RlhfkitError
from rlhfkit.train import grpo, kit
from test_grpo import make_config


def test_guard_skips_then_aborts():
    model = torch.nn.Linear(2, 1)
    guard = kit.NonFiniteGuard(limit=2)
    model.weight.grad = torch.ones_like(model.weight)
    assert guard.clip_and_check([model], 1.0)[0] is True
    model.weight.grad = torch.full_like(model.weight, float("nan"))
    with pytest.warns(UserWarning, match="non-finite gradient"):
        assert guard.clip_and_check([model], 1.0)[0] is False
    assert model.weight.grad is None  # the bad gradient is dropped, not applied
    model.weight.grad = torch.full_like(model.weight, float("inf"))
    with pytest.warns(UserWarning), pytest.raises(RlhfkitError, match="2 optimiser steps in a row"):
        guard.clip_and_check([model], 1.0)


def test_loop_skips_a_nan_step_and_aborts_on_a_run_of_them(
    tmp_path, tiny_model_dir, prompts_file, reward_spec, monkeypatch
):
    real = policy_losses.ppo_clip_loss
    calls = {"n": 0}

    def nan_on_first_call(*args, **kwargs):
        calls["n"] += 1
        loss, stats = real(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 1 else loss), stats

    monkeypatch.setattr(policy_losses, "ppo_clip_loss", nan_on_first_call)
    cfg = replace(make_config(tmp_path / "a", tiny_model_dir, prompts_file, reward_spec), steps=3)
    with pytest.warns(UserWarning, match="step skipped"):
        rows = grpo.train(cfg).run.metrics()
    assert [row["skipped_steps"] for row in rows] == [1, 1, 1]

    monkeypatch.setattr(
        policy_losses,
        "ppo_clip_loss",
        lambda *a, **k: (real(*a, **k)[0] * float("nan"), real(*a, **k)[1]),
    )
    cfg = replace(
        make_config(tmp_path / "b", tiny_model_dir, prompts_file, reward_spec),
        steps=5,
        optim=OptimCfg(lr=1e-2, max_nonfinite_steps=2),
    )
    with pytest.warns(UserWarning), pytest.raises(RlhfkitError, match="max_nonfinite_steps = 2"):
        grpo.train(cfg)


def test_prompt_stream_resumes_in_place():
    rows = [{"prompt": str(i)} for i in range(5)]
    stream = PromptStream(rows, seed=1)
    stream.take(7)  # into the second epoch
    state = stream.state_dict()
    expected = stream.take(6)
    again = PromptStream(rows, seed=1)
    again.load_state_dict(state)
    assert again.take(6) == expected
    first_epoch = PromptStream(rows, seed=1).take(5)
    assert sorted(r["prompt"] for r in first_epoch) == [str(i) for i in range(5)]


@pytest.mark.parametrize(
    "schedule,expected", [("constant", [0.5, 1.0, 1.0, 1.0]), ("linear", [0.5, 1.0, 1.0, 0.5])]
)
def test_warmup_then_schedule(schedule, expected):
    model = torch.nn.Linear(2, 1)
    optim = OptimCfg(lr=1.0, warmup_steps=2, schedule=schedule)
    optimizer, scheduler = kit.build_optimizer(model, optim, total_steps=4)
    seen = []
    for _ in range(4):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(expected)


def test_learner_steps_every_model_and_skips_all_on_a_nan_loss():
    torch.manual_seed(0)
    policy, critic = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    learner = kit.Learner(
        {"policy": (policy, OptimCfg(lr=0.1)), "critic": (critic, OptimCfg(lr=0.2))},
        total_steps=4,
        max_grad_norm=1.0,
        max_nonfinite_steps=3,
    )
    assert list(learner.stateful()) == [
        "optimizer",
        "scheduler",
        "critic_optimizer",
        "critic_scheduler",
    ]
    assert learner.lrs() == pytest.approx([0.1, 0.2])
    before = [policy.weight.clone(), critic.weight.clone()]
    learner.backward((policy(torch.ones(1, 2)) + critic(torch.ones(1, 2))).sum())
    norms = learner.step()
    assert len(norms) == 2 and all(n > 0 for n in norms)
    assert not torch.equal(policy.weight, before[0]) and not torch.equal(critic.weight, before[1])
    after = [policy.weight.clone(), critic.weight.clone()]
    learner.backward(policy(torch.ones(1, 2)).sum())
    learner.backward(policy(torch.ones(1, 2)).sum() * float("nan"))  # no backward for this one
    with pytest.warns(UserWarning, match="non-finite loss"):
        learner.step()
    assert torch.equal(policy.weight, after[0]) and torch.equal(critic.weight, after[1])
    assert learner.guard.skipped == 1 and policy.weight.grad is None
    learner.backward(policy(torch.ones(1, 2)).sum())
    learner.step()  # the next step is judged on its own
    assert learner.guard.in_a_row == 0


def test_stats_are_weighted_means_per_optimiser_step():
    stats = kit.Stats()
    stats.add(0.25, loss=torch.tensor(4.0))
    stats.add(0.75, loss=2.0)
    stats.step(grad_norm=1.0)
    stats.add(1.0, loss=6.0)
    stats.step(grad_norm=3.0)
    assert stats.means() == {"loss": (1.0 + 1.5 + 6.0) / 2, "grad_norm": 2.0}


def test_minibatches_shuffle_each_epoch_over_every_row():
    torch.manual_seed(0)
    batches = list(kit.minibatches(6, 3, epochs=2))
    assert [len(b) for b in batches] == [3, 3, 3, 3]
    for epoch in (batches[:2], batches[2:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(6))
