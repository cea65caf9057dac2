"""The registered policy objectives against their pieces computed by hand, and the registry."""

import math

import pytest
import torch

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.losses import objectives
from rlhfkit.losses.objectives import (
    ObjectiveInputs,
    ObjectiveSettings,
    ObjectiveStats,
    get_objective,
    grpo_objective,
    gspo_objective,
    objective_names,
    ppo_objective,
    register_objective,
)

NAN = float("nan")
# two completions: the first of 2 tokens, the second of 1 (its padding NaN, kept out)
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
OLD = torch.log(torch.tensor([[0.5, 0.5], [0.5, 1.0]]))
ADVANTAGES = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])


def batch(ratios, ref=None, kl_coef=0.0):
    """Inputs whose ratio pi / pi_old is ``ratios`` on the valid tokens."""
    logprobs = (OLD + torch.log(torch.tensor(ratios))).requires_grad_()
    logprobs_padded = torch.where(MASK.bool(), logprobs, NAN)
    return ObjectiveInputs(logprobs_padded, OLD, ADVANTAGES, MASK, ref, kl_coef), logprobs


def test_grpo_objective_by_hand():
    # ratios 1.5, 0.9 (A = +1) and 0.7 (A = -1); clip range [0.8, 1.28] (clip-higher):
    #   token 1: -min(1.5, 1.28) = -1.28 (clipped)   token 2: -min(0.9, 0.9) = -0.9
    #   token 3: -min(-0.7, -0.8) = 0.8 (clipped)    token mean: (-1.28 - 0.9 + 0.8) / 3
    # KL k3 with pi_ref = pi_old: r = 1 / ratio, k3 = r - 1 - log r, token mean, beta 0.1
    inputs, _ = batch([[1.5, 0.9], [0.7, 1.0]], ref=OLD, kl_coef=0.1)
    loss, stats = grpo_objective(inputs, ObjectiveSettings(clip_eps=0.2, clip_eps_high=0.28))
    surrogate = (-1.28 - 0.9 + 0.8) / 3
    k3 = [1 / r - 1 - math.log(1 / r) for r in (1.5, 0.9, 0.7)]
    assert stats.policy_loss.item() == pytest.approx(surrogate)
    assert stats.kl_loss.item() == pytest.approx(sum(k3) / 3)
    assert loss.item() == pytest.approx(surrogate + 0.1 * sum(k3) / 3)
    assert stats.clip_fraction.item() == pytest.approx(2 / 3)


def test_grpo_objective_with_kl_in_the_reward_is_the_surrogate_alone():
    inputs, _ = batch([[1.5, 0.9], [0.7, 1.0]], ref=None, kl_coef=0.1)
    loss, stats = grpo_objective(inputs, ObjectiveSettings())
    assert stats.kl_loss.item() == 0.0
    # symmetric [0.8, 1.2]: -1.2, -0.9, 0.8
    assert loss.item() == pytest.approx((-1.2 - 0.9 + 0.8) / 3)


def test_grpo_objective_aggregates_per_sequence():
    # GRPO's sequence mean: completion 1 (-1.2 - 0.9) / 2, completion 2 0.8; mean of the two
    inputs, _ = batch([[1.5, 0.9], [0.7, 1.0]])
    loss, _ = grpo_objective(inputs, ObjectiveSettings(aggregation="sequence"))
    assert loss.item() == pytest.approx(((-1.2 - 0.9) / 2 + 0.8) / 2)
    # Dr. GRPO: each completion's sum over the budget of 4 tokens
    loss, _ = grpo_objective(inputs, ObjectiveSettings(aggregation="sequence-sum", max_length=4))
    assert loss.item() == pytest.approx(((-1.2 - 0.9) / 4 + 0.8 / 4) / 2)


def test_ppo_objective_clips_symmetrically_and_ignores_clip_higher():
    inputs, logprobs = batch([[1.5, 0.9], [0.7, 1.0]])
    loss, stats = ppo_objective(inputs, ObjectiveSettings(clip_eps=0.2, clip_eps_high=0.28))
    assert loss.item() == pytest.approx((-1.2 - 0.9 + 0.8) / 3)
    # only the unclipped token carries a gradient: d(-r A)/d log pi = -r A = -0.9, over 3 tokens
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.3], [0.0, 0.0]]))
    assert stats.approx_kl.item() > 0


def test_gspo_objective_clips_the_sequence_ratio_by_hand():
    # sequence ratios: s_1 = sqrt(1.5 * 0.9) (A = +1), s_2 = 0.7 (A = -1); clip [0.8, 1.28]:
    #   completion 1: -min(s_1, s_1) = -s_1 on each of its 2 tokens (no clip: 1.16 < 1.28, where
    #   GRPO would clip its first token at 1.28); completion 2: -min(-0.7, -0.8) = 0.8 (clipped)
    s_1 = math.sqrt(1.5 * 0.9)
    inputs, logprobs = batch([[1.5, 0.9], [0.7, 1.0]])
    loss, stats = gspo_objective(inputs, ObjectiveSettings(clip_eps=0.2, clip_eps_high=0.28))
    assert loss.item() == pytest.approx((-2 * s_1 + 0.8) / 3)
    assert stats.clip_fraction.item() == pytest.approx(1 / 3)
    # each token of completion 1 gets d(-s_1 A)/d log pi_t = -s_1 (the sequence's ratio, not its
    # own), over 3 tokens; the clipped completion 2 gets none; padding none
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-s_1 / 3, -s_1 / 3], [0.0, 0.0]]))
    # the paper's sequence mean: ((-s_1 - s_1) / 2 + 0.8) / 2
    inputs, _ = batch([[1.5, 0.9], [0.7, 1.0]])
    loss, _ = gspo_objective(inputs, ObjectiveSettings(0.2, 0.28, aggregation="sequence"))
    assert loss.item() == pytest.approx((-s_1 + 0.8) / 2)


def test_objectives_sum_the_surrogate_and_the_weighted_kl_term():
    torch.manual_seed(0)
    logprobs, old, ref = (torch.randn(3, 4) - 2 for _ in range(3))
    advantages, mask = torch.randn(3, 4), (torch.rand(3, 4) > 0.3).float()
    settings = ObjectiveSettings(kl_estimator="k2")
    for objective in (grpo_objective, ppo_objective, gspo_objective):
        loss, stats = objective(
            ObjectiveInputs(logprobs, old, advantages, mask, ref, 0.3), settings
        )
        torch.testing.assert_close(loss, stats.policy_loss + 0.3 * stats.kl_loss)
        torch.testing.assert_close(
            stats.kl_loss, (0.5 * (ref - logprobs) ** 2 * mask).sum() / mask.sum()
        )


def test_the_registry_names_its_objectives_and_takes_a_plug_in(monkeypatch):
    assert objective_names() == ["grpo", "gspo", "ppo"]
    assert get_objective("grpo") is grpo_objective and get_objective("ppo") is ppo_objective
    with pytest.raises(ConfigError, match="objective='grp'.*did you mean 'grpo'"):
        get_objective("grp")
    with pytest.raises(RlhfkitError, match="'ppo' is already registered"):
        register_objective("ppo")(ppo_objective)
    monkeypatch.setattr(objectives, "_OBJECTIVES", dict(objectives._OBJECTIVES))

    @register_objective("reinforce-plain")
    def plain(inputs, settings):
        zero = torch.zeros(())
        valid = inputs.mask.bool()
        loss = -torch.where(valid, inputs.logprobs * inputs.advantages, 0.0).sum() / valid.sum()
        return loss, ObjectiveStats(loss.detach(), zero, zero, zero)

    inputs, _ = batch([[1.0, 1.0], [1.0, 1.0]])
    loss, _ = get_objective("reinforce-plain")(inputs, ObjectiveSettings())
    expected = -(OLD * ADVANTAGES * MASK).sum() / 3
    assert loss.item() == pytest.approx(expected.item())
