"""Typed batches that flow between generation, rewards and training.

Shapes: B = batch (rows), P = prompt width (left-padded), R = response width (right-padded).
Left-padded prompts keep every prompt's last token in column P - 1, so the response always
starts at column P of ``input_ids``; the model sees correct positions because position ids are
computed from the attention mask (see ``rlhfkit.models.token_logprobs``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

Chat = list[dict[str, str]]
"""A conversation: ``[{"role": "user", "content": "..."}, ...]``, ending with a user turn."""
Prompt = str | Chat
"""A raw prompt as a user wrote it: plain text, or a chat that the chat template renders."""


@dataclass(frozen=True, eq=False)  # eq on tensors is ambiguous: compare fields explicitly
class Rollout:
    """Completions sampled for a batch of prompts, with what RL needs to score and learn from them.

    Padding positions hold the pad token, carry mask 0 and logprob 0.
    """

    prompts: list[Prompt]  # B raw prompts, as given to the generation backend
    completions: list[str]  # B completion texts, cut before any stop string, without EOS
    prompt_ids: torch.Tensor  # (B, P) long, left-padded
    prompt_mask: torch.Tensor  # (B, P) long, 1 on prompt tokens
    response_ids: torch.Tensor  # (B, R) long, right-padded
    response_mask: torch.Tensor  # (B, R) long, 1 on generated tokens up to and including EOS/stop
    logprobs: torch.Tensor  # (B, R) float32, log p(token) under the sampling policy (logits / T)
    finished: torch.Tensor  # (B,) bool, ended by EOS or a stop string (not by max_new_tokens)

    def __post_init__(self) -> None:
        batch = len(self.prompts)
        rows = {f.name: len(getattr(self, f.name)) for f in fields(self)}
        if set(rows.values()) != {batch}:
            raise ValueError(f"Rollout fields disagree on the batch size: {rows}")
        if self.prompt_ids.shape != self.prompt_mask.shape:
            raise ValueError(
                f"prompt_ids {tuple(self.prompt_ids.shape)} != prompt_mask "
                f"{tuple(self.prompt_mask.shape)}"
            )
        for name in ("response_mask", "logprobs"):
            if getattr(self, name).shape != self.response_ids.shape:
                raise ValueError(
                    f"{name} {tuple(getattr(self, name).shape)} != response_ids "
                    f"{tuple(self.response_ids.shape)}"
                )

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def input_ids(self) -> torch.Tensor:
        """Prompt then response: (B, P + R). The response starts at column P."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, P + R): 1 on prompt and generated tokens, 0 on padding either side."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def response_lengths(self) -> torch.Tensor:
        """(B,) long: generated tokens per row, EOS/stop tokens included."""
        return self.response_mask.sum(dim=1)

    def to(self, device: torch.device | str) -> Rollout:
        """The same batch with every tensor on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        return Rollout(**moved)

    def __getitem__(self, index: torch.Tensor | list[int] | slice) -> Rollout:
        """Rows picked by an index tensor, a list of ints or a slice: minibatches and groups.

        The widths P and R stay as they are (columns that become all-padding are kept).
        """
        if isinstance(index, slice):
            index = torch.arange(len(self))[index]
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)  # (b,)
        rows = index.tolist()
        picked: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                picked[f.name] = value[index.to(value.device)]
            else:
                picked[f.name] = [value[i] for i in rows]
        return Rollout(**picked)

    @staticmethod
    def concat(rollouts: list[Rollout], pad_token_id: int = 0) -> Rollout:
        """One batch from several, re-padding prompts on the left and responses on the right."""
        if not rollouts:
            raise ValueError("Rollout.concat needs at least one rollout")
        prompt_width = max(r.prompt_ids.shape[1] for r in rollouts)
        response_width = max(r.response_ids.shape[1] for r in rollouts)

        def pad(tensors: list[torch.Tensor], width: int, value: float, left: bool) -> torch.Tensor:
            padded = []
            for t in tensors:  # (b, w) -> (b, width)
                extra = width - t.shape[1]
                padded.append(
                    torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=value)
                )
            return torch.cat(padded, dim=0)

        return Rollout(
            prompts=[p for r in rollouts for p in r.prompts],
            completions=[c for r in rollouts for c in r.completions],
            prompt_ids=pad([r.prompt_ids for r in rollouts], prompt_width, pad_token_id, left=True),
            prompt_mask=pad([r.prompt_mask for r in rollouts], prompt_width, 0, left=True),
            response_ids=pad(
                [r.response_ids for r in rollouts], response_width, pad_token_id, left=False
            ),
            response_mask=pad([r.response_mask for r in rollouts], response_width, 0, left=False),
            logprobs=pad([r.logprobs for r in rollouts], response_width, 0.0, left=False),
            finished=torch.cat([r.finished for r in rollouts]),
        )
