"""Read rows from JSONL / CSV / Parquet / plain-text files; write JSONL atomically.

Every reader reports a malformed row with its file and line number, so a user can open the
file at the right place; nothing here ever drops a row silently.
"""

from __future__ import annotations

import csv
import json
import os
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
        with path.open(newline="", encoding="utf-8") as f:
            return [dict(row) for row in csv.DictReader(f)]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [{"prompt": line} for line in lines if line.strip()]
    raise DataError(f"{path}: unknown data format {suffix!r}; use one of {', '.join(FORMATS)}")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        rows = json.loads(text)
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise DataError(f"{path}: item {number} is {type(row).__name__}, expected an object")
        return rows
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{number}: malformed JSON ({e.msg} at column {e.colno}); "
                            "each line must be one JSON object") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: a JSON {type(row).__name__}, expected an object "
                            'such as {"prompt": "..."}')
        rows.append(row)
    return rows


def column(rows: list[dict[str, Any]], name: str, path: str | os.PathLike, option: str) -> list[Any]:
    """Values of one column; a row without it is an error naming the row and the option to fix."""
    values = []
    for number, row in enumerate(rows, start=1):
        if name not in row:
            found = ", ".join(sorted(row)) or "none"
            raise DataError(f"{path}: row {number} has no {name!r} column (columns: {found}); "
                            f"name the right one with {option}")
        values.append(row[name])
    return values


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
