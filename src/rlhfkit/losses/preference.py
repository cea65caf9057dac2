"""Offline losses on fixed data (demonstrations, ratings, preferences), as pure tensor functions.

Shapes: ``B`` examples in a batch, ``T`` completion tokens (right-padded). Supervised fine-tuning
takes per-token log-probabilities ``(B, T)`` with a ``mask`` ``(B, T)`` (bool or 0/1 float, 1 on
completion tokens); entries at padded positions reach neither the loss nor its gradient, even
when they are inf or NaN. Every other loss takes one scalar per example ``(B,)``: a reward
model's score, or a completion's summed log-probability log pi(y | x) under the policy or the
reference (``models.token_logprobs`` summed over the completion mask).

Every loss takes an optional per-example ``weight`` ``(B,)`` (non-negative, e.g. to balance
classes) and reduces as sum_b w_b l_b / sum_b w_b: a weight of 0 removes a row, scaling all
weights changes nothing, and ``None`` is the plain mean. The logged stats are means under the
same weights. Work is done in float32 whatever the input dtype.

Losses return ``(loss, stats)``: a scalar to minimise and a NamedTuple of detached scalar
tensors for logging (kept as tensors so logging forces no GPU sync until it asks).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rlhfkit.errors import ConfigError, DataError
from rlhfkit.losses.policy import masked_sum

# Divisor floor: a batch whose weights are all 0 gives a loss of 0, not 0/0 = NaN.
_TINY = torch.finfo(torch.float32).tiny


# --- weighted reduction and checks ---------------------------------------------------------------


def _weighted_mean(
    per_example: Tensor, weight: Tensor | None, rows: Tensor | None = None
) -> Tensor:
    """sum(w * x) / sum(w) over ``rows`` (all when None), w = 1 when ``weight`` is None; 0 if empty.

    Rows of weight 0 are left out with ``where``, not multiplied by 0, so an inf or NaN loss
    there does not reach the result.
    """
    w = torch.ones_like(per_example) if weight is None else weight.float()  # (B,)
    if rows is not None:
        w = torch.where(rows, w, 0.0)
    return masked_sum(w * per_example, w != 0) / w.sum().clamp(min=_TINY)


def _check_examples(**per_example: Tensor | None) -> None:
    """Every tensor given (None skipped) is one value per example, ``(B,)`` with the same B:
    broadcasting a ``(B, 1)`` against a ``(B,)`` would silently build a ``(B, B)`` loss."""
    shapes = {name: tuple(t.shape) for name, t in per_example.items() if t is not None}
    first = next(iter(shapes.values()))
    if len(first) != 1 or any(shape != first for shape in shapes.values()):
        raise ValueError(f"expected one value per example, all of shape (B,); got {shapes}")


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ConfigError(
            f"beta={beta!r} must be > 0: it scales the log-ratio to the reference "
            "(0.1 is the usual value for DPO and KTO)"
        )


# --- supervised fine-tuning ----------------------------------------------------------------------


class SFTStats(NamedTuple):
    """Detached diagnostics of one SFT-loss evaluation."""

    nll: Tensor
    """The loss: mean negative log-likelihood per completion token (weighted when weights are)."""
    perplexity: Tensor
    """exp(nll): the model's effective number of equally likely choices per token."""
    tokens: Tensor
    """Completion tokens that counted (rows of weight 0 left out)."""


def sft_loss(
    logprobs: Tensor, mask: Tensor, weight: Tensor | None = None
) -> tuple[Tensor, SFTStats]:
    """Negative log-likelihood of demonstrations, on completion tokens only:

        L = -Σ_{b,t} w_b m_bt log pi(y_bt | x_b, y_b<t) / Σ_{b,t} w_b m_bt

    A token-level mean over the whole batch, so each completion token weighs the same, as in
    the pre-training objective; a per-sequence mean would make a token of a short completion
    count more than one of a long completion. Prompt tokens are masked out: the model learns to
    answer, not to predict the prompts.

    Args:
        logprobs: ``(B, T)`` log pi of each target token (``models.token_logprobs``), with grad.
        mask: ``(B, T)`` completion tokens.
        weight: ``(B,)`` per-example weights; every token of row b weighs ``w_b``.
    """
    if logprobs.shape != mask.shape or logprobs.dim() != 2:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and mask {tuple(mask.shape)} must both be (B, T)"
        )
    if weight is not None and tuple(weight.shape) != (logprobs.shape[0],):
        raise ValueError(f"weight must be (B,) = ({logprobs.shape[0]},); got {tuple(weight.shape)}")
    nll = -logprobs.float()  # (B, T)
    row_weight = torch.ones(nll.shape[0], device=nll.device) if weight is None else weight.float()
    token_weight = row_weight[:, None].expand_as(nll)  # (B, T)
    counted = mask.bool() & (token_weight != 0)  # (B, T) a weight-0 row's tokens are left out
    total_weight = masked_sum(token_weight, counted).clamp(min=_TINY)  # () 0 tokens: loss 0
    loss = masked_sum(token_weight * nll, counted) / total_weight
    with torch.no_grad():
        stats = SFTStats(nll=loss.detach(), perplexity=loss.detach().exp(), tokens=counted.sum())
    return loss, stats


# --- reward models -------------------------------------------------------------------------------


class PairStats(NamedTuple):
    """Detached diagnostics of a reward model on pairs (first text vs second)."""

    accuracy: Tensor
    """Share of pairs where the first (chosen) text scores strictly higher."""
    margin: Tensor
    """Mean of r_chosen - r_rejected."""
    chosen: Tensor
    """Mean reward of the chosen texts."""
    rejected: Tensor
    """Mean reward of the rejected texts."""


def _pair_stats(chosen: Tensor, rejected: Tensor, weight: Tensor | None) -> PairStats:
    chosen, rejected = chosen.detach(), rejected.detach()
    return PairStats(
        accuracy=_weighted_mean((chosen > rejected).float(), weight),
        margin=_weighted_mean(chosen - rejected, weight),
        chosen=_weighted_mean(chosen, weight),
        rejected=_weighted_mean(rejected, weight),
    )


def bradley_terry_loss(
    chosen: Tensor, rejected: Tensor, margin: Tensor | None = None, weight: Tensor | None = None
) -> tuple[Tensor, PairStats]:
    """Pairwise reward-model loss under the Bradley-Terry model (Bradley & Terry 1952):

        P(chosen > rejected) = sigmoid(r_c - r_r)
        L = -log sigmoid(r_c - r_r - m)

    The negative log-likelihood of the human choice (InstructGPT, Ouyang et al. 2022, eq. 1).
    The optional margin ``m >= 0`` asks for a larger gap on pairs the raters found clearly
    different (Llama 2, Touvron et al. 2023, eq. 2, with m from the rated degree of preference).
    Only differences of rewards enter, so the rewards' level is free: normalise them after
    training if a consumer needs a fixed offset.

    Args:
        chosen, rejected: ``(B,)`` scalar rewards of the preferred and the other text (with grad).
        margin: ``(B,)`` required gap per pair; 0 when None.
    """
    _check_examples(chosen=chosen, rejected=rejected, margin=margin, weight=weight)
    chosen, rejected = chosen.float(), rejected.float()
    logits = chosen - rejected  # (B,)
    if margin is not None:
        logits = logits - margin.detach().float()
    loss = _weighted_mean(-F.logsigmoid(logits), weight)  # logsigmoid: no overflow for any gap
    with torch.no_grad():
        stats = _pair_stats(chosen, rejected, weight)
    return loss, stats


class RatingStats(NamedTuple):
    """Detached diagnostics of a rating regression."""

    mse: Tensor
    """Mean squared error (the loss)."""
    mae: Tensor
    """Mean absolute error, in rating units: easier to read than the MSE."""


def rating_loss(
    predicted: Tensor, target: Tensor, weight: Tensor | None = None
) -> tuple[Tensor, RatingStats]:
    """Regression of a reward model on absolute ratings (e.g. a text's mean human rating):

        L = (r - y)^2

    Unlike the pairwise losses it pins the rewards' level and scale to the rating scale, using
    texts rated alone rather than in pairs.

    Args:
        predicted: ``(B,)`` rewards (with grad).
        target: ``(B,)`` ratings.
    """
    _check_examples(predicted=predicted, target=target, weight=weight)
    error = predicted.float() - target.detach().float()  # (B,)
    loss = _weighted_mean(error**2, weight)
    with torch.no_grad():
        stats = RatingStats(mse=loss.detach(), mae=_weighted_mean(error.detach().abs(), weight))
    return loss, stats


def soft_preference_loss(
    chosen: Tensor, rejected: Tensor, target: Tensor, weight: Tensor | None = None
) -> tuple[Tensor, PairStats]:
    """Bradley-Terry with a soft label: the share of raters who would prefer the first text.

        p = sigmoid(r_1 - r_2)
        L = -(y log p + (1 - y) log(1 - p))

    When each text was rated by several people, a hard "first wins" label throws away how
    much they agreed. ``y`` in [0, 1] keeps it (``rater_preference_probability`` builds it from
    the two texts' ratings), and the loss is least where p = y, i.e. r_1 - r_2 = logit(y), so a
    near tie asks for near-equal rewards instead of a confident gap. With y = 1 it is
    ``bradley_terry_loss``. Computed with ``binary_cross_entropy_with_logits`` (log-sum-exp form,
    no overflow for large gaps).

    Args:
        chosen, rejected: ``(B,)`` rewards of the first and the second text (with grad).
        target: ``(B,)`` probability in [0, 1] that a random rater prefers the first text.
    """
    _check_examples(chosen=chosen, rejected=rejected, target=target, weight=weight)
    chosen, rejected = chosen.float(), rejected.float()
    per_pair = F.binary_cross_entropy_with_logits(
        chosen - rejected, target.detach().float(), reduction="none"
    )  # (B,)
    loss = _weighted_mean(per_pair, weight)
    with torch.no_grad():
        stats = _pair_stats(chosen, rejected, weight)
    return loss, stats


def rater_preference_probability(ratings_a: Sequence[float], ratings_b: Sequence[float]) -> float:
    """P(a rating of text a > a rating of text b) + 0.5 P(equal), over all pairs of ratings.

    The soft label for ``soft_preference_loss``: the chance that a rater drawn from a's raters
    rates a higher than one drawn from b's rates b, ties split evenly. This is the Mann-Whitney
    U statistic divided by n m (the AUC separating the two sets of ratings). Exact, by
    sorting b and counting with binary search: O((n + m) log m). Symmetric by construction:
    p(a, b) + p(b, a) = 1.
    """
    for name, ratings in (("ratings_a", ratings_a), ("ratings_b", ratings_b)):
        if len(ratings) == 0:
            raise DataError(
                f"{name} is empty: each text needs at least one rating to compare; "
                "drop unrated texts before building pairs"
            )
        if not all(math.isfinite(r) for r in ratings):
            raise DataError(f"{name}={list(ratings)!r} holds a non-finite rating; fix or drop it")
    sorted_b = sorted(ratings_b)
    wins = ties = 0
    for rating in ratings_a:
        below = bisect.bisect_left(sorted_b, rating)
        wins += below
        ties += bisect.bisect_right(sorted_b, rating) - below
    return (wins + 0.5 * ties) / (len(ratings_a) * len(ratings_b))


# --- direct preference optimisation --------------------------------------------------------------


class PreferenceStats(NamedTuple):
    """Detached diagnostics of DPO / IPO: implicit rewards beta * log(pi / pi_ref)."""

    chosen_reward: Tensor
    """Mean beta * (log pi - log pi_ref) of the chosen completions."""
    rejected_reward: Tensor
    """The same for the rejected completions."""
    margin: Tensor
    """Mean chosen minus rejected implicit reward."""
    accuracy: Tensor
    """Share of pairs whose chosen completion has the higher implicit reward."""


def _preference_stats(
    chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float, weight: Tensor | None
) -> PreferenceStats:
    chosen_reward = beta * chosen_logratio.detach()  # (B,)
    rejected_reward = beta * rejected_logratio.detach()  # (B,)
    return PreferenceStats(
        chosen_reward=_weighted_mean(chosen_reward, weight),
        rejected_reward=_weighted_mean(rejected_reward, weight),
        margin=_weighted_mean(chosen_reward - rejected_reward, weight),
        accuracy=_weighted_mean((chosen_reward > rejected_reward).float(), weight),
    )


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
) -> tuple[Tensor, PreferenceStats]:
    """Direct Preference Optimisation (Rafailov et al. 2023, eq. 7):

        h = beta * ((log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r)))
        L = -(1 - eps) log sigmoid(h) - eps log sigmoid(-h)

    Bradley-Terry on the implicit reward beta * log(pi / pi_ref): its optimum is the policy
    that maximises that reward under a KL(pi || pi_ref) penalty of weight beta, without a
    reward model or sampling. ``eps`` > 0 is conservative DPO (Mitchell 2023, "A note on DPO
    with noisy preferences"): it assumes each label is flipped with probability eps, which
    bounds how far h is pushed, since the loss is least at h = log((1 - eps) / eps).

    Args:
        policy_chosen, policy_rejected: ``(B,)`` summed log pi(y | x) of the completions (grad).
        ref_chosen, ref_rejected: ``(B,)`` the same under the frozen reference.
        beta: strength of the KL penalty (0.1 is usual; smaller lets pi move further).
        label_smoothing: eps in [0, 0.5); 0 is plain DPO.
    """
    _check_examples(
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
        weight=weight,
    )
    _check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ConfigError(
            f"label_smoothing={label_smoothing!r} must lie in [0, 0.5): the assumed "
            "share of flipped labels (0 for plain DPO, e.g. 0.1 for noisy labels)"
        )
    chosen_logratio = policy_chosen.float() - ref_chosen.detach().float()  # (B,)
    rejected_logratio = policy_rejected.float() - ref_rejected.detach().float()  # (B,)
    h = beta * (chosen_logratio - rejected_logratio)  # (B,)
    per_pair = -(1.0 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    loss = _weighted_mean(per_pair, weight)
    with torch.no_grad():
        stats = _preference_stats(chosen_logratio, rejected_logratio, beta, weight)
    return loss, stats


def ipo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
    weight: Tensor | None = None,
) -> tuple[Tensor, PreferenceStats]:
    """Identity Preference Optimisation (Azar et al. 2023, eq. 17):

        h' = (log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))
        L  = (h' - 1 / (2 beta))^2

    A squared loss that regresses the log-ratio gap to a finite target, where DPO's log-sigmoid
    keeps pushing it apart on deterministic preferences and so can drift far from pi_ref.
    beta (the paper's tau) plays the role of the KL weight: smaller beta, larger target gap.

    Callers pass per-token *average* log-probabilities (summed log pi over the completion mask
    divided by its length), as the common implementations (TRL) do: on summed log-probs the
    squared loss, and so the meaning of its fixed target, scales with completion length.

    Args:
        policy_chosen, policy_rejected: ``(B,)`` mean per-token log pi(y | x) (with grad).
        ref_chosen, ref_rejected: ``(B,)`` the same under the frozen reference.
        beta: regularisation strength tau (e.g. 0.1).
    """
    _check_examples(
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
        weight=weight,
    )
    _check_beta(beta)
    chosen_logratio = policy_chosen.float() - ref_chosen.detach().float()  # (B,)
    rejected_logratio = policy_rejected.float() - ref_rejected.detach().float()  # (B,)
    gap = chosen_logratio - rejected_logratio  # (B,) h'
    loss = _weighted_mean((gap - 1.0 / (2.0 * beta)) ** 2, weight)
    with torch.no_grad():
        stats = _preference_stats(chosen_logratio, rejected_logratio, beta, weight)
    return loss, stats


# --- KTO -----------------------------------------------------------------------------------------


class KTOStats(NamedTuple):
    """Detached diagnostics of one KTO-loss evaluation."""

    desirable_reward: Tensor
    """Mean beta * (log pi - log pi_ref) over desirable rows; 0 when the batch has none."""
    undesirable_reward: Tensor
    """The same over undesirable rows; 0 when the batch has none."""
    kl_baseline: Tensor
    """The reference point z0 used (after clamping at 0)."""
    loss: Tensor
    """The loss value."""


def kto_kl_baseline(policy_mismatched: Tensor, ref_mismatched: Tensor) -> Tensor:
    """KTO's reference point z0: a batch estimate of KL(pi || pi_ref), detached, clamped at 0.

        z0 = max(0, mean_b (log pi(y'_b | x_b) - log pi_ref(y'_b | x_b)))

    over *mismatched* pairs: each prompt x_b with another row's completion y'_b, so the
    estimate is not the reward of the completions being judged. Build them by shifting the
    completions by one within the batch, (x_1, y_B), (x_2, y_1), ..., (x_B, y_{B-1}) (as TRL
    does; needs B >= 2), and score them under no_grad: z0 carries no gradient (Ethayarajh et
    al. 2024). Under data parallelism, average the per-process means before clamping.

    Args:
        policy_mismatched, ref_mismatched: ``(B,)`` summed log-probs of the mismatched completions.
    """
    _check_examples(policy_mismatched=policy_mismatched, ref_mismatched=ref_mismatched)
    logratio = policy_mismatched.detach().float() - ref_mismatched.detach().float()  # (B,)
    return logratio.mean().clamp(min=0.0)


def kto_loss(
    policy: Tensor,
    ref: Tensor,
    desirable: Tensor,
    beta: float,
    kl_baseline: Tensor,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    weight: Tensor | None = None,
) -> tuple[Tensor, KTOStats]:
    """Kahneman-Tversky Optimisation (Ethayarajh et al. 2024, eq. 7), from unpaired thumbs up/down:

        r = log pi(y | x) - log pi_ref(y | x)
        L = lambda_D (1 - sigmoid(beta (r - z0)))     for a desirable y
        L = lambda_U (1 - sigmoid(beta (z0 - r)))     for an undesirable y

    Prospect theory's value function: a completion gains from being more likely than the
    reference point z0 (the policy's KL to pi_ref, ``kto_kl_baseline``) if desirable, and
    from being less likely if not; the sigmoid saturates, so outliers pull little. The paper
    advises lambda_D n_D / (lambda_U n_U) in [1, 4/3], with n_D, n_U the counts of each kind,
    to balance imbalanced data.

    Args:
        policy: ``(B,)`` summed log pi(y | x) of each completion (with grad).
        ref: ``(B,)`` the same under the frozen reference.
        desirable: ``(B,)`` bool, True where the completion was judged desirable.
        beta: sharpness of the value function (0.1 is usual).
        kl_baseline: scalar z0 (detached and clamped at 0 here too).
        desirable_weight, undesirable_weight: lambda_D and lambda_U.
    """
    _check_examples(policy=policy, ref=ref, desirable=desirable, weight=weight)
    _check_beta(beta)
    if desirable.dtype != torch.bool:
        raise ValueError(f"desirable must be a bool tensor; got dtype {desirable.dtype}")
    if not (desirable_weight > 0 and undesirable_weight > 0):
        raise ConfigError(
            f"desirable_weight={desirable_weight!r}, undesirable_weight="
            f"{undesirable_weight!r}: both must be > 0 (1.0 each when balanced)"
        )
    logratio = policy.float() - ref.detach().float()  # (B,) r
    z0 = kl_baseline.detach().float().clamp(min=0.0)  # ()
    per_example = torch.where(
        desirable,
        desirable_weight * (1.0 - torch.sigmoid(beta * (logratio - z0))),
        undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - logratio))),
    )  # (B,)
    loss = _weighted_mean(per_example, weight)
    with torch.no_grad():
        reward = beta * logratio.detach()  # (B,)
        stats = KTOStats(
            desirable_reward=_weighted_mean(reward, weight, rows=desirable),
            undesirable_reward=_weighted_mean(reward, weight, rows=~desirable),
            kl_baseline=z0,
            loss=loss.detach(),
        )
    return loss, stats


# --- reference-free preference losses: ORPO, SimPO, CPO ------------------------------------------


class ReferenceFreeStats(NamedTuple):
    """Detached diagnostics of ORPO / SimPO / CPO: implicit rewards beta * log pi, no reference."""

    chosen_reward: Tensor
    """Mean beta * log pi(y_c) (per-token mean log-prob for ORPO and SimPO, summed for CPO)."""
    rejected_reward: Tensor
    """The same for the rejected completions."""
    margin: Tensor
    """Mean chosen minus rejected implicit reward."""
    accuracy: Tensor
    """Share of pairs whose chosen completion has the higher implicit reward."""
    nll: Tensor
    """Mean per-token negative log-likelihood of the chosen completions."""


def _reference_free_stats(
    chosen: Tensor, rejected: Tensor, chosen_nll: Tensor, beta: float, weight: Tensor | None
) -> ReferenceFreeStats:
    chosen_reward, rejected_reward = beta * chosen.detach(), beta * rejected.detach()  # (B,)
    return ReferenceFreeStats(
        chosen_reward=_weighted_mean(chosen_reward, weight),
        rejected_reward=_weighted_mean(rejected_reward, weight),
        margin=_weighted_mean(chosen_reward - rejected_reward, weight),
        accuracy=_weighted_mean((chosen_reward > rejected_reward).float(), weight),
        nll=_weighted_mean(chosen_nll.detach(), weight),
    )


def log_odds(mean_logprob: Tensor) -> Tensor:
    """log(p / (1 - p)) of p = exp(mean log-prob), elementwise, for mean log-probs < 0.

    log(1 - p) is log(-expm1(a)): exact when p is near 1, where 1 - exp(a) would round to 0.
    """
    return mean_logprob - torch.log(-torch.expm1(mean_logprob))


def orpo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, beta: float, weight: Tensor | None = None
) -> tuple[Tensor, ReferenceFreeStats]:
    """Odds Ratio Preference Optimisation (Hong et al. 2024, "ORPO: Monolithic Preference
    Optimization without Reference Model", eq. 6-7):

        odds(y) = P(y) / (1 - P(y)),   P(y) = exp(1/|y| Σ_t log pi(y_t | x, y_<t))
        L = -1/|y_c| log pi(y_c)  -  lambda log sigmoid(log odds(y_c) - log odds(y_r))

    Supervised fine-tuning on the chosen completion plus a penalty on the log odds ratio: one
    stage, no reference model, no separate SFT. ``lambda`` is ``beta`` here (0.1 in the paper).

    Args:
        policy_chosen, policy_rejected: ``(B,)`` per-token *mean* log pi(y | x), all < 0 (grad).
        beta: lambda, the weight of the odds-ratio term.
    """
    _check_examples(policy_chosen=policy_chosen, policy_rejected=policy_rejected, weight=weight)
    _check_beta(beta)
    chosen, rejected = policy_chosen.float(), policy_rejected.float()  # (B,)
    ratio = log_odds(chosen) - log_odds(rejected)  # (B,)
    loss = _weighted_mean(-chosen - beta * F.logsigmoid(ratio), weight)
    with torch.no_grad():
        stats = _reference_free_stats(chosen, rejected, -chosen, beta, weight)
    return loss, stats


def simpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    beta: float,
    gamma: float,
    weight: Tensor | None = None,
) -> tuple[Tensor, ReferenceFreeStats]:
    """Simple Preference Optimisation (Meng et al. 2024, "SimPO: Simple Preference Optimization
    with a Reference-Free Reward", eq. 6):

        L = -log sigmoid(beta/|y_c| log pi(y_c) - beta/|y_r| log pi(y_r) - gamma)

    DPO's Bradley-Terry with the length-normalised log-likelihood, the quantity sampling ranks
    by, as the implicit reward, and a target margin gamma: no reference model. The paper's
    settings: beta 2 to 2.5, gamma / beta 0.3 to 0.8.

    Args:
        policy_chosen, policy_rejected: ``(B,)`` per-token *mean* log pi(y | x) (with grad).
        beta: scale of the reward; gamma: the margin (>= 0) the chosen must win by.
    """
    _check_examples(policy_chosen=policy_chosen, policy_rejected=policy_rejected, weight=weight)
    _check_beta(beta)
    if not gamma >= 0:
        raise ConfigError(f"gamma={gamma!r} must be >= 0: SimPO's target reward margin (e.g. 0.5)")
    chosen, rejected = policy_chosen.float(), policy_rejected.float()  # (B,)
    loss = _weighted_mean(-F.logsigmoid(beta * (chosen - rejected) - gamma), weight)
    with torch.no_grad():
        stats = _reference_free_stats(chosen, rejected, -chosen, beta, weight)
    return loss, stats


def cpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    chosen_tokens: Tensor,
    beta: float,
    weight: Tensor | None = None,
) -> tuple[Tensor, ReferenceFreeStats]:
    """Contrastive Preference Optimisation (Xu et al. 2024, "Contrastive Preference
    Optimization: Pushing the Boundaries of LLM Performance in Machine Translation", eq. 3-5):

        L = -log sigmoid(beta log pi(y_c) - beta log pi(y_r))  -  1/|y_c| log pi(y_c)

    DPO with a uniform reference (its log-probs cancel in the difference), kept from drifting
    off the chosen completions by their negative log-likelihood. The NLL is per token (as
    common implementations, TRL, compute it), so its scale does not grow with length.

    Args:
        policy_chosen, policy_rejected: ``(B,)`` *summed* log pi(y | x) (with grad).
        chosen_tokens: ``(B,)`` completion tokens of each chosen completion, |y_c| >= 1.
        beta: scale of the log-likelihood difference (0.1 in the paper).
    """
    _check_examples(
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        chosen_tokens=chosen_tokens,
        weight=weight,
    )
    _check_beta(beta)
    chosen, rejected = policy_chosen.float(), policy_rejected.float()  # (B,)
    nll = -chosen / chosen_tokens.detach().float().clamp(min=1)  # (B,)
    loss = _weighted_mean(-F.logsigmoid(beta * (chosen - rejected)) + nll, weight)
    with torch.no_grad():
        stats = _reference_free_stats(chosen, rejected, nll, beta, weight)
    return loss, stats
