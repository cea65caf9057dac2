"""Prompt datasets: one prompt per row, as plain text or as a chat.

A row's prompt is read from its prompt column (``prompt`` unless told otherwise). The column
may hold a string or a chat, a list of ``{"role": ..., "content": ...}`` messages; a file
without a ``prompt`` column may instead have a ``messages`` column (the common chat format).
This is the prompt-only shape of ``rlhfkit.data.shapes``; the prompt column of the other
shapes (prompt-completion, preference, unpaired) reads the same way, their other columns kept
as each row's meta. A file is .jsonl/.json/.csv/.parquet/.txt, or a directory written by
``datasets``' ``save_to_disk``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rlhfkit.batch import Prompt
from rlhfkit.config import PromptDataCfg
from rlhfkit.data.files import read_rows
from rlhfkit.data.shapes import is_chat
from rlhfkit.data.shapes import prompt_text as prompt_text  # where the commands import it from
from rlhfkit.errors import DataError, RlhfkitError

CHAT_COLUMN = "messages"


def load_prompts(
    path: str | os.PathLike, field: str = "prompt", option: str = "--prompt_field"
) -> list[dict[str, Any]]:
    """The rows of a prompt file, each with its checked prompt under ``"prompt"``.

    The other columns are kept as they are (commands pass them through to their output); the
    column the prompt came from is removed, so it is not written twice. ``option`` is the
    flag that names the column, quoted in errors.
    """
    rows = _read_saved(Path(path)) if Path(path).is_dir() else read_rows(path)
    if not rows:
        raise DataError(f"{path}: holds no prompts; give a file with at least one row")
    prompts = []
    for number, row in enumerate(rows, start=1):
        source = field
        if field not in row and field == "prompt" and CHAT_COLUMN in row:
            source = CHAT_COLUMN
        if source not in row:
            found = ", ".join(sorted(row)) or "none"
            raise DataError(
                f"{path}: row {number} has no {field!r} column (columns: {found}); "
                f"name the prompt column with {option}"
            )
        prompt = check_prompt(row[source], f"{path}: row {number}")
        rest = {key: value for key, value in row.items() if key != source}
        prompts.append({**rest, "prompt": prompt})
    return prompts


def _read_saved(path: Path) -> list[dict[str, Any]]:
    """A ``save_to_disk`` directory's training rows (its train split, or its only one)."""
    from rlhfkit.data.feedback_source import read_saved_dataset

    return read_saved_dataset(path, "train")[0]


def check_prompt(value: Any, where: str) -> Prompt:
    """A prompt as given if it is usable, else a DataError that starts with ``where``."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: the prompt is empty; fill it in or remove the row")
        return value
    if not isinstance(value, list):
        raise DataError(
            f"{where}: the prompt is a {type(value).__name__}; give a string or a "
            'chat, a list of {"role": ..., "content": ...} messages'
        )
    if not value:
        raise DataError(f"{where}: the chat has no messages; give at least one user message")
    for index, message in enumerate(value):
        if not is_chat([message]):
            raise DataError(
                f"{where}: message {index} of the chat is not a "
                '{"role": str, "content": str} object'
            )
    if value[-1]["role"] == "assistant":
        raise DataError(
            f"{where}: the chat ends with an assistant message, so there is nothing "
            "to answer; end it with the user's turn (drop the final answer)"
        )
    if not value[-1]["content"].strip():
        raise DataError(f"{where}: the last message of the chat is empty; fill it in")
    return value


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
        rows = rows[: data.max_prompts]
    if split != "train":
        rows = rows[: data.eval_size]
    return rows


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
