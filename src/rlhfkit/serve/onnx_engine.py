"""The onnx engine: what ``rlhfkit export --format onnx`` (or ``--format int8 --int8_engine
onnx``) wrote, on onnxruntime with its KV cache.

The exported graph takes an attention mask and position ids for a whole batch, so requests are
batched as the hf engine batches them (``batching.BatchedEngine``): the worker left-pads the
waiting prompts into one prefill, then feeds every row its next token, one step at a time, with
the cache the graph returned. Each row is sampled and ended by the same code as the hf engine's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.serve.batching import BatchedEngine, Job, advance, pick_tokens


@dataclass(frozen=True)
class Options:
    """What the onnx engine needs beyond the export's path."""

    max_batch: int = 16  # requests decoded together at most


def load(directory: str, options: Options) -> OnnxEngine:
    """The engine on an ONNX export directory (model.onnx, config.json, tokenizer)."""
    from transformers import AutoConfig

    from rlhfkit.generation.hf import eos_token_ids, saved_generation_config
    from rlhfkit.models import load_tokenizer
    from rlhfkit.models.formats.onnx import FILE_NAME, OnnxRunner

    path = Path(os.path.expanduser(directory))
    if not (path / FILE_NAME).is_file() or not (path / "config.json").is_file():
        raise ConfigError(
            f"model {directory!r}: is not an ONNX export (no {FILE_NAME} and config.json); "
            "write one with `rlhfkit export MODEL --format onnx --out DIR` and serve DIR, or "
            "serve a model directory with --engine hf"
        )
    try:
        import onnxruntime  # noqa: F401
    except ModuleNotFoundError:
        raise ConfigError(
            "engine 'onnx': needs onnxruntime, which is not installed; "
            "pip install 'rlhfkit[export]'"
        ) from None
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    generation = saved_generation_config(path)
    tokenizer = load_tokenizer(path)
    return OnnxEngine(
        OnnxRunner(path / FILE_NAME, config),
        tokenizer,
        eos_token_ids(generation, tokenizer),  # the tokenizer's EOS and the model's, as hf
        getattr(config, "max_position_embeddings", None),
        options.max_batch,
    )


class OnnxEngine(BatchedEngine):
    """An ONNX export served with request batching; see the module docstring."""

    def __init__(
        self,
        runner: Any,
        tokenizer: Any,
        eos: list[int],
        context: int | None,
        max_batch: int = 16,
    ):
        self.runner = runner  # models.formats.onnx.OnnxRunner
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
        super().__init__(tokenizer, eos, context, max_batch, "onnx")

    def _generate(self, jobs: list[Job]) -> None:
        eos = set(self.eos_ids)
        logits, batch = self.runner.prefill([job.prompt_ids for job in jobs], self.pad_id)
        logits = logits[:, -1]  # (B, V): each row's next-token logits (its prompt ends there)
        while True:  # each row ends by its max_tokens at the latest
            chosen = pick_tokens(jobs, torch.from_numpy(logits), self._token_text)  # (B,)
            for job, token in zip(jobs, chosen.tolist(), strict=True):
                advance(job, token, eos)
            if all(job.done for job in jobs):
                return
            # rows already done are fed their last pick too: their logits are not read
            logits, batch = self.runner.step(batch, chosen.numpy().astype(np.int64))
