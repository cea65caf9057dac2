"""Where the rows of a feedback split come from, and how a bad row is reported.

``rlhfkit.data.feedback`` turns rows into demonstrations, pairs, ratings and labels; this module
does what every kind shares: find the data that serves a split (a file, a ``save_to_disk``
directory, or a built-in set, which ``feedback`` reads itself), hold out the eval rows of a user
file by a hash of each row, read one cell of a row with the checks every column needs, and stop
at a bad row or skip it, counted in one warning.

A bad cell raises ``BadRow`` with a short reason (what warnings count by, like "empty
'chosen'"), a detail (the value, the columns found) and the fix; ``parse_rows`` turns it into
a ``DataError`` that names the file and the row, or counts it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rlhfkit.config import TASK_SETS
from rlhfkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from rlhfkit.config import FeedbackDataCfg

BUILTIN_PREFIX = "vader:"
TASK_SPLITS = {"train": "train", "eval": "validation", "test": "test"}
FILE_FORMATS = (".jsonl", ".json", ".csv", ".parquet")
SPLITS = ("train", "eval", "test")
SHOWN_ROWS = 5  # row numbers listed per reason in a skip warning

Message = dict[str, str]  # {"role": ..., "content": ...}
Row = dict[str, Any]
T = TypeVar("T")


def split_rows(cfg: FeedbackDataCfg, split: str) -> tuple[str, list[tuple[int, Row]] | None]:
    """What serves one split: (name, its rows with their 1-based row numbers in the file), or
    (name, None) for a built-in set."""
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    name = cfg.eval_path if split == "eval" and cfg.eval_path else cfg.path
    if name.partition(":")[0] in TASK_SETS:  # prompt + gold completion rows, fixed splits
        from rlhfkit.data.builtin import load_builtin

        rows = load_builtin(name, TASK_SPLITS[split], "path")
        return name, list(enumerate(rows, start=1))
    if name.startswith(BUILTIN_PREFIX):
        return name, None
    if split == "test":
        raise ConfigError(
            f"split 'test': only built-in sets have one; {name} is split into "
            "train and eval (set --data.eval_path or --data.eval_fraction)"
        )
    rows, own_split = _read(name, split)
    numbered = list(enumerate(rows, start=1))
    if cfg.eval_path or own_split:
        return name, numbered
    kept = [
        (row_number, row)
        for row_number, row in numbered
        if is_held_out(_split_key(row, cfg), cfg.eval_fraction) == (split == "eval")
    ]
    if split == "eval" and not kept and numbered and cfg.eval_fraction > 0:
        warnings.warn(
            f"{name}: none of its {len(numbered):,} rows falls in the held-out "
            f"{cfg.eval_fraction:g} (data.eval_fraction), so nothing is evaluated; "
            "give --data.eval_path or a larger --data.eval_fraction",
            stacklevel=3,
        )
    return name, kept


def no_held_out(cfg: FeedbackDataCfg, split: str, rows: list[tuple[int, Row]] | None) -> bool:
    """True when a small file left the hashed eval split empty (warned in ``split_rows``): the
    loaders then return no rows instead of an error, and training runs without evaluation."""
    return split == "eval" and not cfg.eval_path and rows == []


def _read(name: str, split: str) -> tuple[list[Row], bool]:
    """The rows of a file or saved dataset, and whether they are already the split asked for."""
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        return read_saved_dataset(path, split)
    if path.suffix.lower() not in FILE_FORMATS:
        raise DataError(
            f"{name}: not a feedback data format; give a "
            f"{', '.join(FILE_FORMATS)} file or a dataset saved by save_to_disk"
        )
    from rlhfkit.data.files import read_rows

    return read_rows(path), False


def read_saved_dataset(path: Path, split: str) -> tuple[list[Row], bool]:
    """Rows of a ``save_to_disk`` directory. Of a DatasetDict: eval reads its "validation" (else
    "test") split and train its "train" split; without either held-out split, the train split
    (or its only split) serves both, divided by the row hash."""
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise DataError(
            f"{path}: reading a saved Hugging Face dataset needs the datasets "
            "package; pip install datasets"
        ) from None
    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(
            f"{path}: not a dataset saved by save_to_disk ({e}); give that directory or a data file"
        ) from None
    if not isinstance(data, DatasetDict):
        return data.to_list(), False
    held_out = next((name for name in ("validation", "test") if name in data), None)
    if split == "eval" and held_out:
        return data[held_out].to_list(), True
    main = "train" if "train" in data else next(iter(data)) if len(data) == 1 else None
    if main is None:
        raise DataError(
            f"{path}: a DatasetDict with splits {', '.join(data)}, none named "
            "train; save the training rows as its 'train' split"
        )
    return data[main].to_list(), held_out is not None


def _split_key(row: Row, cfg: FeedbackDataCfg) -> str:
    """What the eval hash reads: every rating of one text (several annotators' rows) goes to the
    same split, so no text is both trained and evaluated on; any other row is hashed whole."""
    if cfg.rating_field in row:
        row = {"prompt": row.get(cfg.prompt_field), "completion": row.get(cfg.completion_field)}
    return json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)


def is_held_out(key: str, eval_fraction: float) -> bool:
    """True for ``eval_fraction`` of keys: the first 8 bytes of sha256 as a number in [0, 1)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction


def file_kind(
    name: str,
    rows: list[tuple[int, Row]],
    cfg: FeedbackDataCfg,
    options: tuple[str, ...],
    accepted: str,
) -> str:
    """Which of the column options (config field names) the first row has: what the file holds.
    ``accepted`` lists the shapes the caller reads, for the error when it has none."""
    if not rows:
        return options[0]  # nothing to look at: parse_rows reports the empty split
    number, first = rows[0]
    found = next((option for option in options if getattr(cfg, option) in first), None)
    if found is None:
        columns = ", ".join(map(str, first)) or "none"
        flags = "/".join(f"--data.{option}" for option in options)
        raise DataError(
            f"{name}: row {number} fits no accepted shape (columns: {columns}); "
            f"accepted: {accepted}; rename the columns or map them with {flags}"
        )
    return found


# --- parsing rows --------------------------------------------------------------------------------


class BadRow(Exception):
    """A row that cannot be used: a short reason (warnings count by it), a detail, the fix."""

    def __init__(self, reason: str, fix: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.fix, self.detail = reason, fix, detail


def parse_rows(
    name: str,
    split: str,
    rows: list[tuple[int, Row]],
    cfg: FeedbackDataCfg,
    parse: Callable[[Row, FeedbackDataCfg], T],
) -> list[T]:
    """Every usable row; bad rows stop the load or (on_bad_row="skip") warn once, counted."""
    parsed, skipped = [], {}
    for row_number, row in rows:
        try:
            parsed.append(parse(row, cfg))
        except BadRow as bad:
            if cfg.on_bad_row == "error":
                raise DataError(
                    f"{name}: row {row_number}: {bad.reason}{bad.detail}; {bad.fix}, "
                    "or pass --data.on_bad_row skip to drop such rows"
                ) from None
            skipped.setdefault(bad.reason, []).append(row_number)
    if skipped:
        counts = []
        for reason, numbers in skipped.items():
            shown = ", ".join(map(str, numbers[:SHOWN_ROWS])) + (
                ", ..." if len(numbers) > SHOWN_ROWS else ""
            )
            counts.append(f"{len(numbers):,} {reason} (row{'s' * (len(numbers) > 1)} {shown})")
        summary = (
            f"skipped {len(rows) - len(parsed):,} of {len(rows):,} {split} rows of "
            f"{name}: {', '.join(counts)}"
        )
        if not parsed:
            raise DataError(f"{name}: no usable {split} rows; {summary}")
        warnings.warn(summary, stacklevel=3)
    if not parsed and not no_held_out(cfg, split, rows):
        raise DataError(
            f"{name}: no {split} rows; give a file with rows (eval takes "
            "--data.eval_fraction of a file's rows, or all of --data.eval_path)"
        )
    return parsed


def column(row: Row, cfg: FeedbackDataCfg, option: str) -> Any:
    """The cell of the column that config field ``option`` (e.g. "chosen_field") names."""
    name = getattr(cfg, option)
    if name not in row:
        columns = ", ".join(map(str, row)) or "none"
        raise BadRow(
            f"no {name!r} column", f"name the column with --data.{option}", f" (columns: {columns})"
        )
    return row[name]


def text(row: Row, cfg: FeedbackDataCfg, option: str) -> str:
    """A cell that must hold text: a completion, chosen or rejected (empty is bad)."""
    value, name = column(row, cfg, option), getattr(cfg, option)
    if value is None or isinstance(value, str) and not value.strip():
        raise BadRow(f"empty {name!r}", "fill it in or remove the row")
    if not isinstance(value, str):
        raise BadRow(f"{name!r} not text", "give a string", f" (a {type(value).__name__})")
    return value


def prompt(row: Row, cfg: FeedbackDataCfg) -> str:
    """The prompt: may be empty (a text judged alone); prompt_field "" means the data have none."""
    if not cfg.prompt_field:
        return ""
    value = column(row, cfg, "prompt_field")
    if value is not None and not isinstance(value, str):
        raise BadRow(
            f"{cfg.prompt_field!r} not text", "give a string", f" (a {type(value).__name__})"
        )
    return value or ""


def number(value: Any, name: str) -> float:
    """A finite number from a number or a numeric string (true/false are not numbers)."""
    numeric = isinstance(value, (int, float, str)) and not isinstance(value, bool)
    try:
        result = float(value) if numeric else math.nan
    except ValueError:  # a string that is not a number
        result = math.nan
    if not math.isfinite(result):
        raise BadRow(f"{name!r} not a number", "give a finite number", f" ({value!r})")
    return result


def weight(row: Row, cfg: FeedbackDataCfg) -> float:
    """The row's weight column, 1 without one; weights must be >= 0."""
    if cfg.weight_field not in row:
        return 1.0
    value = number(row[cfg.weight_field], cfg.weight_field)
    if value < 0:
        raise BadRow(f"negative {cfg.weight_field!r}", "give a weight >= 0", f" ({value:g})")
    return value


# read into the row's ``finished`` flags (``finished``), so not carried again as other columns
FINISHED_COLUMNS = ("finished", "chosen_finished", "rejected_finished")


def finished(row: Row, column: str = "finished") -> bool:
    """The row's ``finished`` column (a pair's ``chosen_finished`` / ``rejected_finished``),
    true without one: false marks a completion cut off by a length limit (a sampled one), after
    which no end of text is learned."""
    value = row.get(column, True)
    if not isinstance(value, bool):
        raise BadRow(
            f"non-boolean {column!r}",
            "give true, or false for a completion cut off before its end",
            f" ({value!r})",
        )
    return value


def chat(value: Any, name: str) -> tuple[tuple[Message, ...], str]:
    """(prompt messages, reply) of a chat that ends with the assistant's reply."""
    if not (
        isinstance(value, list)
        and len(value) >= 2
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    ):
        raise BadRow(
            f"malformed {name!r}",
            'give a list of {"role": ..., "content": ...} '
            "messages: at least one prompt message, then the reply",
        )
    if value[-1]["role"] != "assistant":
        raise BadRow(
            f"{name!r} not ending with an assistant turn",
            "end the chat with the assistant's reply, which is the completion",
            f" (last role {value[-1]['role']!r})",
        )
    if not value[-1]["content"].strip():
        raise BadRow(f"empty reply in {name!r}", "fill in the assistant's reply")
    messages = tuple({"role": m["role"], "content": m["content"]} for m in value[:-1])
    return messages, value[-1]["content"]


def other_columns(row: Row, cfg: FeedbackDataCfg, *options: str) -> dict[str, Any]:
    """The row's other columns: provenance and ids the user may need back."""
    used = {getattr(cfg, option) for option in options} | set(FINISHED_COLUMNS)
    return {key: value for key, value in row.items() if key not in used}
