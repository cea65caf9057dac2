"""Policy losses against hand-computed values, plus the properties each one promises."""

import math

import pytest
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.losses.policy import (
    aggregate,
    entropy_from_logits,
    kl_estimate,
    masked_mean,
    masked_sum,
    masked_whiten,
    ppo_clip_loss,
    truncated_importance_weights,
    value_loss,
)

NAN, INF = float("nan"), float("inf")


# --- masked reductions ---------------------------------------------------------------------------


def test_masked_sum_and_mean_ignore_padding_even_nan():
    x = torch.tensor([[1.0, 2.0, NAN], [4.0, INF, NAN]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_sum(x, mask).item() == 7.0  # 1 + 2 + 4
    assert masked_mean(x, mask).item() == pytest.approx(7 / 3)
    assert masked_mean(x, mask, dim=-1).tolist() == [1.5, 4.0]
    assert masked_sum(x, mask.bool(), dim=-1).tolist() == [3.0, 4.0]


def test_masked_mean_of_an_empty_row_is_zero():
    x = torch.tensor([[1.0, 3.0], [NAN, NAN]])
    mask = torch.tensor([[1, 1], [0, 0]])
    assert masked_mean(x, mask, dim=-1).tolist() == [2.0, 0.0]


def test_masked_whiten_by_hand():
    # valid 1, 2, 3, 5: mean 2.75, population var (1.75² + 0.75² + 0.25² + 2.25²) / 4 = 2.1875
    x = torch.tensor([[1.0, 2.0, 3.0], [5.0, 99.0, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    std = math.sqrt(2.1875)
    expected = [[-1.75 / std, -0.75 / std, 0.25 / std], [2.25 / std, 0.0, 0.0]]
    torch.testing.assert_close(masked_whiten(x, mask, eps=0.0), torch.tensor(expected))
    kept_mean = masked_whiten(x, mask, shift_mean=False, eps=0.0)
    torch.testing.assert_close(kept_mean[0], torch.tensor(expected[0]) + 2.75)
    assert masked_mean(kept_mean, mask).item() == pytest.approx(2.75)


# --- aggregation ---------------------------------------------------------------------------------


LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, NAN]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_aggregate_modes_by_hand():
    assert aggregate(LOSS, MASK).item() == pytest.approx(2.5)  # (1 + 2 + 3 + 4) / 4 tokens
    assert aggregate(LOSS, MASK, "sequence").item() == pytest.approx(3.0)  # (2 + 4) / 2
    # (6 / 4 + 4 / 4) / 2: each completion's sum over the constant 4
    assert aggregate(LOSS, MASK, "sequence-sum", max_length=4).item() == pytest.approx(1.25)


def test_sequence_mode_skips_empty_completions():
    loss = torch.tensor([[1.0, 2.0], [7.0, 7.0]])
    assert aggregate(loss, torch.tensor([[1, 1], [0, 0]]), "sequence").item() == 1.5


def test_aggregate_rejects_unknown_mode_and_missing_length():
    with pytest.raises(ConfigError, match="aggregation='tokens'.*choose one of: token, sequence"):
        aggregate(LOSS, MASK, "tokens")
    with pytest.raises(ConfigError, match="max_length=None"):
        aggregate(LOSS, MASK, "sequence-sum")


# --- PPO -----------------------------------------------------------------------------------------


def test_ppo_clip_loss_by_hand():
    # token: ratio, A -> unclipped -A r, clipped -A clip(r, 0.8, 1.2), max, gradient?
    #   1.5, +1 -> -1.5, -1.2 -> -1.2  clipped (no gradient)
    #   0.5, +1 -> -0.5, -0.8 -> -0.5  unclipped: d/dlogp (-A r) = -0.5
    #   0.5, -1 ->  0.5,  0.8 ->  0.8  clipped (no gradient)
    #   1.5, -1 ->  1.5,  1.2 ->  1.5  unclipped: d/dlogp (-A r) = +1.5
    ratio = torch.tensor([[1.5, 0.5, 0.5, 1.5]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    old_logprobs = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    logprobs = (old_logprobs + ratio.log()).requires_grad_()
    loss, stats = ppo_clip_loss(logprobs, old_logprobs, advantages, torch.ones(1, 4), clip_eps=0.2)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8 + 1.5) / 4)
    assert stats.clip_fraction.item() == 0.5
    k3 = ratio - 1 - ratio.log()  # KL(old || new) from tokens of old: r = new / old
    assert stats.approx_kl.item() == pytest.approx(k3.mean().item())
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, -0.5, 0.0, 1.5]]) / 4)


def test_ppo_clip_loss_weights_each_token_by_hand():
    # the same four tokens as above, weighted 2, 0, 1, 0.5: the per-token losses -1.2, -0.5,
    # 0.8, 1.5 and the gradients 0, -0.5, 0, 1.5 scale by them
    ratio = torch.tensor([[1.5, 0.5, 0.5, 1.5]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    old_logprobs = torch.tensor([[-1.0, -2.0, -0.5, -3.0]])
    logprobs = (old_logprobs + ratio.log()).requires_grad_()
    weights = torch.tensor([[2.0, 0.0, 1.0, 0.5]])
    loss, _ = ppo_clip_loss(
        logprobs, old_logprobs, advantages, torch.ones(1, 4), clip_eps=0.2, weights=weights
    )
    assert loss.item() == pytest.approx((2 * -1.2 + 0 + 0.8 + 0.5 * 1.5) / 4)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 0.0, 0.0, 0.75]]) / 4)


def test_truncated_importance_weights_by_hand():
    # pi_trainer / pi_sampler per token: 1, e^-1, e^1.5 capped at 2, padding (any gap) -> 1
    trainer = torch.tensor([[-1.0, -2.0, -0.5, -3.0]], requires_grad=True)
    sampler = torch.tensor([[-1.0, -1.0, -2.0, -0.1]])
    weights = truncated_importance_weights(trainer, sampler, torch.tensor([[1, 1, 1, 0]]), cap=2.0)
    torch.testing.assert_close(weights, torch.tensor([[1.0, math.exp(-1.0), 2.0, 1.0]]))
    assert not weights.requires_grad  # a weight on the gradient, not a path for it


def test_ppo_loss_is_minus_advantage_times_ratio_when_unclipped():
    torch.manual_seed(0)
    old_logprobs = -torch.rand(3, 5) * 3
    logprobs = old_logprobs + (torch.rand(3, 5) - 0.5) * 0.3  # |log r| < 0.15: inside the clip
    advantages = torch.randn(3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    loss, stats = ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2)
    expected = masked_mean(-advantages * (logprobs - old_logprobs).exp(), mask)
    torch.testing.assert_close(loss, expected)
    assert stats.clip_fraction.item() == 0.0


def test_ppo_on_policy_gradient_is_the_policy_gradient():
    # at ratio 1 the gradient w.r.t. log pi is -A / n_tokens (REINFORCE)
    logprobs = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    advantages = torch.tensor([[2.0, -1.0, 0.5]])
    loss, stats = ppo_clip_loss(logprobs, logprobs.detach(), advantages, torch.ones(1, 3))
    loss.backward()
    torch.testing.assert_close(logprobs.grad, -advantages / 3)
    assert stats.approx_kl.item() == 0.0


def test_ppo_clip_higher_lets_positive_advantages_rise_further():
    old_logprobs = torch.zeros(1, 1)
    logprobs = torch.full((1, 1), math.log(1.25))
    advantages, mask = torch.ones(1, 1), torch.ones(1, 1)
    symmetric, stats = ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2)
    assert symmetric.item() == pytest.approx(-1.2) and stats.clip_fraction.item() == 1.0
    higher, stats = ppo_clip_loss(
        logprobs, old_logprobs, advantages, mask, clip_eps=0.2, clip_eps_high=0.28
    )
    assert higher.item() == pytest.approx(-1.25) and stats.clip_fraction.item() == 0.0
    with pytest.raises(ConfigError, match="clip_eps=0"):
        ppo_clip_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0)


def test_ppo_padding_reaches_neither_loss_nor_gradient():
    logprobs = torch.tensor([[-1.0, INF], [-2.0, -1.5]], requires_grad=True)
    old_logprobs = torch.tensor([[-1.1, NAN], [-2.0, -1.0]])
    advantages = torch.tensor([[1.0, INF], [-1.0, 2.0]])
    mask = torch.tensor([[1, 0], [1, 1]])
    loss, _ = ppo_clip_loss(logprobs, old_logprobs, advantages, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logprobs.grad).all()
    assert logprobs.grad[0, 1] == 0.0
    kept = torch.tensor([[-1.0, -2.0, -1.5]], requires_grad=True)
    expected, _ = ppo_clip_loss(
        kept, torch.tensor([[-1.1, -2.0, -1.0]]), torch.tensor([[1.0, -1.0, 2.0]]), torch.ones(1, 3)
    )
    torch.testing.assert_close(loss, expected)


# --- value loss ----------------------------------------------------------------------------------


def test_value_loss_by_hand():
    # token 1: V 1.0, V_old 0.5 -> V_clip 0.7; (1 - 2)² = 1 < (0.7 - 2)² = 1.69: clipped, no gradient
    # token 2: V = V_old = 2 -> both errors (2 - 1)² = 1; gradient 0.5 * 2 (V - R) / 2 tokens = 0.5
    values = torch.tensor([[1.0, 2.0, INF]], requires_grad=True)
    old_values = torch.tensor([[0.5, 2.0, NAN]])
    returns = torch.tensor([[2.0, 1.0, NAN]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = value_loss(values, old_values, returns, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert stats.clip_fraction.item() == 0.5
    loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, 0.5, 0.0]]))


def test_value_loss_is_half_squared_error_inside_the_clip():
    values = torch.tensor([[1.1, 2.9]])
    loss, _ = value_loss(
        values,
        torch.tensor([[1.0, 3.0]]),
        torch.tensor([[0.0, 1.0]]),
        torch.ones(1, 2),
        clip_eps=0.2,
    )
    assert loss.item() == pytest.approx(0.5 * (1.1**2 + 1.9**2) / 2)


# --- KL estimators -------------------------------------------------------------------------------


def test_kl_estimators_by_hand():
    # pi = (0.5, 0.25), pi_ref = (0.25, 0.5) on two sampled tokens: r = pi_ref / pi = (0.5, 2)
    logprobs = torch.tensor([0.5, 0.25]).log()
    ref_logprobs = torch.tensor([0.25, 0.5]).log()
    ln2 = math.log(2)
    torch.testing.assert_close(kl_estimate(logprobs, ref_logprobs, "k1"), torch.tensor([ln2, -ln2]))
    torch.testing.assert_close(
        kl_estimate(logprobs, ref_logprobs, "k2"), torch.tensor([0.5 * ln2**2, 0.5 * ln2**2])
    )
    torch.testing.assert_close(
        kl_estimate(logprobs, ref_logprobs, "k3"), torch.tensor([-0.5 + ln2, 1 - ln2])
    )


def test_k1_and_k3_are_unbiased_k2_is_not():
    # exact expectation over a small categorical pi: Σ_x pi(x) k(x) against KL(pi || pi_ref)
    torch.manual_seed(1)
    logprobs = torch.log_softmax(torch.randn(6, dtype=torch.float64), 0)
    ref_logprobs = torch.log_softmax(torch.randn(6, dtype=torch.float64), 0)
    kl = (logprobs.exp() * (logprobs - ref_logprobs)).sum()
    expectation = {
        k: (logprobs.exp() * kl_estimate(logprobs, ref_logprobs, k)).sum()
        for k in ("k1", "k2", "k3")
    }
    torch.testing.assert_close(expectation["k1"], kl)
    torch.testing.assert_close(expectation["k3"], kl)
    assert abs(expectation["k2"] - kl) > 1e-3


def test_kl_estimator_signs():
    torch.manual_seed(2)
    logprobs, ref_logprobs = -torch.rand(4, 7) * 5, -torch.rand(4, 7) * 5
    assert (kl_estimate(logprobs, ref_logprobs, "k1") < 0).any()  # k1 alone can go negative
    for kind in ("k2", "k3"):
        assert (kl_estimate(logprobs, ref_logprobs, kind) >= 0).all()
    for kind in ("k1", "k2", "k3"):
        assert (kl_estimate(logprobs, logprobs, kind) == 0).all()
    with pytest.raises(ConfigError, match="kind='k4'"):
        kl_estimate(logprobs, ref_logprobs, "k4")


# --- entropy -------------------------------------------------------------------------------------


def test_entropy_by_hand_and_against_torch():
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 11)
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), expected)


def test_entropy_is_stable_for_huge_and_masked_logits():
    logits = torch.tensor(
        [[1000.0, 1000.0, -INF, -INF], [0.0, -INF, -INF, -INF]], requires_grad=True
    )
    entropy = entropy_from_logits(logits)
    torch.testing.assert_close(entropy.detach(), torch.tensor([math.log(2), 0.0]))
    entropy.sum().backward()
    assert torch.isfinite(logits.grad).all()
