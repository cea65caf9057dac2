"""VADER human sentiment ratings: 23,703 short texts, 536,520 human ratings from -4 to +4.

Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media
Text", ICWSM 2014 (MIT licence). The data ships inside the vaderSentiment 3.3.2 source archive
as ``additional_resources/hutto_ICWSM_2014.tar.gz``; ``build_ratings`` (the ``vader`` entry of
``rlhfkit.assets``) verifies that archive and calls ``read_archive`` once to write
``ratings.jsonl`` into the cache, which ``load_vader`` reads.

Four corpora, one pair of tab-separated files each: ``X_GroundTruth.txt`` (id, mean, text) and
``X_anonDataRatings.txt`` (id, mean, stdev, list of individual ratings):

============  ===========================  ======  =========================
corpus        source                       texts   raters per text
============  ===========================  ======  =========================
movies        Rotten Tomatoes snippets     10,605  15 to 29
tweets        tweets and tweet-like texts   4,200  20 (1,000 texts: 92-99)
amazon        Amazon review snippets        3,708  20
nyt           NYT editorial snippets        5,190  20
============  ===========================  ======  =========================

Cleaning, all of it reported in the cache manifest: texts are stripped and HTML-unescaped (237
texts carry ``&amp;``, ``&lt;3`` ..., a few of them escaped twice); ``mean`` and
``stdev`` are recomputed from the individual ratings (population stdev, as the source files
use). For 199 tweets the GroundTruth mean is not the mean of the listed ratings (it differs by
up to 1.13); the listed ratings are what people said, so they win, and the manifest counts them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import statistics
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlhfkit import assets
from rlhfkit.config import CORPORA
from rlhfkit.data.files import read_rows, write_jsonl
from rlhfkit.errors import AssetError, ConfigError, DataError
from rlhfkit.progress import steps

SPLITS = ("train", "validation", "test")
RATINGS_FILE = "ratings.jsonl"
ARCHIVE_ENV = "RLHFKIT_VADER_ARCHIVE"  # a local vaderSentiment-3.3.2.tar.gz, instead of pip's

INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
FILE_STEMS = {
    "movies": "movieReviewSnippets",
    "tweets": "tweets",
    "amazon": "amazonReviewSnippets",
    "nyt": "nytEditorialSnippets",
}
RATING_SCALE = (-4, 4)
_TOLERANCE = 1e-6  # the files print means to 9-10 digits
_ENTITIES = {"&amp;": "&", "&lt;": "<", "&gt;": ">", "&quot;": '"'}
_ENTITY = re.compile("|".join(_ENTITIES))


@dataclass(frozen=True)
class RatedText:
    """One text and every human rating of its sentiment, from -4 (very negative) to +4."""

    corpus: str
    id: str  # unique within its corpus only ("1", "309_8")
    text: str
    mean: float
    stdev: float  # population standard deviation of ``ratings``
    ratings: tuple[float, ...]


def split_of(corpus: str, id: str) -> str:
    """The fixed split of one text: "train" (80%), "validation" (10%) or "test" (10%).

    The first 8 bytes of sha256("corpus:id") taken modulo 10: 0-7 train, 8 validation, 9 test.
    A hash, not a shuffle, so the split never depends on a seed, on which corpora are loaded or
    on their order, and a text never moves between splits across versions or machines.
    """
    digest = hashlib.sha256(f"{corpus}:{id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10
    return "train" if bucket < 8 else "validation" if bucket == 8 else "test"


def load_vader(corpora: Iterable[str] = CORPORA, split: str | None = None) -> list[RatedText]:
    """The rated texts of ``corpora`` (all four by default), optionally of one split only.

    Prepares the cached ratings on first use (``rlhfkit assets prepare vader``).
    """
    chosen = (corpora,) if isinstance(corpora, str) else tuple(corpora)
    unknown = [c for c in chosen if c not in CORPORA]
    if unknown or not chosen:
        raise ConfigError(
            f"VADER corpora {list(chosen)}: choose one or more of {', '.join(CORPORA)}"
        )
    if split is not None and split not in SPLITS:
        raise ConfigError(
            f"VADER split {split!r}: choose one of {', '.join(SPLITS)}, or none for all"
        )
    rows = read_rows(assets.ensure("vader") / RATINGS_FILE)
    return [
        RatedText(**{**row, "ratings": tuple(float(r) for r in row["ratings"])})
        for row in rows
        if row["corpus"] in chosen
        and (split is None or split_of(row["corpus"], row["id"]) == split)
    ]


# --- reading the source archive (once, when the cache entry is prepared) -------------------------


def build_ratings(asset: assets.Asset, out: Path) -> dict[str, Any]:
    """Parse the human ratings out of the vaderSentiment source archive into ratings.jsonl."""
    with steps(f"preparing {asset.name}", total=4) as step:
        step("getting the source archive")
        with tempfile.TemporaryDirectory(prefix="rlhfkit-vader-") as scratch:
            given = os.environ.get(ARCHIVE_ENV)
            if given:
                archive = Path(given).expanduser()
                if not archive.is_file():
                    raise AssetError(
                        f"asset 'vader': {ARCHIVE_ENV}={given} is not a file; point "
                        "it at vaderSentiment-3.3.2.tar.gz from PyPI, or unset it"
                    )
            else:
                archive = assets.pip_download(
                    asset,
                    Path(scratch),
                    sdist=True,
                    fix=(f"or fetch vaderSentiment-3.3.2.tar.gz elsewhere and set {ARCHIVE_ENV}"),
                )
            step("verifying sha256")
            assets.check_sha256(
                asset,
                archive,
                fix=f"point {ARCHIVE_ENV} at the file from PyPI"
                if given
                else "clear pip's copy (pip cache remove vaderSentiment), retry",
            )
            step("parsing the ratings")
            rated, report = read_archive(archive)
        step("writing ratings.jsonl")
        write_jsonl(out / RATINGS_FILE, ({**asdict(r), "ratings": list(r.ratings)} for r in rated))
    counts = report["counts"]
    judgements = sum(len(r.ratings) for r in rated)
    summary = (
        f"{len(rated):,} texts ({', '.join(f'{c} {n:,}' for c, n in counts.items())}), "
        f"{judgements:,} human ratings"
    )
    if report["skipped"]:
        summary += f"; {len(report['skipped'])} malformed source rows skipped (see manifest)"
    return {
        "file": archive.name,
        "texts": len(rated),
        "ratings": judgements,
        **report,
        "summary": summary,
    }


def read_archive(archive: Path) -> tuple[list[RatedText], dict[str, Any]]:
    """Every rated text in a vaderSentiment source archive, and a report of what was done.

    The report has ``counts`` (texts per corpus), ``skipped`` (each malformed or unmatched
    source row: file, line, reason; nothing is dropped without an entry here) and ``notes``
    (cleaning and disagreements, one sentence each).
    """
    files = _dataset_files(archive)
    rated: list[RatedText] = []
    report: dict[str, Any] = {"counts": {}, "skipped": [], "notes": []}
    for corpus in CORPORA:
        stem = FILE_STEMS[corpus]
        texts = _read_table(files, f"{stem}_GroundTruth.txt", _parse_truth, report)
        rows = _read_table(files, f"{stem}_anonDataRatings.txt", _parse_ratings, report)
        unescaped = mean_differs = 0
        largest_difference = 0.0
        for id, (line, (truth_mean, raw_text)) in texts.items():
            if id not in rows:
                report["skipped"].append(
                    _skip(f"{stem}_GroundTruth.txt", line, f"id {id!r} has no individual ratings")
                )
                continue
            ratings = rows[id][1]
            text = _unescape(raw_text)
            unescaped += text != raw_text
            mean = statistics.fmean(ratings)
            if abs(mean - truth_mean) > _TOLERANCE:
                mean_differs += 1
                largest_difference = max(largest_difference, abs(mean - truth_mean))
            rated.append(RatedText(corpus, id, text, mean, statistics.pstdev(ratings), ratings))
        for id, (line, _) in rows.items():
            if id not in texts:
                report["skipped"].append(
                    _skip(f"{stem}_anonDataRatings.txt", line, f"id {id!r} has no text")
                )
        report["counts"][corpus] = sum(r.corpus == corpus for r in rated)
        if unescaped:
            report["notes"].append(f"{corpus}: {unescaped} texts HTML-unescaped (&amp; -> &, ...)")
        if mean_differs:
            report["notes"].append(
                f"{corpus}: {mean_differs} GroundTruth means differ from the mean of the listed "
                f"ratings (by up to {largest_difference:.2f}); the listed ratings are used"
            )
    return rated, report


def _dataset_files(archive: Path) -> dict[str, bytes]:
    """The dataset's files by base name, read from the archive inside the archive (in memory:
    nothing from an archive is ever written to disk under a name it chose)."""
    try:
        with tarfile.open(archive, "r:gz") as outer:
            member = next(
                (m for m in outer.getmembers() if m.isfile() and m.name.endswith(INNER_ARCHIVE)),
                None,
            )
            if member is None:
                raise DataError(
                    f"{archive}: no {INNER_ARCHIVE} inside; give the "
                    "vaderSentiment-3.3.2.tar.gz source archive from PyPI"
                )
            inner_bytes = outer.extractfile(member).read()
        with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
            return {
                Path(m.name).name: inner.extractfile(m).read()
                for m in inner.getmembers()
                if m.isfile()
            }
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(
            f"{archive}: cannot read it as a .tar.gz ({e}); give the "
            "vaderSentiment-3.3.2.tar.gz source archive from PyPI"
        ) from None


def _read_table(
    files: dict[str, bytes], name: str, parse: Callable[[list[str]], Any], report: dict[str, Any]
) -> dict[str, tuple[int, Any]]:
    """Rows of one tab-separated file by id, each with its line number; bad rows go to report."""
    if name not in files:
        raise DataError(
            f"{INNER_ARCHIVE}: no {name} inside; the archive is not vaderSentiment 3.3.2"
        )
    try:
        text = files[name].decode("utf-8-sig")  # one file starts with a byte-order mark
    except UnicodeDecodeError as e:
        raise DataError(
            f"{name}: the byte at offset {e.start} is not UTF-8; the archive is not "
            "vaderSentiment 3.3.2"
        ) from None
    table: dict[str, tuple[int, Any]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        id = fields[0].strip()
        try:
            value = parse(fields)
        except ValueError as e:
            report["skipped"].append(_skip(name, number, str(e)))
            continue
        if id in table:
            report["skipped"].append(_skip(name, number, f"id {id!r} repeats line {table[id][0]}"))
            continue
        table[id] = (number, value)
    return table


def _parse_truth(fields: list[str]) -> tuple[float, str]:
    """(mean, text) of a GroundTruth row: id, mean, text."""
    if len(fields) < 3:
        raise ValueError(f"{len(fields)} tab-separated fields, expected 3 (id, mean, text)")
    text = "\t".join(fields[2:]).strip()
    if not text:
        raise ValueError("empty text")
    return _number(fields[1], "mean"), text


def _parse_ratings(fields: list[str]) -> tuple[float, ...]:
    """The individual ratings of an anonDataRatings row: id, mean, stdev, [ratings]."""
    if len(fields) != 4:
        raise ValueError(
            f"{len(fields)} tab-separated fields, expected 4 (id, mean, stdev, ratings)"
        )
    try:
        ratings = json.loads(fields[3])
    except json.JSONDecodeError:
        raise ValueError(f"ratings {fields[3][:40]!r} are not a list of numbers") from None
    low, high = RATING_SCALE
    if (
        not isinstance(ratings, list)
        or not ratings
        or not all(isinstance(r, int) and low <= r <= high for r in ratings)
    ):
        raise ValueError(
            f"ratings {fields[3][:40]!r} are not a list of whole numbers in {low}..{high}"
        )
    mean, stdev = _number(fields[1], "mean"), _number(fields[2], "stdev")
    actual_mean, actual_stdev = statistics.fmean(ratings), statistics.pstdev(ratings)
    if abs(actual_mean - mean) > _TOLERANCE:
        raise ValueError(f"mean {mean} is not the mean of its ratings ({actual_mean:.6f})")
    if abs(actual_stdev - stdev) > 1e-4:  # stdevs are printed to 5 decimals
        raise ValueError(f"stdev {stdev} is not the stdev of its ratings ({actual_stdev:.5f})")
    return tuple(float(r) for r in ratings)


def _unescape(text: str) -> str:
    """Undo the source's HTML escaping, repeatedly: 8 NYT texts were escaped twice (``&amp;amp;``).

    Only the entities the source uses: ``html.unescape`` would also turn ``&not`` into ``¬``.
    """
    while (unescaped := _ENTITY.sub(lambda m: _ENTITIES[m[0]], text)) != text:
        text = unescaped  # each pass shortens the text, so this ends
    return text


def _number(field: str, what: str) -> float:
    try:
        return float(field)
    except ValueError:
        raise ValueError(f"{what} {field!r} is not a number") from None


def _skip(file: str, line: int, reason: str) -> dict[str, Any]:
    return {"file": file, "line": line, "reason": reason}
