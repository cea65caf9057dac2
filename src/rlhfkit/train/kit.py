"""What every online RL loop shares: prompts, policy set-up, optimiser, guard, checkpoints.

The loops themselves (``grpo.py``, ``ppo.py``) stay whole and readable top to bottom; the
pieces here are the ones that would otherwise be copied between them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rlhfkit.batch import Prompt
from rlhfkit.config import (
    GenCfg,
    LogCfg,
    LoraCfg,
    ModelCfg,
    OptimCfg,
    PositiveInt,
    PromptDataCfg,
    RunCfg,
    default,
)
from rlhfkit.data.prompts import meta_columns, prompt_text
from rlhfkit.errors import RlhfkitError
from rlhfkit.models.lora import attach_lora, trainable_state


@dataclass(frozen=True)
class OnlineConfig:
    """What every online RL command configures; each loop's Config adds its ``algo`` group."""

    reward: str = "sentiment"
    """Reward: a registered name (sentiment, vader, reasoning_gym:TASK, length, format, ...) or
    your own file.py:fn / package.module:fn."""
    steps: PositiveInt = 50
    """RL steps (each samples a batch and updates on it)."""
    model: ModelCfg = default(ModelCfg)
    lora: LoraCfg = default(LoraCfg)
    data: PromptDataCfg = default(PromptDataCfg)
    gen: GenCfg = default(GenCfg)
    optim: OptimCfg = default(OptimCfg)
    log: LogCfg = default(LogCfg)
    run: RunCfg = default(RunCfg)


# --- prompts -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a finished run leaves: the run directory, the trained policy, the reference."""

    run: Any
    policy: Any
    tokenizer: Any
    reference: Any | None
    summary: dict[str, Any]


def accumulation_weight(micro_mask: Any, minibatch_mask: Any, aggregation: str) -> float:
    """Scale of one micro-batch's mean loss so the accumulated sum is the minibatch's mean.

    Token-level: each micro-batch's mean counts by its share of the minibatch's tokens; the
    sequence modes count by share of completions. This is what makes 8 x 1 equal 4 x 2.
    """
    if aggregation == "token":
        return float(micro_mask.sum() / minibatch_mask.sum().clamp(min=1))
    return len(micro_mask) / len(minibatch_mask)


# --- one step's rollout --------------------------------------------------------------------------


def sample(policy: Any, backend: Any, prompts: list[Prompt], gen: Any, seed: int) -> Any:
    """Completions from the current policy: eval mode and KV cache on, then back to training.

    A training loop samples every step, so on CUDA ``gen.compile auto`` compiles here (a resumed
    run compiles from its first step too, so it samples as the uninterrupted run did); one-shot
    sampling (evaluation, ``generate``, data stages) keeps ``auto`` eager, and so does a model
    under ``model.autocast`` (the static KV cache holds one dtype; autocast makes keys float32
    and values bfloat16).
    """
    from rlhfkit.models import uses_autocast

    if gen.compile == "auto" and policy.device.type == "cuda" and not uses_autocast(policy):
        gen = replace(gen, compile="on")
    policy.eval()
    policy.config.use_cache = True
    try:
        return backend.generate(prompts, gen, seed=seed)
    finally:
        policy.config.use_cache = False
        policy.train()


def score(
    reward: Any,
    rows: list[dict[str, Any]],
    completions: list[str],
    device: Any,
    clip: float = 0.0,
    whiten: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw scores, scores after optional clipping and whitening), both (B,) float32."""
    from rlhfkit.advantages import clip_scores, whiten_scores
    from rlhfkit.rewards import compute_rewards

    raw = torch.tensor(
        compute_rewards(
            reward, [prompt_text(row["prompt"]) for row in rows], completions, **meta_columns(rows)
        ),
        dtype=torch.float32,
        device=device,
    )  # (B,)
    shaped = clip_scores(raw, clip) if clip > 0 else raw
    return raw, whiten_scores(shaped) if whiten else shaped


# --- policy, reference ---------------------------------------------------------------------------


def load_policy_and_reference(
    model_cfg: Any, lora: LoraCfg, need_reference: bool
) -> tuple[Any, Any, Any | None]:
    """(policy in train mode, tokenizer, frozen reference copy or None)."""
    from rlhfkit.models import freeze, load_causal_lm

    policy, tokenizer = load_causal_lm(model_cfg)
    frozen = None
    if lora.rank:
        policy = attach_lora(policy, lora)
    elif need_reference:
        frozen = freeze(load_causal_lm(model_cfg)[0])
    policy.train()
    # Generation uses the KV cache; training forwards need no cache.
    policy.config.use_cache = False
    return policy, tokenizer, frozen


# --- optimiser -----------------------------------------------------------------------------------


def build_optimizer(
    model: Any, optim: OptimCfg, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over trainable parameters and a warm-up + decay schedule over ``total_steps``."""
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel is ~4x faster than the per-tensor loop on CPU as well as on CUDA
    # (bench/README.md); it needs every parameter in floating point on one device type.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(
        params,
        lr=optim.lr,
        betas=(optim.adam_beta1, optim.adam_beta2),
        eps=optim.adam_eps,
        weight_decay=optim.weight_decay,
        fused=fused or None,
    )

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        progress = (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps)
        progress = min(progress, 1.0)
        if optim.schedule == "linear":
            return 1.0 - progress
        if optim.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class NonFiniteGuard:
    """Skips an optimiser step whose loss or gradient is NaN/inf; aborts after too many in a row."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.skipped = limit, 0, 0

    def clip_and_check(self, model: Any, max_grad_norm: float) -> tuple[bool, float]:
        """(step is safe, gradient norm before clipping). Zeroes the gradients when unsafe."""
        ok, (norm,) = self.clip_and_check_all([model], max_grad_norm)
        return ok, norm

    def clip_and_check_all(
        self, models: list[Any], max_grad_norm: float, loss_finite: bool = True
    ) -> tuple[bool, list[float]]:
        """The same for models updated together (PPO's policy and critic): each is clipped to
        its own norm, and a non-finite loss or any non-finite gradient skips the step for all.

        ``loss_finite=False`` reports a micro-batch whose loss was NaN/inf and so never had a
        backward pass. Returns (step is safe, each model's gradient norm before clipping).
        """
        params = [[p for p in model.parameters() if p.grad is not None] for model in models]
        norms = [
            torch.nn.utils.clip_grad_norm_(
                group, max_grad_norm if max_grad_norm > 0 else float("inf")
            )
            for group in params
        ]
        if loss_finite and all(torch.isfinite(norm) for norm in norms):
            self.in_a_row = 0
            return True, [float(norm) for norm in norms]
        for p in (p for group in params for p in group):
            p.grad = None
        self.in_a_row += 1
        self.skipped += 1
        shown = ", ".join(f"{float(norm)}" for norm in norms)
        cause = "gradient" if loss_finite else "loss"
        warnings.warn(
            f"non-finite {cause} (norm {shown}): step skipped ({self.in_a_row} in a row)",
            stacklevel=2,
        )
        if self.in_a_row >= self.limit:
            raise RlhfkitError(
                f"{self.in_a_row} optimiser steps in a row had a NaN/inf loss or gradient "
                f"(optim.max_nonfinite_steps = {self.limit}); lower optim.lr, keep "
                "optim.max_grad_norm on, or check the reward for extreme values"
            )
        return False, [float(norm) for norm in norms]


def in_chunks(
    forward: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, size: int
) -> Any:
    """``forward(ids, mask)`` over the batch, ``size`` rows at a time, concatenated on rows (each
    tensor on its own when ``forward`` returns a tuple of them)."""
    parts = [
        forward(input_ids[i : i + size], attention_mask[i : i + size])
        for i in range(0, len(input_ids), size)
    ]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))
    return torch.cat(parts)


def kl_controller(algo: Any) -> Any:
    """Adaptive KL toward ``algo.kl_target`` when it is set, else a fixed ``algo.kl_coef``."""
    from rlhfkit.kl_control import AdaptiveKL, FixedKL

    if algo.kl_target > 0:
        return AdaptiveKL(algo.kl_coef, algo.kl_target, algo.kl_horizon)
    return FixedKL(algo.kl_coef)


# --- checkpoints ---------------------------------------------------------------------------------


def save_training_state(directory: Path, model: Any, state: dict[str, Any]) -> None:
    """Weights (safetensors) plus optimiser, scheduler, RNG and loop state (torch pickle of
    tensors and plain data only, so that it loads with ``weights_only=True``)."""
    from safetensors.torch import save_file

    weights = {k: v.detach().contiguous().clone() for k, v in trainable_state(model).items()}
    save_file(weights, str(directory / "weights.safetensors"))
    torch.save(state, directory / "trainer_state.pt")


def snapshot(step: int, stateful: dict[str, Any]) -> dict[str, Any]:
    """A loop's resumable state: the step, RNG states and each part's ``state_dict()``."""
    from rlhfkit.train.runs import rng_state

    return {
        "step": step,
        "rng": rng_state(),
        **{name: part.state_dict() for name, part in stateful.items()},
    }


def restore(state: dict[str, Any], stateful: dict[str, Any]) -> int:
    """Load ``snapshot``'s output back into the parts and RNGs; returns the step it was taken at."""
    from rlhfkit.train.runs import set_rng_state

    for name, part in stateful.items():
        part.load_state_dict(state[name])
    set_rng_state(state["rng"])
    return state["step"]


def load_training_state(directory: Path, model: Any) -> dict[str, Any]:
    """Restore the weights into ``model`` and return the rest of the saved state.

    The trainer state loads with ``weights_only=True``: a run directory is data, and a pickle
    that would call code (a file swapped in by someone else) is refused, never run.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(directory / "weights.safetensors"))
    except (OSError, SafetensorError) as e:
        raise RlhfkitError(
            f"{directory / 'weights.safetensors'}: cannot be read ({e}); resume "
            "from an earlier checkpoint (delete this one) or start afresh with "
            "--run.overwrite"
        ) from None
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
    else:
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise RlhfkitError(
                f"{directory}: checkpoint does not fit this model ({e}); "
                "resume with the model the run started from"
            ) from None
    return load_trainer_state(directory / "trainer_state.pt")


def load_trainer_state(file: Path) -> dict[str, Any]:
    """A ``trainer_state.pt`` as tensors and plain data; anything else is refused unrun."""
    import pickle
    import re

    import numpy as np

    # Checkpoints from before rng_state() stored NumPy's state as a list hold one uint32
    # array; rebuilding an array runs no user code, so those still resume.
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # NumPy 2 | 1
    torch.serialization.add_safe_globals(
        [np.ndarray, np.dtype, type(np.dtype(np.uint32)), multiarray._reconstruct]
    )
    try:
        return torch.load(file, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"a reference to {found.group(1)}" if found else "objects beyond tensors and data"
        raise RlhfkitError(
            f"{file}: refused to load, it holds {what}, which loading would run; "
            "only resume checkpoints that rlhfkit wrote"
        ) from None
    except (OSError, RuntimeError, EOFError) as e:
        reason = str(e).split(". ")[0] or type(e).__name__
        raise RlhfkitError(
            f"{file}: cannot be read ({reason}); resume from an earlier checkpoint "
            "(delete this one) or start afresh with --run.overwrite"
        ) from None
