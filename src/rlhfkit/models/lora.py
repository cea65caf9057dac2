"""LoRA adapters (peft) on a model, and the reference model they make free."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from rlhfkit.config import LoraCfg


def attach_lora(model: Any, lora: LoraCfg, task_type: str | None = "CAUSAL_LM") -> Any:
    """Wrap ``model`` with trainable LoRA adapters (peft); the base weights freeze.

    ``task_type=None`` suits a bare backbone with no LM head (the critic's decoder).
    """
    from peft import LoraConfig, get_peft_model

    targets = lora.target_modules
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules="all-linear" if targets == ("all-linear",) else list(targets),
        task_type=task_type,
    )
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


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The weights that training changes: LoRA adapters only, or every weight."""
    if hasattr(model, "peft_config"):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return model.state_dict()
