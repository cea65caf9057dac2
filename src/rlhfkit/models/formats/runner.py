"""What the export check asks of every format: logits at each position and greedy decoding."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch


class Runner(Protocol):
    """One model in one runtime, fed token ids (batch of one, so no padding is involved)."""

    def logits(self, ids: list[int]) -> np.ndarray:
        """(T, V) float32 logits of every position of ``ids``."""
        ...

    def greedy(self, ids: list[int], max_new_tokens: int, eos: int) -> list[int]:
        """The greedy completion of ``ids`` with the runtime's KV cache, up to EOS (excluded)."""
        ...


@dataclass(frozen=True)
class Loaded:
    """A runner and the seconds its files took to load."""

    runner: Runner
    seconds: float


class TorchRunner:
    """A Hugging Face causal LM in PyTorch (the original, or torchao's int8 version of it)."""

    def __init__(self, model: Any):
        self.model = model

    @torch.no_grad()
    def logits(self, ids: list[int]) -> np.ndarray:
        tensor = torch.tensor([ids], device=self.model.device)
        return self.model(tensor).logits[0].float().cpu().numpy()

    @torch.no_grad()
    def greedy(self, ids: list[int], max_new_tokens: int, eos: int) -> list[int]:
        tensor = torch.tensor([ids], device=self.model.device)
        out = self.model.generate(
            tensor,
            attention_mask=torch.ones_like(tensor),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=eos,
        )[0, len(ids) :].tolist()
        return out[: out.index(eos)] if eos in out else out


def load_torch(directory: Path) -> Loaded:
    """A Hugging Face model directory in float32 on the CPU (torchao's int8 weights stay int8)."""
    from transformers import AutoModelForCausalLM

    from rlhfkit.models import LOCAL_WEIGHTS, quiet_transformers

    started = time.perf_counter()
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.float32, **LOCAL_WEIGHTS
        ).eval()
    return Loaded(TorchRunner(model), time.perf_counter() - started)


def import_model_class(directory: Path) -> None:
    """Import the transformers modules a model directory's architecture needs, so that a timed
    load that follows measures reading the weights, not Python's first imports."""
    import json

    import transformers

    for name in json.loads((directory / "config.json").read_text()).get("architectures") or []:
        getattr(transformers, name, None)
