"""Advantage estimators: from rewards to the per-token weights of the policy gradient.

Each estimator is a small pure function with its equation and paper (``gae``, ``grpo``,
``rloo``, ``reinforce``, ``reinforce_plus_plus``), tested against hand-computed values, and
registered under a name right where it is defined. A training loop picks one by name, so
switching estimator is a config change:

    estimator = get_advantage(cfg.advantage)    # ConfigError with a did-you-mean on a typo
    inputs = AdvantageInputs(response_mask=mask, scores=scores, group_size=4)
    out = estimator(inputs, AdvantageSettings(gamma=1.0, lam=0.95))
    out.advantages                              # (B, T), 0 on padding
    out.returns                                 # (B, T) where the estimator has returns, else None

The registry calls an estimator by its parameter names: each one names a field of
``AdvantageInputs`` (what a loop has after rollout and scoring; ``mask`` is its
``response_mask``) or of ``AdvantageSettings`` (hyperparameters). A plug-in may instead take
``(inputs, settings)`` whole. An estimator needs the inputs it names that a loop may lack
(checked with a clear error), so a loop can tell up front whether it can offer it (``gae``
needs critic ``values``). It returns ``(B,)`` sequence-level advantages (broadcast over the
completion's valid tokens), ``(B, T)`` token-level ones, or ``(advantages, returns)``.

Where the KL penalty goes: estimators that need ``token_rewards`` (gae, reinforce++) take it
in the reward, built with ``token_rewards(scores, mask, kl, kl_coef)`` (Ziegler et al. 2019);
the others see one score per completion and leave KL to the loss (GRPO's β·KL term, see
``losses.policy.kl_estimate``).

Batches are ``B`` completions of ``T`` response tokens, right-padded; a ``mask`` is ``(B, T)``,
1 on response tokens. Groups (grpo, rloo) are contiguous blocks of ``group_size`` completions of
the same prompt: completions ``[0, G)`` answer prompt 0, ``[G, 2G)`` prompt 1, and so on.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import Tensor

from rlhfkit import distributed
from rlhfkit.errors import ConfigError, RlhfkitError, did_you_mean
from rlhfkit.losses.policy import masked_whiten

# --- the calling convention ----------------------------------------------------------------------


@dataclass(frozen=True)
class AdvantageInputs:
    """What a training loop has after rollout and scoring; estimators read what they need."""

    response_mask: Tensor
    """(B, T) 1 on response tokens, 0 on padding."""
    scores: Tensor | None = None
    """(B,) one scalar reward per completion (reward model, rule, verifier)."""
    token_rewards: Tensor | None = None
    """(B, T) per-token rewards, usually ``token_rewards(scores, mask, kl, kl_coef)``."""
    values: Tensor | None = None
    """(B, T) critic estimates V(s_t) at each response token."""
    group_size: int = 1
    """Completions per prompt, contiguous in the batch (grpo, rloo)."""
    baseline: RunningMean | None = None
    """REINFORCE's running baseline; the estimator updates it in place."""

    def __post_init__(self) -> None:
        if self.response_mask.dim() != 2:
            raise ValueError(
                f"response_mask must be (B, T); got shape {tuple(self.response_mask.shape)}"
            )
        batch, length = self.response_mask.shape
        expected = {"scores": (batch,), "token_rewards": (batch, length), "values": (batch, length)}
        for name, shape in expected.items():
            tensor = getattr(self, name)
            if tensor is not None and tuple(tensor.shape) != shape:
                raise ValueError(
                    f"{name} must have shape {shape} to match response_mask (B, T) = "
                    f"{(batch, length)}; got {tuple(tensor.shape)}"
                )


@dataclass(frozen=True)
class AdvantageSettings:
    """Hyperparameters of the estimators; each reads only the ones it uses."""

    gamma: float = 1.0
    """Discount per token (gae, reinforce++); 1 treats a completion as one undiscounted episode."""
    lam: float = 0.95
    """GAE's lambda: 0 is one-step TD (low variance, biased by the critic), 1 is Monte Carlo."""
    scale_by_std: bool = True
    """grpo: divide by the group's std (Shao et al. 2024); False is Dr. GRPO (Liu et al. 2025)."""
    eps: float = 1e-6
    """Added to a standard deviation before dividing by it."""
    whiten: bool = False
    """Whiten the final advantages over the batch's valid tokens (PPO practice for gae)."""


class Advantages(NamedTuple):
    """An estimator's result."""

    advantages: Tensor
    """(B, T) per-token advantages, 0 on padding."""
    returns: Tensor | None
    """(B, T) discounted returns (for gae, the critic's regression target), else None."""


EstimatorFn = Callable[..., "Advantages | Tensor | tuple[Tensor, Tensor]"]
_INPUT_FIELDS = frozenset(f.name for f in fields(AdvantageInputs))
_SETTING_FIELDS = frozenset(f.name for f in fields(AdvantageSettings))
_WHOLE = {"inputs", "settings"}  # a plug-in's (inputs, settings) convention


@dataclass(frozen=True)
class AdvantageEstimator:
    """A registered estimator: call it with ``(inputs, settings)``."""

    name: str
    compute: EstimatorFn
    needs: frozenset[str]
    """The ``AdvantageInputs`` fields it reads besides ``response_mask``."""

    def __call__(
        self, inputs: AdvantageInputs, settings: AdvantageSettings | None = None
    ) -> Advantages:
        settings = settings or AdvantageSettings()
        missing = sorted(name for name in self.needs if getattr(inputs, name) is None)
        if missing:
            raise ConfigError(
                f"advantage={self.name!r} needs {', '.join(missing)}, which this training loop "
                f"does not provide; choose an estimator it supports"
            )
        mask = inputs.response_mask
        result = self.compute(
            **{name: _argument(name, inputs, settings) for name in _parameters(self.compute)}
        )
        if isinstance(result, Tensor):  # (B,) per completion, broadcast over its tokens; or (B, T)
            per_token = (
                torch.where(mask.bool(), result.unsqueeze(1), 0.0) if result.dim() == 1 else result
            )
            result = Advantages(per_token, None)
        elif not isinstance(result, Advantages):
            result = Advantages(*result)
        if settings.whiten:
            advantages = masked_whiten(result.advantages, mask, eps=settings.eps)
            result = result._replace(advantages=advantages)
        return result


_REGISTRY: dict[str, AdvantageEstimator] = {}


def register_advantage(
    name: str, needs: tuple[str, ...] = ()
) -> Callable[[EstimatorFn], EstimatorFn]:
    """Register an estimator under ``name`` (plug-ins use this too); returns it unchanged.

    Its parameters name ``AdvantageInputs`` / ``AdvantageSettings`` fields (``mask`` for the
    response mask), or are ``(inputs, settings)``; ``needs`` adds inputs read off ``inputs``.
    """
    unknown = sorted(set(needs) - _INPUT_FIELDS)
    if unknown:
        raise RlhfkitError(
            f"advantage estimator {name!r} needs unknown inputs {unknown}; "
            f"AdvantageInputs has: {', '.join(sorted(_INPUT_FIELDS))}"
        )

    def decorate(fn: EstimatorFn) -> EstimatorFn:
        if name in _REGISTRY:
            raise RlhfkitError(
                f"advantage estimator {name!r} is already registered; pick another name"
            )
        parameters = _parameters(fn)
        strange = sorted(set(parameters) - _INPUT_FIELDS - _SETTING_FIELDS - _WHOLE - {"mask"})
        if strange:
            raise RlhfkitError(
                f"advantage estimator {name!r} takes {strange}, which are neither "
                f"AdvantageInputs nor AdvantageSettings fields"
            )
        # an input that a loop may leave out (None by default) is a need of the estimator
        optional = {f.name for f in fields(AdvantageInputs) if f.default is None}
        needed = frozenset(needs) | (optional & set(parameters))
        _REGISTRY[name] = AdvantageEstimator(name, fn, needed)
        return fn

    return decorate


def _parameters(fn: EstimatorFn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _argument(name: str, inputs: AdvantageInputs, settings: AdvantageSettings) -> object:
    """The value of an estimator's parameter ``name``: a field, or the inputs or settings whole."""
    whole = {"inputs": inputs, "settings": settings, "mask": inputs.response_mask}
    if name in whole:
        return whole[name]
    return getattr(inputs if name in _INPUT_FIELDS else settings, name)


def advantage_names() -> list[str]:
    """Names of the registered estimators, sorted."""
    return sorted(_REGISTRY)


def get_advantage(name: str) -> AdvantageEstimator:
    """The estimator registered as ``name``; a ConfigError with the closest names otherwise."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    raise ConfigError(
        f"advantage={name!r} is not a registered estimator; {did_you_mean(name, _REGISTRY)}"
        f"choose one of: {', '.join(advantage_names())}"
    )


# --- estimators ----------------------------------------------------------------------------------


@register_advantage("gae")
def gae(
    token_rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eqs. 11-16).

        delta_t = r_t + gamma V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma lam A_{t+1}          = Σ_l (gamma lam)^l delta_{t+l}
        R_t     = A_t + V(s_t)                          (the critic's target, the lambda-return)

    A completion ends its episode: after its last valid token V = 0 and A = 0. Positions off the
    mask are skipped and their rewards and values ignored (the scan carries the next valid
    token's V and A across them), so right padding and masked spans inside a response (e.g. tool
    output) are handled alike. One reverse scan over T, vectorised over the batch.

    Args:
        token_rewards: ``(B, T)`` rewards r_t (see ``token_rewards``).
        values: ``(B, T)`` critic estimates V(s_t).
        mask: ``(B, T)`` response tokens.
    Returns:
        ``(advantages, returns)``, both ``(B, T)``, detached, 0 on padding.
    """
    _check_unit_interval(gamma=gamma, lam=lam)
    valid = mask.bool()  # (B, T)
    rewards = torch.where(valid, token_rewards.detach(), 0.0)  # (B, T)
    values = torch.where(valid, values.detach(), 0.0)  # (B, T)
    next_value = rewards.new_zeros(rewards.shape[0])  # (B,) V after the last token: episode over
    next_advantage = rewards.new_zeros(rewards.shape[0])  # (B,)
    columns = []
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        advantage = delta + gamma * lam * next_advantage  # (B,)
        next_value = torch.where(valid[:, t], values[:, t], next_value)
        next_advantage = torch.where(valid[:, t], advantage, next_advantage)
        columns.append(torch.where(valid[:, t], advantage, 0.0))
    advantages = torch.stack(columns[::-1], dim=1)  # (B, T)
    return advantages, advantages + values


@register_advantage("grpo")
def grpo(scores: Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages (Shao et al. 2024, DeepSeekMath, §4.1.2 outcome supervision).

        A_i = (s_i - mean(s_group)) / (std(s_group) + eps)      scale_by_std=True  (GRPO)
        A_i =  s_i - mean(s_group)                              scale_by_std=False (Dr. GRPO)

    The group's other completions of the same prompt are the baseline: no critic. Dividing by
    the std up-weights prompts whose completions all score alike (too easy or too hard); Dr.
    GRPO (Liu et al. 2025) drops it as a difficulty bias. ``std`` is the sample std (n - 1),
    as in the reference implementations (TRL, verl). A group whose scores are all equal gets 0.

    Args:
        scores: ``(B,)`` one score per completion, groups contiguous.
    Returns:
        ``(B,)`` per-completion advantages; each group sums to 0.
    """
    grouped = _grouped(scores, group_size, "grpo")  # (B / G, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)  # (B / G, G)
    if scale_by_std:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1).to(scores.dtype)


@register_advantage("rloo")
def rloo(scores: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, "Back to basics"; Kool et al. 2019).

        A_i = s_i - 1/(G-1) Σ_{j≠i} s_j  =  G/(G-1) (s_i - mean(s_group))

    Each completion's baseline is the mean score of the other completions of its prompt, which
    does not depend on it, so the estimate stays unbiased.

    Returns:
        ``(B,)`` per-completion advantages; identical scores in a group give 0.
    """
    grouped = _grouped(scores, group_size, "rloo")  # (B / G, G)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # (B / G, G)
    return (grouped - others_mean).reshape(-1).to(scores.dtype)


class RunningMean:
    """Running mean of past scores: REINFORCE's baseline b (Williams 1992).

    ``decay=None`` keeps the exact mean of every score seen; a ``decay`` in (0, 1) keeps an
    exponential average instead, Williams' "reinforcement comparison" b <- decay b + (1-decay) r,
    which follows a reward that keeps rising. Its state (``mean``, ``count``) is saved with
    ``state_dict`` and restored with ``load_state_dict`` so a resumed run continues exactly.
    """

    def __init__(self, decay: float | None = None):
        if decay is not None and not 0.0 < decay < 1.0:
            raise ConfigError(
                f"baseline decay={decay!r} must lie in (0, 1) (e.g. 0.9), or be None "
                "for the exact mean of all past scores"
            )
        self.decay = decay
        self.mean = 0.0
        self.count = 0

    def update(self, scores: Tensor) -> None:
        """Fold a batch of scores ``(B,)`` into the mean (kept in float64, as a Python float);
        data-parallel, the batch is every rank's scores, so all ranks keep the same mean."""
        if distributed.active():
            total, count = distributed.sum_floats([float(scores.double().sum()), scores.numel()])
            batch_mean, batch_count = total / count, int(count)
        else:
            batch_mean, batch_count = scores.detach().double().mean().item(), scores.numel()
        if self.count == 0:
            self.mean = batch_mean
        elif self.decay is None:
            self.mean += (batch_mean - self.mean) * batch_count / (self.count + batch_count)
        else:
            self.mean = self.decay * self.mean + (1.0 - self.decay) * batch_mean
        self.count += batch_count

    def state_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        missing = {"mean", "count"} - set(state)
        if missing:
            raise RlhfkitError(
                f"baseline state lacks {sorted(missing)}; the checkpoint is not "
                "from this estimator: resume from a checkpoint of a reinforce run"
            )
        self.mean, self.count = float(state["mean"]), int(state["count"])


@register_advantage("reinforce")
def reinforce(scores: Tensor, baseline: RunningMean) -> Tensor:
    """REINFORCE with a running-mean baseline (Williams 1992): A_i = s_i - b.

    ``b`` is the mean of the scores of earlier batches, which do not depend on this batch's
    samples, so the gradient estimate stays unbiased. The first batch has no past: it uses its
    own mean (slightly biased, once) rather than b = 0, which would push every completion up by
    the raw score. The baseline is then updated with this batch, in place.

    Returns:
        ``(B,)`` per-completion advantages.
    """
    scores = scores.detach()  # (B,)
    if baseline.count == 0:
        baseline.update(scores)
        return scores - baseline.mean
    advantages = scores - baseline.mean  # (B,)
    baseline.update(scores)
    return advantages


@register_advantage("reinforce++")
def reinforce_plus_plus(
    token_rewards: Tensor, mask: Tensor, gamma: float = 1.0, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025, arXiv 2501.03262): returns normalised over the whole batch.

        G_t = Σ_{i >= t} gamma^(i-t) r_i                (return of the token-level rewards)
        A_t = (G_t - mean(G)) / sqrt(var(G) + eps)      (mean, var over every valid token)

    ``r_i`` carries the score on the last token and the per-token KL penalty -beta KL_i (fold it
    in with ``token_rewards``; with scores only, ``token_rewards(scores, mask)``). Global batch
    normalisation, not per-prompt, is what distinguishes it from GRPO: it needs no group of
    completions per prompt and no critic. G_t is GAE with no critic (V = 0) and lambda = 1.

    Returns:
        ``(advantages, returns)``, both ``(B, T)``, 0 on padding.
    """
    returns, _ = gae(token_rewards, torch.zeros_like(token_rewards), mask, gamma=gamma, lam=1.0)
    return masked_whiten(returns, mask, eps=eps), returns


# --- reward shaping ------------------------------------------------------------------------------


def token_rewards(
    scores: Tensor, mask: Tensor, kl: Tensor | None = None, kl_coef: float = 0.0
) -> Tensor:
    """Per-token rewards: the score on the last valid token, -kl_coef KL_t on every valid token.

        r_t = -kl_coef KL_t + [t = last] s            (Ziegler et al. 2019, §2.2, eq. 2;
                                                       Ouyang et al. 2022, InstructGPT, eq. 2)

    Summed over a completion this is its score minus kl_coef times its KL to the reference
    (``kl`` from ``losses.policy.kl_estimate``, usually k1); spread per token, each token is
    charged its own KL, which gives GAE a dense signal.

    Args:
        scores: ``(B,)`` one score per completion.
        mask: ``(B, T)`` response tokens; each row must have at least one.
        kl: ``(B, T)`` per-token KL estimates, or None for no penalty.
    Returns:
        ``(B, T)`` rewards, 0 on padding.
    """
    valid = mask.bool()  # (B, T)
    empty = (~valid.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"completions {empty} have no response token, so their score has "
            "nowhere to go; keep at least the end-of-sequence token in the mask"
        )
    positions = torch.arange(1, valid.shape[1] + 1, device=valid.device)  # (T,)
    last = (valid * positions).argmax(dim=1)  # (B,) index of each row's last valid token
    rewards = torch.zeros(valid.shape, dtype=scores.dtype, device=scores.device)  # (B, T)
    if kl is not None:
        rewards = torch.where(valid, -kl_coef * kl.detach().to(scores.dtype), 0.0)
    return rewards.index_put(
        (torch.arange(len(scores), device=scores.device), last), scores.detach(), accumulate=True
    )


def whiten_scores(scores: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Scores ``(B,)`` to zero mean, unit variance over the batch (keeping the mean when
    ``shift_mean`` is False), so the reward scale does not set the step size."""
    return masked_whiten(scores, torch.ones_like(scores, dtype=torch.bool), shift_mean, eps)


def clip_scores(scores: Tensor, bound: float) -> Tensor:
    """Scores ``(B,)`` clipped to [-bound, bound], so one outlier cannot dominate a batch."""
    if bound <= 0:
        raise ConfigError(f"score clip bound={bound!r} must be positive (e.g. 5.0)")
    return scores.clamp(-bound, bound)


def overlong_penalty(lengths: Tensor, max_length: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), added to each score ``(B,)``:

        R_len(y) = 0                                   |y| <= L_max - L_buf
                 = ((L_max - L_buf) - |y|) / L_buf     L_max - L_buf < |y| <= L_max
                 = -1                                  L_max < |y|

    times ``factor``. A completion cut off at the budget would otherwise be scored like any
    other; a flat penalty on every cut-off one punishes sound reasoning that merely ran long.
    The ramp over the last ``buffer`` tokens says "finish sooner" gradually. ``lengths`` are
    generated tokens; ``max_length`` is L_max, the budget (max_new_tokens).
    """
    if not 0 < buffer <= max_length:
        raise ConfigError(
            f"overlong buffer={buffer!r} must lie in [1, max_length={max_length}]: the last "
            "tokens before the budget over which the penalty ramps up (DAPO: 4096 of 20480)"
        )
    over = (lengths.float() - (max_length - buffer)).clamp(min=0.0) / buffer  # (B,)
    return -factor * over.clamp(max=1.0)


def informative_groups(scores: Tensor, group_size: int) -> Tensor:
    """``(B / G,)`` bool: the groups whose scores are not all equal.

    A group that all scored alike (all right, all wrong) has advantage 0 under a group baseline
    and adds no policy gradient; DAPO's dynamic sampling (Yu et al. 2025, §3.2, eq. 11) keeps
    only the others, so every completion in a batch carries a signal.
    """
    grouped = _grouped(scores, group_size, "dynamic sampling")  # (B / G, G)
    return (grouped != grouped[:, :1]).any(dim=1)


# --- checks --------------------------------------------------------------------------------------


def _grouped(scores: Tensor, group_size: int, estimator: str) -> Tensor:
    """``(B,)`` -> ``(B / G, G)``, with errors that say why a grouping cannot work."""
    if group_size < 2:
        raise ConfigError(
            f"group_size={group_size} with advantage={estimator!r}: the baseline of a completion is "
            "the other completions of its prompt, and a group of one has none (its advantage "
            "would always be 0 or undefined); sample at least 2 completions per prompt"
        )
    if scores.dim() != 1:
        raise ValueError(
            f"scores must be (B,), one per completion; got shape {tuple(scores.shape)}"
        )
    if scores.numel() % group_size:
        raise ConfigError(
            f"group_size={group_size} does not divide the batch of {scores.numel()} completions; "
            "make completions per batch = prompts per batch x group_size"
        )
    # float64: the mean of equal float32 scores is then exactly that score, so a group that all
    # scored alike gets exactly 0, not rounding noise that a std near 0 would blow up.
    return scores.detach().double().reshape(-1, group_size)


def _check_unit_interval(**values: float) -> None:
    for name, value in values.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(
                f"{name}={value!r} must lie in [0, 1]; 1.0 (gamma) and 0.95 (lam) "
                "are the usual values for language models"
            )
