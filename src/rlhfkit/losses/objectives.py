"""Each online RL algorithm's policy objective as one registered pure function.

An objective turns one micro-batch's log-probabilities and advantages into the scalar a loop
minimises; the loop looks it up by name (``get_objective("grpo")``) and adds nothing to it but
the accumulation weight. A plug-in registers its own, as verl registers policy losses::

    @register_objective("mine")
    def mine(batch: ObjectiveInputs, settings: ObjectiveSettings) -> tuple[Tensor, ObjectiveStats]:
        ...

PPO's critic has its own objective, the clipped value loss (``losses.policy.value_loss``).
Shapes: ``b`` completions of ``T`` response tokens, right-padded; masks are ``(b, T)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from rlhfkit.errors import ConfigError, RlhfkitError, did_you_mean
from rlhfkit.losses import policy
from rlhfkit.losses.policy import Aggregation, KLKind


@dataclass(frozen=True)
class ObjectiveInputs:
    """One micro-batch as an objective sees it."""

    logprobs: Tensor  # (b, T) log pi_theta(a_t | s_t), with gradient
    old_logprobs: Tensor  # (b, T) log pi_old(a_t | s_t) of the policy that sampled the batch
    advantages: Tensor  # (b, T) per-token advantages, 0 on padding
    mask: Tensor  # (b, T) 1 on response tokens
    ref_logprobs: Tensor | None = None  # (b, T) log pi_ref; None: no KL term in the loss
    kl_coef: float = 0.0  # beta this step (an adaptive controller moves it)
    is_weights: Tensor | None = None  # (b, T) truncated importance weights; None: all 1


@dataclass(frozen=True)
class ObjectiveSettings:
    """An objective's fixed hyperparameters; each reads the ones it uses."""

    clip_eps: float = 0.2
    """Ratio clip range, eps_low."""
    clip_eps_high: float | None = None
    """Upper clip range (DAPO's clip-higher); None uses clip_eps."""
    kl_estimator: KLKind = "k3"
    """Per-token KL estimator of the loss term (Schulman 2020)."""
    aggregation: Aggregation = "token"
    """How per-token losses become one number (see ``losses.policy.aggregate``)."""
    max_length: int | None = None
    """The constant divisor of ``sequence-sum`` aggregation: the generation budget."""


class ObjectiveStats(NamedTuple):
    """Detached diagnostics of one objective evaluation."""

    policy_loss: Tensor  # the clipped surrogate alone
    kl_loss: Tensor  # the aggregated KL term before its coefficient (0 without one)
    clip_fraction: Tensor  # share of valid tokens where the clipped term won
    approx_kl: Tensor  # k3 KL(pi_old || pi_theta) per token: how far this update moved


Objective = Callable[[ObjectiveInputs, ObjectiveSettings], tuple[Tensor, ObjectiveStats]]
_OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str) -> Callable[[Objective], Objective]:
    """Register ``fn(inputs, settings) -> (loss, stats)`` under ``name``; returns it unchanged."""

    def decorate(fn: Objective) -> Objective:
        if name in _OBJECTIVES:
            raise RlhfkitError(f"objective {name!r} is already registered; pick another name")
        _OBJECTIVES[name] = fn
        return fn

    return decorate


def objective_names() -> list[str]:
    """Names of the registered objectives, sorted."""
    return sorted(_OBJECTIVES)


def get_objective(name: str) -> Objective:
    """The objective registered as ``name``; a ConfigError with the closest name otherwise."""
    if name in _OBJECTIVES:
        return _OBJECTIVES[name]
    raise ConfigError(
        f"objective={name!r} is not a registered objective; "
        f"{did_you_mean(name, _OBJECTIVES)}choose one of: "
        f"{', '.join(objective_names())}"
    )


def _with_kl(
    batch: ObjectiveInputs,
    settings: ObjectiveSettings,
    eps_high: float | None,
    ratio_logprobs: Tensor | None = None,
) -> tuple[Tensor, ObjectiveStats]:
    """L = L_clip(eps_low, eps_high) + beta agg(KL_k(pi_theta || pi_ref)), both aggregated alike.

    ``ratio_logprobs`` (default ``batch.logprobs``) are what the clipped ratio is taken of, so
    GSPO can clip its sequence-level ratio; the KL term always reads the per-token log-probs.
    """
    loss, stats = policy.ppo_clip_loss(
        batch.logprobs if ratio_logprobs is None else ratio_logprobs,
        batch.old_logprobs,
        batch.advantages,
        batch.mask,
        settings.clip_eps,
        eps_high,
        settings.aggregation,
        settings.max_length,
        batch.is_weights,
    )
    kl_loss = torch.zeros(())
    if batch.ref_logprobs is not None:
        kl_loss = policy.aggregate(
            policy.kl_estimate(batch.logprobs, batch.ref_logprobs, settings.kl_estimator),
            batch.mask,
            settings.aggregation,
            settings.max_length,
        )
    return loss + batch.kl_coef * kl_loss, ObjectiveStats(
        loss.detach(), kl_loss.detach(), stats.clip_fraction, stats.approx_kl
    )


@register_objective("grpo")
def grpo_objective(
    batch: ObjectiveInputs, settings: ObjectiveSettings
) -> tuple[Tensor, ObjectiveStats]:
    """GRPO's objective (Shao et al. 2024, DeepSeekMath, eq. 3), as a loss to minimise:

        r_t = pi_theta(o_t) / pi_old(o_t)
        L   = agg_t[ -w_t min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t) ]
              + beta agg_t[ KL_k(pi_theta || pi_ref)_t ]

    w_t = 1, or with ``is_weights`` the truncated importance weights of a rollout engine's
    samples (``policy.truncated_importance_weights``).

    ``agg`` is the aggregation: GRPO's per-completion mean (``sequence``), Dr. GRPO's sum over a
    constant (``sequence-sum``, Liu et al. 2025) or DAPO's token mean (``token``, Yu et al. 2025,
    with clip-higher eps_high > eps_low). KL_k is GRPO's k3 by default; the term is left out
    when the KL goes into the reward instead (``ref_logprobs`` None).
    """
    return _with_kl(batch, settings, settings.clip_eps_high)


@register_objective("ppo")
def ppo_objective(
    batch: ObjectiveInputs, settings: ObjectiveSettings
) -> tuple[Tensor, ObjectiveStats]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise:

        L = agg_t[ -w_t min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) ]    (+ beta agg_t[KL_k])

    With InstructGPT's KL in the reward (Ziegler et al. 2019; Ouyang et al. 2022) the penalty
    already sits in A_t and ``ref_logprobs`` is None; the KL loss term is the GRPO-style option.
    The clip is symmetric: ``clip_eps_high`` is GRPO's.
    """
    return _with_kl(batch, settings, None)


@register_objective("gspo")
def gspo_objective(
    batch: ObjectiveInputs, settings: ObjectiveSettings
) -> tuple[Tensor, ObjectiveStats]:
    """GSPO, Group Sequence Policy Optimization (Zheng et al. 2025, eq. 5-7 and GSPO-token,
    eq. 13), as a loss to minimise:

        s_i   = (pi_theta(y_i) / pi_old(y_i))^(1/|y_i|) = exp(1/|y_i| Σ_t log r_i,t)
        s_i,t = sg[s_i] pi_theta(y_i,t) / sg[pi_theta(y_i,t)]
        L     = agg_t[ -min(s_i,t A_i,t, clip(s_i,t, 1 - eps_low, 1 + eps_high) A_i,t) ]
                + beta agg_t[ KL_k(pi_theta || pi_ref)_t ]

    The importance ratio of the whole sequence (its per-token geometric mean) replaces GRPO's
    per-token ratios, so one noisy token cannot clip or blow up its sequence's update, and the
    clip acts on sequences. s_i,t equals s_i in value and carries the gradient s_i grad log pi
    to each token, so with one advantage per sequence (GRPO's, RLOO's) this is GSPO exactly.
    Sequence ratios sit much closer to 1 than token ratios: the paper clips at eps_low 3e-4,
    eps_high 4e-4, and averages each sequence first (aggregation ``sequence``).
    """
    valid = batch.mask.bool()  # (b, T)
    log_ratio = torch.where(valid, batch.logprobs - batch.old_logprobs.detach(), 0.0)  # (b, T)
    sequence_log_ratio = policy.masked_mean(log_ratio, valid, dim=-1).detach()  # (b,) log s_i
    # log s_i,t - log pi_old: the value of log s_i, the gradient of log pi_theta(y_i,t)
    ratio_logprobs = (
        batch.old_logprobs.detach()
        + sequence_log_ratio[:, None]
        + (batch.logprobs - batch.logprobs.detach())
    )  # (b, T)
    return _with_kl(batch, settings, settings.clip_eps_high, ratio_logprobs)
