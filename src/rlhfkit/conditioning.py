"""How a hindsight-trained model is asked for its best output, recorded in its model directory.

Hindsight methods train a model on outputs labelled with the feedback they earned ("A helpful
answer:", "Answer correctly.", "sentiment level 4 of 4"). Asking it for a good output afterwards
means saying the same words, so the training command writes ``conditioning.json`` next to the
weights and everything that samples from a model directory (``generate``, evaluation, ``demo``,
``compare``) reads it back and applies it; a user never has to remember the phrase.

Two places can carry the words:

- ``instruction``: a template for the prompt text, with ``{prompt}`` where the prompt goes
  (HIR's instruction, a relabelled goal, CoH's phrase before a continuation prompt). For a chat,
  it rewrites the last user message.
- ``response_prefix``: text the answer starts with (CoH's positive phrase after a chat prompt);
  generation continues after it and the prefix is not part of the completion.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlhfkit.errors import DataError

FILE_NAME = "conditioning.json"


@dataclass(frozen=True)
class Conditioning:
    """The words that ask a hindsight-trained model for the outcome it was taught is good."""

    method: str
    """The hindsight method that trained the model (for provenance: coh, hir, relabel, ...)."""
    instruction: str = "{prompt}"
    """Template for the prompt text; ``{prompt}`` marks where the original prompt goes."""
    response_prefix: str = ""
    """Text the answer starts with; the model continues after it."""

    def __post_init__(self) -> None:
        if self.instruction.count("{prompt}") != 1:
            raise DataError(
                f"conditioning instruction {self.instruction!r} must contain "
                "{prompt} exactly once, where the original prompt goes"
            )

    def apply_to_text(self, prompt: str) -> str:
        """The instruction template filled with a plain-text prompt."""
        return self.instruction.replace("{prompt}", prompt)

    def apply(self, prompt: str | list[dict[str, str]]) -> str | list[dict[str, str]]:
        """A prompt (text, or a chat whose last user message is rewritten) with the instruction."""
        if isinstance(prompt, str):
            return self.apply_to_text(prompt)
        last = prompt[-1]
        return [*prompt[:-1], {**last, "content": self.apply_to_text(last["content"])}]

    def save(self, model_dir: str | os.PathLike) -> Path:
        """Write ``conditioning.json`` into ``model_dir`` atomically."""
        path = Path(model_dir) / FILE_NAME
        tmp = path.with_name(f".{FILE_NAME}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path


def load_conditioning(model_dir: str | os.PathLike) -> Conditioning | None:
    """The conditioning recorded in a model directory, or None for an ordinary model."""
    path = Path(model_dir) / FILE_NAME
    if not path.is_file():
        return None
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        return Conditioning(
            method=str(data["method"]),
            instruction=str(data.get("instruction", "{prompt}")),
            response_prefix=str(data.get("response_prefix", "")),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(
            f"{path}: not a valid conditioning file ({e}); delete it to use the model "
            "without conditioning, or retrain"
        ) from None
