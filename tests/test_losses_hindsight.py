"""Hindsight losses against hand-computed values: HIR's contrastive term, hindsight + foresight."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.losses.hindsight import hindsight_foresight_loss, hir_loss

# two outputs: 2 tokens and 1 token (the second row's last entry is padding, even -inf)
LOGPROBS = torch.tensor([[-1.0, -2.0], [-0.5, -math.inf]])
MASK = torch.tensor([[1, 1], [1, 0]])


def test_hir_loss_by_hand():
    opposite = torch.tensor([-4.0, -0.5])  # log p(o | q-): row 0 less likely, row 1 equally likely
    entropy = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    loss, stats = hir_loss(
        LOGPROBS, MASK, opposite, entropy, contrastive_coef=0.5, entropy_coef=0.1
    )
    nll = (1.0 + 2.0 + 0.5) / 3
    # matching sums: -3 and -0.5; -log softmax([m, o])[0] = log(1 + exp(o - m))
    contrastive = (math.log1p(math.exp(-4.0 + 3.0)) + math.log(2.0)) / 2
    entropy_mean = (1.0 + 2.0 + 3.0) / 3
    assert stats.nll.item() == pytest.approx(nll)
    assert stats.contrastive.item() == pytest.approx(contrastive)
    assert stats.entropy.item() == pytest.approx(entropy_mean)
    assert stats.matching_accuracy.item() == pytest.approx(0.5)  # row 1 ties: not more likely
    assert loss.item() == pytest.approx(nll + 0.5 * contrastive - 0.1 * entropy_mean)


def test_hir_contrastive_is_a_two_way_softmax():
    matching, opposite = torch.tensor([[-1.5]]), torch.tensor([-0.2])
    _, stats = hir_loss(matching, torch.ones(1, 1), opposite)
    two_way = -torch.log_softmax(torch.tensor([-1.5, -0.2]), dim=0)[0]
    assert stats.contrastive.item() == pytest.approx(two_way.item())


def test_hir_contrastive_gradient_separates_the_instructions():
    matching = torch.tensor([[-1.0]], requires_grad=True)
    opposite = torch.tensor([-1.0], requires_grad=True)
    loss, _ = hir_loss(matching, torch.ones(1, 1), opposite, contrastive_coef=1.0)
    loss.backward()
    # d/dm softplus(o - m) = -0.5 at o = m; plus the NLL's -1: the matching likelihood rises
    assert matching.grad.item() == pytest.approx(-1.5)
    assert opposite.grad.item() == pytest.approx(0.5)  # and the opposite one falls


def test_hir_padding_reaches_no_gradient():
    logprobs = LOGPROBS.clone().requires_grad_(True)
    loss, _ = hir_loss(logprobs, MASK, torch.tensor([-4.0, -0.5]))
    loss.backward()
    assert torch.isfinite(loss) and logprobs.grad[1, 1] == 0


def test_hir_entropy_coef_needs_entropy():
    with pytest.raises(ValueError, match="token_entropy"):
        hir_loss(LOGPROBS, MASK, torch.zeros(2), entropy_coef=0.1)


# --- hindsight + foresight ---------------------------------------------------------------------

RELABELLED = torch.tensor([[-1.0, -3.0]])
RELABELLED_MASK = torch.tensor([[1, 1]])
RETURNS = torch.tensor([1.0, -1.0])
VALUES = torch.tensor([[0.5, 0.0], [0.0, 7.0]])


def test_hindsight_foresight_by_hand():
    loss, stats = hindsight_foresight_loss(
        RELABELLED, RELABELLED_MASK, LOGPROBS, MASK, RETURNS, VALUES, foresight_coef=2.0
    )
    hindsight = (1.0 + 3.0) / 2
    # A = R - V: [0.5, 1.0] and [-1.0, (padding)]; -A log pi over the 3 valid tokens
    foresight = (0.5 * 1.0 + 1.0 * 2.0 + -1.0 * 0.5) / 3
    assert stats.hindsight.item() == pytest.approx(hindsight)
    assert stats.foresight.item() == pytest.approx(foresight)
    assert stats.advantage.item() == pytest.approx((0.5 + 1.0 - 1.0) / 3)
    assert loss.item() == pytest.approx(hindsight + 2.0 * foresight)


def _grads(coef: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    relabelled = RELABELLED.clone().requires_grad_(True)
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    values = VALUES.clone().requires_grad_(True)
    loss, _ = hindsight_foresight_loss(
        relabelled, RELABELLED_MASK, logprobs, MASK, RETURNS, values, foresight_coef=coef
    )
    loss.backward()
    return relabelled.grad, logprobs.grad, values.grad


def test_zero_lambda_is_pure_hindsight():
    loss, stats = hindsight_foresight_loss(
        RELABELLED, RELABELLED_MASK, LOGPROBS, MASK, RETURNS, VALUES, foresight_coef=0.0
    )
    assert loss.item() == pytest.approx(stats.hindsight.item())
    relabelled_grad, logprobs_grad, values_grad = _grads(0.0)
    assert torch.equal(logprobs_grad, torch.zeros_like(logprobs_grad))
    assert torch.allclose(relabelled_grad, torch.tensor([[-0.5, -0.5]]))
    assert values_grad is None or not values_grad.any()  # the baseline never gets a gradient


def test_large_lambda_is_the_policy_gradient():
    coef = 1e6
    loss, stats = hindsight_foresight_loss(
        RELABELLED, RELABELLED_MASK, LOGPROBS, MASK, RETURNS, VALUES, foresight_coef=coef
    )
    assert (loss / coef).item() == pytest.approx(stats.foresight.item(), rel=1e-5)
    relabelled_grad, logprobs_grad, _ = _grads(coef)
    # REINFORCE with a baseline: d/d log pi_t of -A_t log pi_t / N is -A_t / N
    expected = -torch.tensor([[0.5, 1.0], [-1.0, 0.0]]) / 3
    assert torch.allclose(logprobs_grad / coef, expected)
    assert relabelled_grad.abs().max() / coef < 1e-6  # hindsight's share vanishes
