"""Offline losses against hand-computed values, plus the properties each one promises."""

import math
import random

import pytest
import torch

from rlhfkit.errors import ConfigError, DataError
from rlhfkit.losses.preference import (
    bradley_terry_loss,
    cpo_loss,
    dpo_loss,
    ipo_loss,
    kto_kl_baseline,
    kto_loss,
    log_odds,
    orpo_loss,
    rater_preference_probability,
    rating_loss,
    sft_loss,
    simpo_loss,
    soft_preference_loss,
)

NAN, INF = float("nan"), float("inf")


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), by hand."""
    return math.log(1.0 + math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- SFT -----------------------------------------------------------------------------------------


def test_sft_loss_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, NAN], [-0.5, INF, -INF]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, stats = sft_loss(logprobs, mask)
    assert loss.item() == pytest.approx((1.0 + 2.0 + 0.5) / 3)  # a mean over the 3 tokens
    assert stats.perplexity.item() == pytest.approx(math.exp(3.5 / 3))
    assert stats.tokens.item() == 3
    # each token of row b weighs w_b: (1 + 2 + 3 * 0.5) / (1 + 1 + 3)
    weighted, _ = sft_loss(logprobs, mask, weight=torch.tensor([1.0, 3.0]))
    assert weighted.item() == pytest.approx(4.5 / 5)


def test_sft_padding_and_zero_weight_rows_reach_neither_loss_nor_gradient():
    logprobs = torch.tensor(
        [[-1.0, -3.0, NAN], [NAN, INF, -INF], [-2.0, INF, NAN]], requires_grad=True
    )
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    loss, stats = sft_loss(logprobs, mask, weight=torch.tensor([1.0, 0.0, 1.0]))
    loss.backward()
    assert loss.item() == pytest.approx((1.0 + 3.0 + 2.0) / 3)
    assert stats.tokens.item() == 3
    expected_grad = [[-1 / 3, -1 / 3, 0.0], [0.0, 0.0, 0.0], [-1 / 3, 0.0, 0.0]]
    torch.testing.assert_close(logprobs.grad, torch.tensor(expected_grad))


def test_sft_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="must both be"):
        sft_loss(torch.zeros(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"weight must be \(B,\)"):
        sft_loss(torch.zeros(2, 3), torch.ones(2, 3), weight=torch.ones(3))


# --- reward models -------------------------------------------------------------------------------


def test_bradley_terry_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    loss, stats = bradley_terry_loss(chosen, rejected)
    # -log sigmoid(d) = log(1 + e^-d) for d = 1 and d = -1
    assert loss.item() == pytest.approx((softplus(-1.0) + softplus(1.0)) / 2)
    assert stats.accuracy.item() == 0.5
    assert stats.margin.item() == pytest.approx(0.0)
    assert stats.chosen.item() == pytest.approx(1.25)
    assert stats.rejected.item() == pytest.approx(1.25)


def test_bradley_terry_with_margin_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    loss, _ = bradley_terry_loss(chosen, rejected, margin=torch.tensor([0.5, 2.0]))
    # d - m = 0.5 and -3
    assert loss.item() == pytest.approx((softplus(-0.5) + softplus(3.0)) / 2)


def test_bradley_terry_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([0.3, -1.0], requires_grad=True)
    rejected = torch.tensor([0.1, 2.0], requires_grad=True)
    bradley_terry_loss(chosen, rejected)[0].backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()


def test_rating_loss_by_hand():
    predicted, target = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.5])
    loss, stats = rating_loss(predicted, target)
    assert loss.item() == pytest.approx((1.0 + 6.25) / 2)  # errors -1 and 2.5
    assert stats.mse.item() == pytest.approx(3.625)
    assert stats.mae.item() == pytest.approx(1.75)
    weighted, _ = rating_loss(predicted, target, weight=torch.tensor([3.0, 1.0]))
    assert weighted.item() == pytest.approx((3 * 1.0 + 6.25) / 4)


def test_soft_preference_loss_by_hand():
    chosen, rejected = torch.tensor([0.3, -1.2]), torch.tensor([0.0, 0.4])
    target = torch.tensor([0.75, 0.2])

    def cross_entropy(d: float, y: float) -> float:
        return -(y * math.log(sigmoid(d)) + (1 - y) * math.log(1 - sigmoid(d)))

    loss, stats = soft_preference_loss(chosen, rejected, target)
    assert loss.item() == pytest.approx((cross_entropy(0.3, 0.75) + cross_entropy(-1.6, 0.2)) / 2)
    assert stats.accuracy.item() == 0.5


def test_soft_preference_loss_is_bradley_terry_at_target_one():
    torch.manual_seed(0)
    chosen, rejected = torch.randn(6) * 3, torch.randn(6) * 3
    soft, soft_stats = soft_preference_loss(chosen, rejected, torch.ones(6))
    hard, hard_stats = bradley_terry_loss(chosen, rejected)
    torch.testing.assert_close(soft, hard)
    torch.testing.assert_close(soft_stats, hard_stats)


@pytest.mark.parametrize("target", [0.2, 0.5, 0.9])
def test_soft_preference_loss_is_least_at_the_target_logit(target):
    best_gap = math.log(target / (1 - target))  # sigmoid^-1(target)
    gaps = torch.tensor([best_gap - 0.1, best_gap, best_gap + 0.1], requires_grad=True)
    losses = [
        soft_preference_loss(gap[None], torch.zeros(1), torch.tensor([target]))[0] for gap in gaps
    ]
    assert losses[1].item() < losses[0].item() and losses[1].item() < losses[2].item()
    losses[1].backward()
    assert gaps.grad[1].item() == pytest.approx(0.0, abs=1e-6)


def test_rater_preference_probability_by_hand():
    # 1 < 2 twice, 2 = 2 twice, 3 > 2 twice: (2 + 0.5 * 2) / 6
    assert rater_preference_probability([1, 2, 3], [2, 2]) == pytest.approx(0.5)
    # 4 beats 1; 5 beats 1 and ties 5; nothing beats 9: (2 + 0.5) / 6
    assert rater_preference_probability([4, 5], [1, 5, 9]) == pytest.approx(5 / 12)
    assert rater_preference_probability([3.5], [1.0, 2.0]) == 1.0
    assert rater_preference_probability([2.0], [2.0]) == 0.5


def test_rater_preference_probability_matches_all_pairs_and_is_symmetric():
    rng = random.Random(0)
    for _ in range(20):
        a = [rng.randint(-4, 4) / 2 for _ in range(rng.randint(1, 12))]
        b = [rng.randint(-4, 4) / 2 for _ in range(rng.randint(1, 12))]
        wins = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
        assert rater_preference_probability(a, b) == pytest.approx(wins / (len(a) * len(b)))
        assert rater_preference_probability(a, b) + rater_preference_probability(
            b, a
        ) == pytest.approx(1.0)


def test_rater_preference_probability_rejects_empty_and_non_finite_ratings():
    with pytest.raises(DataError, match="ratings_b is empty"):
        rater_preference_probability([1.0], [])
    with pytest.raises(DataError, match="ratings_a=.*non-finite"):
        rater_preference_probability([1.0, NAN], [2.0])


# --- DPO and IPO ---------------------------------------------------------------------------------


def test_dpo_by_hand():
    # h = 0.5 * ((-10 + 11) - (-12 + 11)) = 1
    args = [torch.tensor([v]) for v in (-10.0, -12.0, -11.0, -11.0)]
    loss, stats = dpo_loss(*args, beta=0.5)
    assert loss.item() == pytest.approx(softplus(-1.0))
    smoothed, _ = dpo_loss(*args, beta=0.5, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(0.9 * softplus(-1.0) + 0.1 * softplus(1.0))
    assert stats.chosen_reward.item() == pytest.approx(0.5)
    assert stats.rejected_reward.item() == pytest.approx(-0.5)
    assert stats.margin.item() == pytest.approx(1.0)
    assert stats.accuracy.item() == 1.0


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_dpo_matches_its_formula_on_random_inputs(label_smoothing):
    torch.manual_seed(0)
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = -20 * torch.rand(4, 16)
    beta = 0.1
    loss, stats = dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing
    )
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    h = chosen_reward - rejected_reward
    expected = (
        -(1 - label_smoothing) * torch.log(torch.sigmoid(h))
        - label_smoothing * torch.log(torch.sigmoid(-h))
    ).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(stats.chosen_reward, chosen_reward.mean())
    torch.testing.assert_close(stats.rejected_reward, rejected_reward.mean())
    torch.testing.assert_close(stats.margin, h.mean())
    torch.testing.assert_close(stats.accuracy, (h > 0).float().mean())


def test_dpo_gradient_raises_chosen_lowers_rejected_and_leaves_reference():
    torch.manual_seed(1)
    policy_chosen, policy_rejected = (-10 * torch.rand(2, 5)).requires_grad_().unbind()
    ref_chosen, ref_rejected = (-10 * torch.rand(2, 5)).requires_grad_().unbind()
    # unbind makes non-leaf views; keep their grads to inspect them
    for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected):
        t.retain_grad()
    dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1)[0].backward()
    assert (policy_chosen.grad < 0).all() and (policy_rejected.grad > 0).all()
    assert ref_chosen.grad is None and ref_rejected.grad is None


def test_dpo_rejects_bad_beta_and_label_smoothing():
    x = torch.zeros(2)
    with pytest.raises(ConfigError, match="beta=0"):
        dpo_loss(x, x, x, x, beta=0)
    with pytest.raises(ConfigError, match="label_smoothing=0.5"):
        dpo_loss(x, x, x, x, beta=0.1, label_smoothing=0.5)


def test_ipo_by_hand():
    # row 1: h' = (-1 + 1.5) - (-2 + 1.8) = 0.7, target 1 / (2 * 0.5) = 1; row 2: h' = 0
    policy_chosen, ref_chosen = torch.tensor([-1.0, -1.0]), torch.tensor([-1.5, -1.0])
    policy_rejected, ref_rejected = torch.tensor([-2.0, -1.0]), torch.tensor([-1.8, -1.0])
    loss, stats = ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.5)
    assert loss.item() == pytest.approx(((0.7 - 1.0) ** 2 + (0.0 - 1.0) ** 2) / 2)
    assert stats.chosen_reward.item() == pytest.approx(0.5 * (0.5 + 0.0) / 2)
    assert stats.rejected_reward.item() == pytest.approx(0.5 * (-0.2 + 0.0) / 2)
    assert stats.accuracy.item() == 0.5


def test_ipo_is_least_at_a_gap_of_one_over_two_beta():
    beta = 0.25
    gap = torch.tensor([2.0], requires_grad=True)  # 1 / (2 beta)
    loss, _ = ipo_loss(gap, torch.zeros(1), torch.zeros(1), torch.zeros(1), beta)
    loss.backward()
    assert loss.item() == 0.0 and gap.grad.item() == 0.0


# --- KTO -----------------------------------------------------------------------------------------


def test_kto_by_hand():
    # r = 0.5 (desirable) and -1.0 (undesirable), beta 0.5, z0 0.2
    policy, ref = torch.tensor([-3.0, -4.0]), torch.tensor([-3.5, -3.0])
    desirable = torch.tensor([True, False])
    loss, stats = kto_loss(
        policy, ref, desirable, beta=0.5, kl_baseline=torch.tensor(0.2), undesirable_weight=2.0
    )
    desirable_loss = 1 - sigmoid(0.5 * (0.5 - 0.2))
    undesirable_loss = 2.0 * (1 - sigmoid(0.5 * (0.2 + 1.0)))
    assert loss.item() == pytest.approx((desirable_loss + undesirable_loss) / 2)
    assert stats.desirable_reward.item() == pytest.approx(0.25)
    assert stats.undesirable_reward.item() == pytest.approx(-0.5)
    assert stats.kl_baseline.item() == pytest.approx(0.2)
    assert stats.loss.item() == pytest.approx(loss.item())


def test_kto_clamps_a_negative_baseline_and_handles_an_empty_group():
    policy, ref = torch.tensor([-3.0, -4.0]), torch.tensor([-3.5, -3.0])
    all_desirable = torch.tensor([True, True])
    negative, stats = kto_loss(policy, ref, all_desirable, 0.5, kl_baseline=torch.tensor(-1.0))
    zero, _ = kto_loss(policy, ref, all_desirable, 0.5, kl_baseline=torch.tensor(0.0))
    assert negative.item() == pytest.approx(zero.item())
    assert stats.kl_baseline.item() == 0.0
    assert stats.undesirable_reward.item() == 0.0  # no undesirable row: 0, not NaN
    assert stats.desirable_reward.item() == pytest.approx(0.5 * (0.5 - 1.0) / 2)
    _, none_desirable = kto_loss(policy, ref, ~all_desirable, 0.5, kl_baseline=torch.tensor(0.0))
    assert none_desirable.desirable_reward.item() == 0.0


def test_kto_gradient_raises_desirable_and_lowers_undesirable():
    policy = torch.tensor([-3.0, -4.0, -2.0], requires_grad=True)
    desirable = torch.tensor([True, False, True])
    kto_loss(policy, torch.full((3,), -3.0), desirable, 0.1, torch.tensor(0.1))[0].backward()
    assert policy.grad[0] < 0 and policy.grad[2] < 0 and policy.grad[1] > 0


def test_kto_kl_baseline_by_hand():
    policy = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    baseline = kto_kl_baseline(policy, torch.tensor([-2.0, -2.0, -2.5]))
    assert baseline.item() == pytest.approx((1.0 + 0.0 - 0.5) / 3)
    assert not baseline.requires_grad
    assert kto_kl_baseline(torch.tensor([-3.0, -3.0]), torch.tensor([-1.0, -2.0])).item() == 0.0


def test_kto_rejects_a_non_bool_desirable_mask():
    with pytest.raises(ValueError, match="desirable must be a bool"):
        kto_loss(torch.zeros(2), torch.zeros(2), torch.tensor([1, 0]), 0.1, torch.tensor(0.0))


# --- reference-free: ORPO, SimPO, CPO --------------------------------------------------------------


def test_orpo_loss_by_hand():
    # row 1: P(y_c) = 0.5 (odds 1), P(y_r) = 0.2 (odds 1/4): log odds ratio log 4
    #        L = -log 0.5 + 0.1 * -log sigmoid(log 4) = log 2 + 0.1 log(1 + 1/4)
    # row 2: P(y_c) = 0.25 (odds 1/3), P(y_r) = 0.75 (odds 3): ratio log(1/9)
    #        L = log 4 + 0.1 log(1 + 9)
    chosen = torch.log(torch.tensor([0.5, 0.25])).requires_grad_()
    rejected = torch.log(torch.tensor([0.2, 0.75]))
    loss, stats = orpo_loss(chosen, rejected, beta=0.1)
    by_hand = (math.log(2) + 0.1 * math.log(1.25) + math.log(4) + 0.1 * math.log(10)) / 2
    assert loss.item() == pytest.approx(by_hand)
    assert stats.nll.item() == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert stats.accuracy.item() == 0.5
    loss.backward()
    assert (chosen.grad < 0).all()  # both terms raise the chosen completion's likelihood


def test_log_odds_is_finite_and_exact_near_certainty():
    torch.testing.assert_close(
        log_odds(torch.log(torch.tensor([0.5, 0.2]))), torch.tensor([0.0, math.log(0.25)])
    )
    # P = exp(-1e-9): 1 - P = 1e-9 to float32 precision, where 1 - exp(a) would round to 0
    assert log_odds(torch.tensor([-1e-9])).item() == pytest.approx(-math.log(1e-9), rel=1e-4)


def test_simpo_loss_by_hand():
    # beta 2, gamma 0.5: row 1 -log sigmoid(2 (-1 + 2) - 0.5), row 2 -log sigmoid(2 (-2 + 1.5) - 0.5)
    chosen, rejected = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.5])
    loss, stats = simpo_loss(chosen, rejected, beta=2.0, gamma=0.5)
    assert loss.item() == pytest.approx((softplus(-1.5) + softplus(1.5)) / 2)
    assert stats.margin.item() == pytest.approx((2.0 - 1.0) / 2)
    assert stats.chosen_reward.item() == pytest.approx(-3.0)
    # gamma is a margin: a pair won by less than gamma still costs more than log 2
    assert simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.1]), 2.0, 0.5)[0].item() > math.log(2)
    with pytest.raises(ConfigError, match="gamma=-0.1"):
        simpo_loss(chosen, rejected, 2.0, -0.1)


def test_cpo_loss_by_hand():
    # summed log-probs -3 (3 tokens) vs -5, beta 0.1: -log sigmoid(0.1 * 2) + 3 / 3
    # second row: -2 (4 tokens) vs -1: -log sigmoid(-0.1) + 2 / 4
    chosen, rejected = torch.tensor([-3.0, -2.0]), torch.tensor([-5.0, -1.0])
    loss, stats = cpo_loss(chosen, rejected, torch.tensor([3, 4]), beta=0.1)
    assert loss.item() == pytest.approx((softplus(-0.2) + 1.0 + softplus(0.1) + 0.5) / 2)
    assert stats.nll.item() == pytest.approx((1.0 + 0.5) / 2)
    assert stats.accuracy.item() == 0.5


# --- weights, shapes and dtypes, across every loss -----------------------------------------------


# Each case maps a (4, B) tensor of random inputs (one row per argument) and a weight to a loss.
LOSSES = {
    "sft": lambda x, w: sft_loss(x.T, torch.ones_like(x.T), weight=w),
    "bradley_terry": lambda x, w: bradley_terry_loss(x[0], x[1], margin=x[2].abs(), weight=w),
    "rating": lambda x, w: rating_loss(x[0], x[1], weight=w),
    "soft": lambda x, w: soft_preference_loss(x[0], x[1], torch.sigmoid(x[2]), weight=w),
    "dpo": lambda x, w: dpo_loss(x[0], x[1], x[2], x[3], 0.5, label_smoothing=0.1, weight=w),
    "ipo": lambda x, w: ipo_loss(x[0], x[1], x[2], x[3], 0.5, weight=w),
    "kto": lambda x, w: kto_loss(x[0], x[1], x[2] > 0, 0.5, torch.tensor(0.3), 1.0, 1.5, weight=w),
    "orpo": lambda x, w: orpo_loss(-x[0].abs() - 0.1, -x[1].abs() - 0.1, 0.5, weight=w),
    "simpo": lambda x, w: simpo_loss(x[0], x[1], 2.0, 0.5, weight=w),
    "cpo": lambda x, w: cpo_loss(x[0], x[1], x[2].abs().ceil() + 1, 0.5, weight=w),
}


@pytest.mark.parametrize("name", LOSSES)
def test_a_zero_weight_removes_a_row(name):
    torch.manual_seed(2)
    inputs, weight = torch.randn(4, 6), torch.rand(6) + 0.5
    weight[3] = 0.0
    kept = [0, 1, 2, 4, 5]
    full, full_stats = LOSSES[name](inputs, weight)
    without, without_stats = LOSSES[name](inputs[:, kept], weight[kept])
    torch.testing.assert_close(full, without)
    torch.testing.assert_close(full_stats, without_stats)
    moved = inputs.clone()
    moved[:, 3] += 5.0
    torch.testing.assert_close(LOSSES[name](moved, weight)[0], full)


def test_an_infinite_loss_on_a_zero_weight_row_is_left_out():
    predicted, target = torch.tensor([1.0, INF]), torch.tensor([2.0, 0.0])
    loss, stats = rating_loss(predicted, target, weight=torch.tensor([1.0, 0.0]))
    assert loss.item() == 1.0 and stats.mae.item() == 1.0  # not 0 * inf = NaN


@pytest.mark.parametrize("name", LOSSES)
def test_scaling_all_weights_changes_nothing_and_none_is_the_plain_mean(name):
    torch.manual_seed(3)
    inputs, weight = torch.randn(4, 6), torch.rand(6) + 0.5
    loss, stats = LOSSES[name](inputs, weight)
    doubled, doubled_stats = LOSSES[name](inputs, 2 * weight)
    torch.testing.assert_close(loss, doubled)
    torch.testing.assert_close(stats, doubled_stats)
    torch.testing.assert_close(LOSSES[name](inputs, None), LOSSES[name](inputs, torch.ones(6)))
    assert not torch.allclose(loss, LOSSES[name](inputs, None)[0])  # the weights did matter


@pytest.mark.parametrize("name", LOSSES)
def test_low_precision_inputs_are_computed_in_float32(name):
    torch.manual_seed(4)
    loss, stats = LOSSES[name](torch.randn(4, 6).bfloat16(), None)
    assert loss.dtype == torch.float32
    assert all(not s.requires_grad for s in stats)


def test_broadcastable_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"all of shape \(B,\)"):
        bradley_terry_loss(torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(ValueError, match="weight"):
        dpo_loss(*torch.zeros(4, 3), beta=0.1, weight=torch.ones(2))
