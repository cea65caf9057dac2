"""Read rows from JSONL / CSV / Parquet / plain-text files; write JSONL atomically.

Every reader reports a malformed row with its file and line number, so a user can open the
file at the right place; nothing here ever drops a row silently. A file that is not what its
suffix says (binary data named .jsonl, a damaged Parquet file) is a ``DataError`` too, never a
parser's traceback.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from rlhfkit.errors import DataError

FORMATS = (".jsonl", ".json", ".csv", ".parquet", ".txt")


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a data file as dicts. Format by suffix: .jsonl/.json, .csv, .parquet, .txt.

    A .txt file gives one row per non-empty line, as ``{"prompt": line}``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix == ".txt":
        lines = _read_text(path).splitlines()
        return [{"prompt": line} for line in lines if line.strip()]
    raise DataError(f"{path}: unknown data format {suffix!r}; use one of {', '.join(FORMATS)}")


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file's contents; a missing, binary or non-UTF-8 file is a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; check the path")
    return _read_text(path)


def _read_text(path: Path) -> str:
    """A text file's contents; a binary or non-UTF-8 file is a DataError naming the line."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}); check its permissions") from None
    if b"\0" in data:  # valid UTF-8 may hold NUL, but no text file does
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: holds NUL bytes, so it is a binary file (or UTF-16 "
            f"text), not {path.suffix} text; give a UTF-8 text file"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the "
            "file as UTF-8, or check it is the file you meant"
        ) from None


def _read_csv(path: Path) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        return [dict(row) for row in reader]
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e}); fix that line") from None


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(
            f"{path}: not a readable Parquet file ({str(e).splitlines()[0]}); "
            "write it again, or check it is the file you meant"
        ) from None


# a JSON escape of a UTF-16 surrogate: only a row with one can decode to a lone surrogate
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    text = _read_text(path)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno}); "
                "a .json file holds one array of objects"
            ) from None
        escapes = _SURROGATE_ESCAPE.search(text) is not None
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise DataError(
                    f"{path}: item {number} is {type(row).__name__}, expected an object"
                )
            if escapes:
                _check_text(row, f"{path}: item {number}")
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}:{number}: malformed JSON ({e.msg} at column {e.colno}); "
                "each line must be one JSON object"
            ) from None
        if not isinstance(row, dict):
            raise DataError(
                f"{path}:{number}: a JSON {type(row).__name__}, expected an object "
                'such as {"prompt": "..."}'
            )
        if _SURROGATE_ESCAPE.search(line):
            _check_text(row, f"{path}:{number}")
        rows.append(row)
    return rows


def _check_text(row: dict[str, Any], where: str) -> None:
    """A JSON escape such as \\ud800 without its pair decodes to a lone surrogate, which no
    tokenizer, database or UTF-8 file takes; name the column here instead of failing later."""

    def lone(value: Any) -> str | None:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"\\u{ord(value[e.start]):04x}"
            return None
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):  # a chat: its messages' roles and contents
            return next((found for item in value if (found := lone(item))), None)
        return None

    for key, value in row.items():
        if found := lone(key) or lone(value):
            raise DataError(
                f"{where}: column {key!r} holds a lone surrogate ({found}, half of "
                "a UTF-16 pair), which is not text; fix or remove that escape"
            )


def column(
    rows: list[dict[str, Any]], name: str, path: str | os.PathLike, option: str
) -> list[Any]:
    """Values of one column; a row without it is an error naming the row and the option to fix."""
    values = []
    for number, row in enumerate(rows, start=1):
        if name not in row:
            found = ", ".join(sorted(row)) or "none"
            raise DataError(
                f"{path}: row {number} has no {name!r} column (columns: {found}); "
                f"name the right one with {option}"
            )
        values.append(row[name])
    return values


def prompts_and_completions(
    rows: list[dict[str, Any]], path: str | os.PathLike, prompt_field: str, completion_field: str
) -> tuple[list[str], list[str]]:
    """The prompt and completion columns of rows to score (``--prompt_field`` /
    ``--completion_field``), checked as text; an empty ``prompt_field`` gives empty prompts."""
    completions = column(rows, completion_field, path, "--completion_field")
    prompts = (
        column(rows, prompt_field, path, "--prompt_field") if prompt_field else [""] * len(rows)
    )
    for name, values in ((prompt_field, prompts), (completion_field, completions)):
        for number, value in enumerate(values, start=1):
            if not isinstance(value, str):
                raise DataError(
                    f"{path}: row {number}: {name!r} is {type(value).__name__}, expected text"
                )
    return prompts, completions


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text file that replaces ``path`` in one step when the block ends without an error.

    Readers see the old file (or none) or the new one, never half; on an error the old file is
    left as it was and the temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows as JSONL atomically: a crash leaves the old file (or none), never half a file."""
    with atomic_file(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
