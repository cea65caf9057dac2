"""Implicit Language Q-Learning (Snell et al. 2022): the loss terms and the decoding perturbation.

Shapes: B completions, N action positions (token t of a sequence is the action chosen in state
s_t = every token before it), V the vocabulary. ``mask`` (B, N) is 1 on completion tokens, which
are contiguous, so the position after a completion's last token is terminal.

  TD target     y_t     = r_t + gamma * V(s_{t+1}) * [s_{t+1} is not terminal]   (no gradient)
  Q loss        L_Q     = sum_i mean_t (Q_i(s_t, a_t) - y_t)^2                   (twin heads i = 1, 2)
  expectile     L_V     = mean_t |tau - [u_t < 0]| * u_t^2,  u_t = min_i Qhat_i(s_t, a_t) - V(s_t)
                          with Qhat the target (Polyak-averaged) heads, so V tracks their
                          tau-expectile: the value of the best in-support actions, not the data's mean
  CQL           L_CQL   = sum_i mean_t [logsumexp_a Q_i(s_t, a) - Q_i(s_t, a_t)]
                          (pushes down the Q of tokens the data never took)
  ILQL          L       = L_Q + L_V + alpha * L_CQL
  decoding      logits' = logits + beta * (Q(s, .) - V(s))
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from rlhfkit.losses.policy import masked_mean


class IlqlStats(NamedTuple):
    q_loss: Tensor
    v_loss: Tensor
    cql_loss: Tensor
    q_mean: Tensor  # mean Q of the taken actions
    v_mean: Tensor
    advantage: Tensor  # mean Q - V of the taken actions


def terminal_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """(B,) sequence rewards placed on each completion's last token: (B, N), 0 elsewhere."""
    last = mask.long().cumsum(dim=1).argmax(dim=1)  # (B,) the last masked position
    placed = torch.zeros(mask.shape, dtype=rewards.dtype, device=rewards.device)
    return placed.scatter_(1, last[:, None], rewards[:, None]) * mask


def td_target(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """y_t = r_t + gamma * V(s_{t+1}), V = 0 past the completion's end: (B, N), no gradient."""
    values = values.detach()
    next_values = torch.zeros_like(values)
    next_values[:, :-1] = values[:, 1:] * mask[:, 1:]
    return rewards + gamma * next_values


def q_loss(q_taken: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared TD error of one Q head on the taken actions."""
    return masked_mean((q_taken - target) ** 2, mask)


def expectile_loss(target_q: Tensor, values: Tensor, mask: Tensor, tau: float) -> Tensor:
    """Asymmetric squared error: V under the target Q weighs tau, V over it 1 - tau."""
    diff = target_q.detach() - values
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return masked_mean(weight * diff**2, mask)


def cql_loss(q_all: Tensor, actions: Tensor, mask: Tensor) -> Tensor:
    """Cross-entropy of the softmax over Q (B, N, V) against the taken actions (B, N)."""
    taken = q_all.gather(-1, actions[..., None]).squeeze(-1)
    return masked_mean(torch.logsumexp(q_all, dim=-1) - taken, mask)


def ilql_loss(
    q1_all: Tensor,
    q2_all: Tensor,
    target_q: Tensor,
    values: Tensor,
    actions: Tensor,
    rewards: Tensor,
    mask: Tensor,
    gamma: float,
    tau: float,
    cql_weight: float,
) -> tuple[Tensor, IlqlStats]:
    """L_Q + L_V + cql_weight * L_CQL (see the module docstring).

    ``q1_all``, ``q2_all``: (B, N, V) the online heads; ``target_q``: (B, N) min of the target
    heads at the taken actions; ``values``: (B, N) V(s_t); ``rewards``: (B, N) per token.
    """
    target = td_target(rewards, values, mask, gamma)
    q1 = q1_all.gather(-1, actions[..., None]).squeeze(-1)
    q2 = q2_all.gather(-1, actions[..., None]).squeeze(-1)
    loss_q = q_loss(q1, target, mask) + q_loss(q2, target, mask)
    loss_v = expectile_loss(target_q, values, mask, tau)
    loss_cql = cql_loss(q1_all, actions, mask) + cql_loss(q2_all, actions, mask)
    loss = loss_q + loss_v + cql_weight * loss_cql
    with torch.no_grad():
        q_min = torch.minimum(q1, q2)
        stats = IlqlStats(
            loss_q,
            loss_v,
            loss_cql,
            masked_mean(q_min, mask),
            masked_mean(values, mask),
            masked_mean(q_min - values, mask),
        )
    return loss, stats


def polyak(target: Tensor, online: Tensor, alpha: float) -> Tensor:
    """The target network's next weights: (1 - alpha) * target + alpha * online."""
    return (1.0 - alpha) * target + alpha * online


def advantage_logits(logits: Tensor, q: Tensor, values: Tensor, beta: float) -> Tensor:
    """logits + beta * (Q(s, .) - V(s)): (..., V) logits and Q, (...) values."""
    return logits + beta * (q - values[..., None])
