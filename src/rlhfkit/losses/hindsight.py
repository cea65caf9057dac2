"""Hindsight losses: learn from a sample by rewriting what it is evidence for, as pure functions.

Shapes: ``B`` sampled outputs, ``T`` output tokens (right-padded). A ``mask`` is ``(B, T)``,
bool or 0/1 float, 1 on output tokens; padded entries reach neither a loss nor its gradient.
Per-token log-probabilities come from ``models.token_logprobs`` / ``sequences.completion_logprobs``.

Losses return ``(loss, stats)``: a scalar to minimise and a NamedTuple of detached scalar tensors.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rlhfkit.losses.policy import masked_mean, masked_sum


class HIRStats(NamedTuple):
    """Detached parts of one HIR-loss evaluation."""

    nll: Tensor
    """Cross-entropy of the outputs under their relabelled instruction, per output token."""
    contrastive: Tensor
    """Mean -log softmax of the matching instruction against the opposite one."""
    entropy: Tensor
    """Mean token entropy of the policy over the output tokens (nats)."""
    matching_accuracy: Tensor
    """Share of outputs more likely under their matching instruction than the opposite one."""


def hir_loss(
    logprobs: Tensor,
    mask: Tensor,
    opposite_sequence_logprobs: Tensor,
    token_entropy: Tensor | None = None,
    contrastive_coef: float = 1.0,
    entropy_coef: float = 0.0,
) -> tuple[Tensor, HIRStats]:
    """Hindsight Instruction Relabeling's offline loss (Zhang et al. 2023, arXiv 2302.05206, §3).

    Each sampled output o was relabelled with the instruction it actually fulfilled, q+ (the
    success instruction when the verifier accepted it, the failure one otherwise); q- is the other.

        L_ce  = -1/N Σ_b Σ_t log p(o_bt | q+_b, o_b,<t)              N = output tokens
        L_con = -1/B Σ_b log softmax([log p(o_b | q+_b), log p(o_b | q-_b)])[0]
              =  1/B Σ_b softplus(log p(o_b | q-_b) - log p(o_b | q+_b))
        L     = L_ce + contrastive_coef * L_con - entropy_coef * H

    with log p(o | q) the output's summed token log-probs and H the mean token entropy of the
    policy on the output positions. L_ce alone would teach both instructions to produce
    everything that was sampled; L_con makes the instruction matter, pushing an output's
    likelihood under the instruction it fulfilled above its likelihood under the one it did not.
    The paper contrasts against the other instructions of the batch; with two instructions the
    opposite one is the only other. A positive ``entropy_coef`` keeps the policy's sampling
    distribution from collapsing between rounds, since each round samples from it again.

    Args:
        logprobs: ``(B, T)`` log p(o_t | q+, o_<t) under the policy (with grad).
        mask: ``(B, T)`` output tokens.
        opposite_sequence_logprobs: ``(B,)`` log p(o | q-), summed over the output (with grad).
        token_entropy: ``(B, T)`` the policy's entropy at each output position; needed when
            ``entropy_coef`` is not 0.
    """
    if entropy_coef and token_entropy is None:
        raise ValueError("entropy_coef is set, so hir_loss needs token_entropy (B, T)")
    nll = masked_mean(-logprobs, mask)
    matching = masked_sum(logprobs, mask, dim=1)  # (B,)
    contrastive = torch.nn.functional.softplus(opposite_sequence_logprobs - matching).mean()
    entropy = masked_mean(token_entropy, mask) if token_entropy is not None else nll.new_zeros(())
    loss = nll + contrastive_coef * contrastive - entropy_coef * entropy
    with torch.no_grad():
        stats = HIRStats(
            nll=nll.detach(),
            contrastive=contrastive.detach(),
            entropy=entropy.detach(),
            matching_accuracy=(matching > opposite_sequence_logprobs).float().mean(),
        )
    return loss, stats


class HindsightForesightStats(NamedTuple):
    """Detached parts of one hindsight + foresight evaluation."""

    hindsight: Tensor
    """J_hindsight: NLL per token of the outputs under the goals they achieved."""
    foresight: Tensor
    """J_foresight: the policy-gradient surrogate -A log pi, per token."""
    advantage: Tensor
    """Mean advantage R - V over the commanded-goal output tokens."""


def hindsight_foresight_loss(
    relabelled_logprobs: Tensor,
    relabelled_mask: Tensor,
    logprobs: Tensor,
    mask: Tensor,
    returns: Tensor,
    values: Tensor,
    foresight_coef: float = 1.0,
) -> tuple[Tensor, HindsightForesightStats]:
    """One objective from hindsight (what the sample achieved) and foresight (what it was asked).

        J_hindsight = -1/N' Σ log pi(o_t | g_achieved, o_<t)            relabelled likelihood
        A_t         = R - V(s_t)                                        advantage, no gradient
        J_foresight = -1/N  Σ A_t log pi(o_t | g_commanded, o_<t)       REINFORCE with a baseline
        J           = J_hindsight + foresight_coef * J_foresight

    Hindsight relabelling (Andrychowicz et al. 2017, hindsight experience replay) turns every
    sample into a success for the goal it reached, so no sample is wasted but nothing says how
    good an output was for the goal that was asked. The foresight term does: R scores the
    output against its commanded goal, and the learned value V(s_t) (``critic.ValueModel``,
    trained on the same returns) predicts it from the state, so A = R - V is a low-variance
    policy-gradient advantage (Williams 1992; Sutton et al. 2000). ``foresight_coef`` = 0 is pure
    hindsight relabelling; as it grows, J / foresight_coef tends to the policy gradient alone.
    N', N count the valid tokens of each mask.

    Args:
        relabelled_logprobs, relabelled_mask: ``(B', T')`` outputs under their achieved goals.
        logprobs, mask: ``(B, T)`` outputs under the goals they were sampled for (with grad).
        returns: ``(B,)`` or ``(B, T)`` return of each output's continuation (a terminal
            reward without discount is the same at every token).
        values: ``(B, T)`` V(s_t) from the value model; detached here.
    """
    hindsight = masked_mean(-relabelled_logprobs, relabelled_mask)
    if returns.dim() == 1:
        returns = returns[:, None].expand_as(logprobs)  # (B, T)
    advantages = (returns - values).detach()  # (B, T)
    foresight = masked_mean(-advantages * logprobs, mask)
    loss = hindsight + foresight_coef * foresight
    with torch.no_grad():
        stats = HindsightForesightStats(
            hindsight=hindsight.detach(),
            foresight=foresight.detach(),
            advantage=masked_mean(advantages, mask),
        )
    return loss, stats
