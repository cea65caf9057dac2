"""What every online RL loop shares: prompts, policy set-up, optimiser, guard, checkpoints.

The loops themselves (``grpo.py``, ``ppo.py``) stay whole and readable top to bottom; the
pieces here are the ones that would otherwise be copied between them.
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
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
from rlhfkit.errors import RlhfkitError


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


def prompt_rows(data: PromptDataCfg, split: str) -> list[dict[str, Any]]:
    """Training (``split="train"``) or held-out prompt rows: ``{"prompt": ..., **meta}``."""
    from rlhfkit.data.builtin import is_builtin, load_builtin
    from rlhfkit.data.prompts import load_prompts

    if split == "train":
        spec, field = data.prompts, "prompts"
    else:
        spec, field = (data.eval_prompts or data.prompts), "eval_prompts"
        if not data.eval_prompts and not is_builtin(data.prompts):
            return []  # a user's file has no held-out split unless they name one
    if is_builtin(spec) and not Path(spec).exists():
        rows = load_builtin(spec, split if not data.eval_prompts else "test", field)
    else:
        rows = load_prompts(spec, data.prompt_field, option="--data.prompt_field")
    if split == "train" and data.max_prompts:
        rows = rows[:data.max_prompts]
    if split != "train":
        rows = rows[:data.eval_size]
    return rows


def prompt_text(prompt: Prompt) -> str:
    """What a reward sees of a prompt: the text, or a chat's last user message."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def meta_columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Every column but the prompt, as per-item lists (what rewards receive as ``**meta``)."""
    keys = [key for key in rows[0] if key != "prompt"] if rows else []
    return {key: [row.get(key) for row in rows] for key in keys}


class PromptStream:
    """Prompts in a seeded random order, epoch after epoch; its position is checkpointed."""

    def __init__(self, rows: list[dict[str, Any]], seed: int):
        if not rows:
            raise RlhfkitError("no training prompts; check --data.prompts")
        self.rows, self.seed = rows, seed
        self.epoch, self.index = 0, 0

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.rows), generator=generator).tolist()

    def take(self, count: int) -> list[dict[str, Any]]:
        taken = []
        order = self._order()
        while len(taken) < count:
            if self.index == len(order):
                self.epoch, self.index = self.epoch + 1, 0
                order = self._order()
            taken.append(self.rows[order[self.index]])
            self.index += 1
        return taken

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.index = state["epoch"], state["index"]


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


def score(reward: Any, rows: list[dict[str, Any]], completions: list[str], device: Any,
          clip: float = 0.0, whiten: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw scores, scores after optional clipping and whitening), both (B,) float32."""
    from rlhfkit.advantages import clip_scores, whiten_scores
    from rlhfkit.rewards import compute_rewards

    raw = torch.tensor(compute_rewards(reward, [prompt_text(row["prompt"]) for row in rows],
                                       completions, **meta_columns(rows)),
                       dtype=torch.float32, device=device)  # (B,)
    shaped = clip_scores(raw, clip) if clip > 0 else raw
    return raw, whiten_scores(shaped) if whiten else shaped


# --- policy, reference ---------------------------------------------------------------------------


def attach_lora(model: Any, lora: LoraCfg, task_type: str | None = "CAUSAL_LM") -> Any:
    """Wrap ``model`` with trainable LoRA adapters (peft); the base weights freeze.

    ``task_type=None`` suits a bare backbone with no LM head (the critic's decoder).
    """
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules
    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules="all-linear" if targets == ("all-linear",) else list(targets),
                        task_type=task_type)
    return get_peft_model(model, config)


@contextmanager
def reference(policy: Any, frozen_copy: Any | None) -> Iterator[Any]:
    """The reference model: a frozen copy, or with LoRA the policy with its adapters off.

    LoRA's base weights are the starting model, so no second copy needs to sit in memory.
    """
    if frozen_copy is not None:
        yield frozen_copy
        return
    with policy.disable_adapter():
        yield policy


def load_policy_and_reference(model_cfg: Any, lora: LoraCfg, need_reference: bool
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


def build_optimizer(model: Any, optim: OptimCfg, total_steps: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over trainable parameters and a warm-up + decay schedule over ``total_steps``."""
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel is ~4x faster than the per-tensor loop on CPU as well as on CUDA
    # (bench/README.md); it needs every parameter in floating point on one device type.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(params, lr=optim.lr, betas=(optim.adam_beta1, optim.adam_beta2),
                                  eps=optim.adam_eps, weight_decay=optim.weight_decay,
                                  fused=fused or None)

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

    def clip_and_check_all(self, models: list[Any], max_grad_norm: float, loss_finite: bool = True
                           ) -> tuple[bool, list[float]]:
        """The same for models updated together (PPO's policy and critic): each is clipped to
        its own norm, and a non-finite loss or any non-finite gradient skips the step for all.

        ``loss_finite=False`` reports a micro-batch whose loss was NaN/inf and so never had a
        backward pass. Returns (step is safe, each model's gradient norm before clipping).
        """
        params = [[p for p in model.parameters() if p.grad is not None] for model in models]
        norms = [torch.nn.utils.clip_grad_norm_(group, max_grad_norm if max_grad_norm > 0 else
                                                float("inf")) for group in params]
        if loss_finite and all(torch.isfinite(norm) for norm in norms):
            self.in_a_row = 0
            return True, [float(norm) for norm in norms]
        for p in (p for group in params for p in group):
            p.grad = None
        self.in_a_row += 1
        self.skipped += 1
        shown = ", ".join(f"{float(norm)}" for norm in norms)
        cause = "gradient" if loss_finite else "loss"
        warnings.warn(f"non-finite {cause} (norm {shown}): step skipped "
                      f"({self.in_a_row} in a row)", stacklevel=2)
        if self.in_a_row >= self.limit:
            raise RlhfkitError(
                f"{self.in_a_row} optimiser steps in a row had a NaN/inf loss or gradient "
                f"(optim.max_nonfinite_steps = {self.limit}); lower optim.lr, keep "
                "optim.max_grad_norm on, or check the reward for extreme values")
        return False, [float(norm) for norm in norms]


def in_chunks(forward: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              size: int) -> Any:
    """``forward(ids, mask)`` over the batch, ``size`` rows at a time, concatenated on rows (each
    tensor on its own when ``forward`` returns a tuple of them)."""
    parts = [forward(input_ids[i:i + size], attention_mask[i:i + size])
             for i in range(0, len(input_ids), size)]
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


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The weights that training changes: LoRA adapters only, or every weight."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return model.state_dict()


def save_training_state(directory: Path, model: Any, state: dict[str, Any]) -> None:
    """Weights (safetensors) plus optimiser, scheduler, RNG and loop state (torch pickle of
    tensors and plain data only, so that it loads with ``weights_only=True``)."""
    from safetensors.torch import save_file

    weights = {k: v.detach().contiguous().clone() for k, v in trainable_state(model).items()}
    save_file(weights, str(directory / "weights.safetensors"))
    torch.save(state, directory / "trainer_state.pt")


def snapshot(step: int, stateful: dict[str, Any]) -> dict[str, Any]:
    """A loop's resumable state: the step, RNG states and each part's ``state_dict()``."""
    from rlhfkit.runs import rng_state

    return {"step": step, "rng": rng_state(),
            **{name: part.state_dict() for name, part in stateful.items()}}


def restore(state: dict[str, Any], stateful: dict[str, Any]) -> int:
    """Load ``snapshot``'s output back into the parts and RNGs; returns the step it was taken at."""
    from rlhfkit.runs import set_rng_state

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
        raise RlhfkitError(f"{directory / 'weights.safetensors'}: cannot be read ({e}); resume "
                           "from an earlier checkpoint (delete this one) or start afresh with "
                           "--run.overwrite") from None
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, weights)
    else:
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise RlhfkitError(f"{directory}: checkpoint does not fit this model ({e}); "
                               "resume with the model the run started from") from None
    return load_trainer_state(directory / "trainer_state.pt")


def load_trainer_state(file: Path) -> dict[str, Any]:
    """A ``trainer_state.pt`` as tensors and plain data; anything else is refused unrun."""
    import pickle
    import re

    import numpy as np

    # Checkpoints from before rng_state() stored NumPy's state as a list hold one uint32
    # array; rebuilding an array runs no user code, so those still resume.
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # NumPy 2 | 1
    torch.serialization.add_safe_globals([np.ndarray, np.dtype, type(np.dtype(np.uint32)),
                                          multiarray._reconstruct])
    try:
        return torch.load(file, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"a reference to {found.group(1)}" if found else "objects beyond tensors and data"
        raise RlhfkitError(f"{file}: refused to load, it holds {what}, which loading would run; "
                           "only resume checkpoints that rlhfkit wrote") from None
    except (OSError, RuntimeError, EOFError) as e:
        reason = str(e).split(". ")[0] or type(e).__name__
        raise RlhfkitError(f"{file}: cannot be read ({reason}); resume from an earlier checkpoint "
                           "(delete this one) or start afresh with --run.overwrite") from None


def export_model(directory: Path, model: Any, tokenizer: Any) -> Path:
    """Save the trained policy as a plain Hugging Face model directory (LoRA merged in)."""
    from rlhfkit.models import quiet_transformers

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".tmp-{directory.name}-"))
    try:
        # merging LoRA changes the model in place: merge a copy, keep training the original
        to_save = copy.deepcopy(model).merge_and_unload() if hasattr(model, "peft_config") else model
        to_save.config.use_cache = True
        with quiet_transformers():
            to_save.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
