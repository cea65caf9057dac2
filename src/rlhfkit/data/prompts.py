"""Prompt datasets: one prompt per row, as plain text or as a chat.

A row's prompt is read from its prompt column (``prompt`` unless told otherwise). The column
may hold a string or a chat, a list of ``{"role": ..., "content": ...}`` messages; a file
without a ``prompt`` column may instead have a ``messages`` column (the common chat format).
"""

from __future__ import annotations

import os
from typing import Any

from rlhfkit.batch import Prompt
from rlhfkit.data.files import read_rows
from rlhfkit.errors import DataError

CHAT_COLUMN = "messages"


def load_prompts(path: str | os.PathLike, field: str = "prompt",
                 option: str = "--prompt_field") -> list[dict[str, Any]]:
    """The rows of a prompt file, each with its checked prompt under ``"prompt"``.

    The other columns are kept as they are (commands pass them through to their output); the
    column the prompt came from is removed, so it is not written twice. ``option`` is the
    flag that names the column, quoted in errors.
    """
    rows = read_rows(path)
    if not rows:
        raise DataError(f"{path}: holds no prompts; give a file with at least one row")
    prompts = []
    for number, row in enumerate(rows, start=1):
        source = field
        if field not in row and field == "prompt" and CHAT_COLUMN in row:
            source = CHAT_COLUMN
        if source not in row:
            found = ", ".join(sorted(row)) or "none"
            raise DataError(f"{path}: row {number} has no {field!r} column (columns: {found}); "
                            f"name the prompt column with {option}")
        prompt = check_prompt(row[source], f"{path}: row {number}")
        rest = {key: value for key, value in row.items() if key != source}
        prompts.append({**rest, "prompt": prompt})
    return prompts


def check_prompt(value: Any, where: str) -> Prompt:
    """A prompt as given if it is usable, else a DataError that starts with ``where``."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: the prompt is empty; fill it in or remove the row")
        return value
    if not isinstance(value, list):
        raise DataError(f"{where}: the prompt is a {type(value).__name__}; give a string or a "
                        'chat, a list of {"role": ..., "content": ...} messages')
    if not value:
        raise DataError(f"{where}: the chat has no messages; give at least one user message")
    for index, message in enumerate(value):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise DataError(f"{where}: message {index} of the chat is not a "
                            '{"role": str, "content": str} object')
    if value[-1]["role"] == "assistant":
        raise DataError(f"{where}: the chat ends with an assistant message, so there is nothing "
                        "to answer; end it with the user's turn (drop the final answer)")
    if not value[-1]["content"].strip():
        raise DataError(f"{where}: the last message of the chat is empty; fill it in")
    return value
