"""Policy-gradient losses for online RL on language models, as pure tensor functions.

Shapes: ``B`` completions in a batch, ``T`` response tokens (right-padded), ``V`` vocabulary.
A ``mask`` is ``(B, T)``, bool or 0/1 float: 1 on response tokens, 0 on padding. Entries at
padded positions reach neither a loss nor its gradient, even when they are inf or NaN.

Losses return ``(loss, stats)``: a scalar to minimise and a NamedTuple of detached scalar
tensors for logging (kept as tensors so logging forces no GPU sync until it asks).
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor

from rlhfkit import distributed
from rlhfkit.errors import ConfigError

Aggregation = Literal["token", "sequence", "sequence-sum"]
KLKind = Literal["k1", "k2", "k3"]


# --- masked reductions ---------------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over positions where ``mask`` is set (over all of them when ``dim`` is None)."""
    kept = torch.where(mask.bool(), x, torch.zeros_like(x))  # where, not x * mask: 0 * inf = NaN
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is set; 0 where no position is set."""
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` to zero mean and unit variance over the valid positions of the whole batch.

        x' = (x - mean) / sqrt(var + eps)        (+ mean again when ``shift_mean`` is False)

    ``mean`` and the (population) ``var`` are taken over valid positions only, so padding does
    not drag them; data-parallel, over every rank's positions. ``shift_mean=False`` rescales but
    keeps the mean, as done for rewards, whose level carries meaning (TRL's ``whiten_rewards``). Padding comes out as 0.
    """
    if distributed.active():  # the whole batch is every rank's rows
        mask_f = mask.to(x.dtype)
        count = distributed.sum_tensor(mask_f.sum()).clamp(min=1)
        mean = distributed.sum_tensor((x * mask_f).sum()) / count
        var = distributed.sum_tensor((((x - mean) ** 2) * mask_f).sum()) / count
    else:
        mean = masked_mean(x, mask)
        var = masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def aggregate(
    loss_per_token: Tensor, mask: Tensor, mode: Aggregation = "token", max_length: int | None = None
) -> Tensor:
    """Reduce a ``(B, T)`` per-token loss to a scalar.

    - ``"token"`` (default): sum over every valid token of the batch / number of valid tokens.
      Each token weighs the same, so a long completion is not under-weighted against a short
      one and its many tokens' mistakes are not averaged away (DAPO, Yu et al. 2025, §3.3;
      Dr. GRPO, Liu et al. 2025). The default because it is the unbiased policy-gradient
      average over sampled tokens and what current PPO/GRPO implementations use.
    - ``"sequence"``: mean over each completion's tokens, then mean over completions: the
      original GRPO objective, 1/G Σ_i 1/|o_i| Σ_t (Shao et al. 2024, eq. 3). A token of a
      short completion weighs more than one of a long completion.
    - ``"sequence-sum"``: sum over each completion's tokens / ``max_length``, then mean over
      completions: Dr. GRPO's unbiased form (Liu et al. 2025), dividing by a constant
      (e.g. the generation budget ``max_new_tokens``) so no length enters the gradient's scale.
    """
    if mode == "token":
        return masked_mean(loss_per_token, mask)
    if mode == "sequence":
        per_sequence = masked_mean(loss_per_token, mask, dim=-1)  # (B,)
        has_tokens = mask.bool().any(dim=-1)  # (B,) an empty completion has no mean to count
        return masked_mean(per_sequence, has_tokens)
    if mode == "sequence-sum":
        if max_length is None or max_length < 1:
            raise ConfigError(
                f"max_length={max_length!r} is needed by aggregation 'sequence-sum' as the "
                "constant divisor; pass the generation budget (max_new_tokens), a positive integer"
            )
        return (masked_sum(loss_per_token, mask, dim=-1) / max_length).mean()
    raise ConfigError(
        f"aggregation={mode!r} is not a loss aggregation; choose one of: "
        + ", ".join(get_args(Aggregation))
    )


# --- PPO -----------------------------------------------------------------------------------------


class PolicyStats(NamedTuple):
    """Detached diagnostics of one policy-loss evaluation."""

    clip_fraction: Tensor
    """Share of valid tokens where the clipped term won the max, so they get no gradient."""
    approx_kl: Tensor
    """k3 estimate of KL(pi_old || pi_new) per token: how far this update moved the policy."""


def ppo_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    aggregation: Aggregation = "token",
    max_length: int | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, PolicyStats]:
    """PPO's clipped surrogate, as a loss to minimise (Schulman et al. 2017, eq. 7).

        r_t  = pi(a_t | s_t) / pi_old(a_t | s_t)
        L_t  = -w_t min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t)

    ``w_t`` is 1 unless ``weights`` gives it: the truncated importance weights that correct for
    a rollout engine sampling from a slightly different distribution than ``pi_old`` as the
    trainer computes it (``truncated_importance_weights``).

    ``eps_low = clip_eps``; ``eps_high = clip_eps_high`` or ``clip_eps``. A larger upper bound is
    DAPO's "clip-higher" (Yu et al. 2025, §3.1: eps_low 0.2, eps_high 0.28): it lets unlikely
    tokens with positive advantage gain probability faster, which keeps entropy from collapsing.

    Args:
        logprobs: ``(B, T)`` log pi(a_t | s_t) under the policy being trained (with grad).
        old_logprobs: ``(B, T)`` the same under the policy that sampled the batch.
        advantages: ``(B, T)`` per-token advantages (sequence-level ones broadcast over tokens).
        mask: ``(B, T)`` response tokens.
        aggregation, max_length: how per-token losses become a scalar; see ``aggregate``.
        weights: ``(B, T)`` per-token weights w_t, no gradient; None for 1.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if clip_eps <= 0 or eps_high <= 0:
        raise ConfigError(
            f"clip_eps={clip_eps!r}, clip_eps_high={clip_eps_high!r}: clip ranges must be "
            "positive (0.2 is the usual value; DAPO uses 0.28 for the upper one)"
        )
    old_logprobs, advantages = old_logprobs.detach(), advantages.detach()
    # Padding gets log r = 0 before exp, so an inf there cannot turn into a NaN gradient.
    log_ratio = torch.where(mask.bool(), logprobs - old_logprobs, 0.0)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high)  # (B, T)
    per_token = torch.maximum(unclipped, clipped)  # (B, T)
    if weights is not None:
        per_token = per_token * weights.detach()
    loss = aggregate(per_token, mask, aggregation, max_length)

    with torch.no_grad():
        stats = PolicyStats(
            clip_fraction=masked_mean((clipped > unclipped).float(), mask),
            approx_kl=masked_mean(kl_estimate(old_logprobs, logprobs, "k3"), mask),
        )
    return loss, stats


def truncated_importance_weights(
    trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, cap: float
) -> Tensor:
    """Truncated importance sampling (TIS; Yao et al. 2025, "Your Efficient RL Framework
    Secretly Brings You Off-Policy RL Training"): per-token weights that correct the policy
    gradient for a sampler whose probabilities differ from the trainer's for the same weights
    (another engine, kernels or precision):

        w_t = min(pi_trainer(a_t | s_t) / pi_sampler(a_t | s_t), C)

    The cap C bounds the variance a rare token could add. ``(B, T)`` log-probs of the sampled
    tokens in, ``(B, T)`` weights out, no gradient, 1 on padding.
    """
    log_ratio = torch.where(mask.bool(), trainer_logprobs - sampler_logprobs, 0.0).detach()
    return torch.exp(log_ratio).clamp(max=cap)  # (B, T)


class ValueStats(NamedTuple):
    """Detached diagnostics of one value-loss evaluation."""

    clip_fraction: Tensor
    """Share of valid tokens where the clipped error was the larger (the max picked it)."""


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    aggregation: Aggregation = "token",
    max_length: int | None = None,
) -> tuple[Tensor, ValueStats]:
    """Clipped value loss, as in PPO implementations (OpenAI baselines ``ppo2``; Ziegler et al.
    2019, lm-human-preferences; detail 9 of Huang et al. 2022, "The 37 implementation details
    of proximal policy optimization"):

        V_clip = V_old + clip(V - V_old, -eps, eps)
        L_t    = 0.5 * max((V - R)^2, (V_clip - R)^2)

    The value may not move more than ``eps`` from its rollout-time estimate to lower the loss,
    mirroring the policy's clipped ratio.

    Args:
        values: ``(B, T)`` critic predictions being trained (with grad).
        old_values: ``(B, T)`` predictions at rollout time.
        returns: ``(B, T)`` regression targets (e.g. from ``advantages.gae``).
    """
    if clip_eps <= 0:
        raise ConfigError(
            f"clip_eps={clip_eps!r}: the value clip range must be positive (e.g. 0.2)"
        )
    valid = mask.bool()  # (B, T) padding set to 0 up front, so inf there cannot make a NaN gradient
    values = torch.where(valid, values, 0.0)
    old_values, returns = (torch.where(valid, t.detach(), 0.0) for t in (old_values, returns))
    values_clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)  # (B, T)
    error_unclipped = (values - returns) ** 2  # (B, T)
    error_clipped = (values_clipped - returns) ** 2  # (B, T)
    loss = 0.5 * aggregate(
        torch.maximum(error_unclipped, error_clipped), mask, aggregation, max_length
    )
    with torch.no_grad():
        stats = ValueStats(
            clip_fraction=masked_mean((error_clipped > error_unclipped).float(), mask)
        )
    return loss, stats


# --- KL and entropy ------------------------------------------------------------------------------


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: KLKind = "k1") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi.

    Schulman, "Approximating KL divergence" (2020, joschu.net/blog/kl-approx.html). With
    ``x ~ pi`` and ``r = pi_ref(x) / pi(x)``, so ``log r = ref_logprobs - logprobs``:

        k1 = -log r                  unbiased; a single sample can be negative; high variance.
        k2 = 0.5 (log r)^2           biased (its mean is an f-divergence that matches KL to
                                     second order as pi_ref -> pi); never negative; low variance.
        k3 = (r - 1) - log r         unbiased (E_pi[r] = 1) and never negative (log r <= r - 1);
                                     low variance. GRPO's KL loss term (Shao et al. 2024, eq. 4).

    All three are 0 where the log-probabilities agree. Direction matters: swapping the arguments
    estimates KL(pi_ref || pi) only if the tokens were sampled from pi_ref. As a reward penalty
    (PPO, Ziegler et al. 2019) the estimate is detached and k1 is customary; as a loss term with
    gradient (GRPO) k3 is. k3 takes exp(log r): a token far less likely under pi than pi_ref
    gives a large value (finite in float32 while log r < 88).

    Args:
        logprobs: ``(B, T)`` log pi(x_t) of the sampled tokens under the sampling policy.
        ref_logprobs: ``(B, T)`` log pi_ref(x_t) of the same tokens.
    Returns:
        ``(B, T)`` per-token estimates (padding not masked: reduce with ``masked_mean``).
    """
    log_ratio = ref_logprobs - logprobs  # (B, T) log r
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio  # expm1: exact near r = 1, where most tokens are
    raise ConfigError(
        f"kl kind={kind!r} is not a KL estimator; choose one of: " + ", ".join(get_args(KLKind))
    )


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy H = -Σ_v p_v log p_v of the softmax over the last axis, ``(..., V) -> (...)``.

    Computed from ``log_softmax`` (stable for any logit scale). Tokens with zero probability
    (logit -inf, e.g. a masked vocabulary) contribute 0, in value and in gradient.
    """
    log_p = torch.log_softmax(logits, dim=-1)  # (..., V)
    p = log_p.exp()  # (..., V)
    # 0 * log 0 := 0; fill before multiplying so the backward pass never sees 0 * -inf.
    log_p = log_p.masked_fill(p == 0, 0.0)
    return -(p * log_p).sum(dim=-1)
