"""The wiki-summaries asset: the source layout, fixed splits, malformed entries, the real file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from rlhfkit import assets
from rlhfkit.data import wiki
from rlhfkit.errors import DataError

TOPICS = ["People", "Mathematics", "Arts", "Uncategorized"]


def source_entries(count: int = 40) -> dict:
    """Entries in the layout of summaries_en-us.json: an object keyed by title."""
    return {
        f"Article {i}": {
            "title": f"Article {i}",
            "extract": f"Article {i} is about {TOPICS[i % 4].lower()} and a {i} more words.",
            "description": f"Thing number {i}" if i % 7 else "",
            "topic": TOPICS[i % 4],
        }
        for i in range(count)
    }


@pytest.fixture
def wiki_fixture(tmp_path, monkeypatch):
    """The asset built from a small file of the real layout (its own sha256), not the package."""
    package = tmp_path / "package"
    (package / "data").mkdir(parents=True)
    source = package / wiki.SOURCE_FILE
    source.write_text(json.dumps(source_entries()), encoding="utf-8")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    fake = replace(assets.ASSETS["wiki-summaries"], sha256=digest)
    monkeypatch.setitem(assets.ASSETS, "wiki-summaries", fake)
    monkeypatch.setattr(assets, "package_or_wheel", lambda asset, module, scratch: package)
    return source


def test_the_asset_is_built_from_the_source_and_split_by_title(wiki_fixture):
    everything = wiki.load_articles()
    assert len(everything) == 40
    assert everything[7] == wiki.Article("Article 7", everything[7].extract, "", "Uncategorized")
    splits = {split: wiki.load_articles(split) for split in wiki.SPLITS}
    titles = [{a.title for a in articles} for articles in splits.values()]
    assert sum(map(len, titles)) == 40 and not (titles[0] & titles[1] or titles[0] & titles[2])
    assert wiki.split_of("Article 3") == wiki.split_of("Article 3")  # a hash, not a shuffle
    assert wiki.topics(everything) == ["Arts", "Mathematics", "People"]
    manifest = assets.manifest("wiki-summaries")
    assert manifest["articles"] == 40 and manifest["skipped"] == []


def test_malformed_entries_are_named_with_file_and_entry(tmp_path):
    entries = source_entries(3)
    entries["Article 1"] = {"title": "Article 1", "extract": "text", "topic": "Arts"}
    entries["Article 2"]["extract"] = 5
    source = tmp_path / "summaries_en-us.json"
    source.write_text(json.dumps(entries))
    articles, skipped = wiki.read_source(source)
    assert [a.title for a in articles] == ["Article 0"]
    assert [(s["entry"], s["key"]) for s in skipped] == [(2, "Article 1"), (3, "Article 2")]
    assert "entry 2 ('Article 1'): no description" in skipped[0]["reason"]
    assert "extract not text" in skipped[1]["reason"]


def test_a_bad_cached_row_is_an_error_naming_file_and_row(wiki_fixture):
    path = assets.ensure("wiki-summaries") / wiki.ARTICLES_FILE
    lines = path.read_text().splitlines()
    lines[2] = json.dumps({"title": "x", "extract": "", "description": "", "topic": "Arts"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"articles.jsonl: row 3: empty extract"):
        wiki.load_articles()


@pytest.mark.slow
def test_the_real_file_has_its_articles_topics_and_splits():
    articles = wiki.load_articles()
    assert len(articles) == 10_033
    real = [a for a in articles if a.topic != wiki.UNCATEGORIZED]
    assert len(wiki.topics(articles)) == 11 and len(real) == 9_033
    counts = {t: sum(a.topic == t for a in real) for t in wiki.topics(articles)}
    assert max(counts.values()) == 1_828 and min(counts.values()) == 256
    test = wiki.load_articles("test")
    assert 900 < len(test) < 1_100
    assert not {a.title for a in test} & {a.title for a in wiki.load_articles("train")}
