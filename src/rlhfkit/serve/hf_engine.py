"""The transformers engine: requests that wait together are decoded together.

The batching (one worker thread, static batches of up to ``max_batch`` requests, each row with
its own settings) is ``batching.BatchedEngine``'s; here the batch is left-padded and decoded by
one ``model.generate`` call, with ``RowSampler`` picking each row's token and ``RowFinisher``
ending each row and streaming its text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from rlhfkit.generation.hf import HFBackend, own_generation_defaults
from rlhfkit.serve.batching import BatchedEngine, Job, advance, end, pick_tokens


@dataclass(frozen=True)
class Options:
    """What the hf engine needs beyond the model's path."""

    device: str = "auto"
    dtype: str = "auto"
    max_batch: int = 16  # requests decoded together at most


def load(model: str, options: Options) -> HFEngine:
    """The engine on a local model directory or an embedded alias (smollm2)."""
    from rlhfkit.config import ModelCfg
    from rlhfkit.models import load_causal_lm

    loaded, tokenizer = load_causal_lm(
        ModelCfg(path=model, device=options.device, dtype=options.dtype)  # type: ignore[arg-type]
    )
    return HFEngine(loaded, tokenizer, options.max_batch)


class RowSampler(LogitsProcessor):
    """Picks each row's next token with its own settings (``pick_tokens``), then hands generate
    all the mass on it (generate runs greedy)."""

    def __init__(self, jobs: list[Job], token_text):
        self.jobs, self.token_text = jobs, token_text

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen = pick_tokens(self.jobs, scores, self.token_text)  # (B,)
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen[:, None], 0.0)


class RowFinisher(StoppingCriteria):
    """After each step: sends each row's new text to its caller and ends the rows that are done
    (EOS, a stop string, max_tokens)."""

    def __init__(self, jobs: list[Job], eos_ids: list[int]):
        self.jobs, self.eos_ids = jobs, set(eos_ids)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        for job, token in zip(self.jobs, input_ids[:, -1].tolist(), strict=True):
            advance(job, token, self.eos_ids)
        return torch.tensor([job.done for job in self.jobs], device=input_ids.device)


class HFEngine(BatchedEngine):
    """A transformers causal LM served with request batching; see the module docstring."""

    def __init__(self, model: Any, tokenizer: Any, max_batch: int = 16):
        self.model = model
        backend = HFBackend(model, tokenizer)  # the same EOS and padding rules as training
        self.pad_id = backend.pad_id
        context = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        super().__init__(tokenizer, backend.eos_ids, context, max_batch, "hf")

    @torch.no_grad()
    def _generate(self, jobs: list[Job]) -> None:
        width = max(len(job.prompt_ids) for job in jobs)
        input_ids = torch.full((len(jobs), width), self.pad_id)  # (B, P), padded on the left
        attention_mask = torch.zeros((len(jobs), width), dtype=torch.long)  # (B, P)
        for row, job in enumerate(jobs):
            input_ids[row, width - len(job.prompt_ids) :] = torch.tensor(job.prompt_ids)
            attention_mask[row, width - len(job.prompt_ids) :] = 1
        config = GenerationConfig(
            max_new_tokens=max(job.max_tokens for job in jobs),
            do_sample=False,  # RowSampler picks; generate's argmax takes its pick
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            disable_compile=True,
        )
        with own_generation_defaults(self.model, self.eos_ids, self.pad_id):
            self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention_mask.to(self.model.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([RowSampler(jobs, self._token_text)]),
                stopping_criteria=StoppingCriteriaList([RowFinisher(jobs, self.eos_ids)]),
            )
        for job in jobs:  # generate stopped at the longest max_tokens; every row has ended
            if not job.done:
                end(job, job.release.finish(), "length")
