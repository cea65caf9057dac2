"""VADER human ratings: archive parsing, the cached dataset, the fixed split."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import statistics
import tarfile
from pathlib import Path

import pytest

from rlhfkit import assets
from rlhfkit.data.vader import CORPORA, RatedText, load_vader, read_archive, split_of
from rlhfkit.errors import AssetError, ConfigError, DataError

# The same quirks as the real files: CRLF endings, no newline after the last row, a byte-order
# mark, HTML entities, non-ASCII text, a GroundTruth mean that is not the mean of the ratings.
SAMPLE = {
    "movieReviewSnippets_GroundTruth.txt": "1\t2.5\tA wonderful film \u2013 truly.\r\n"
    "2\t-1.0\tDull &amp; slow\r\n"
    "3\t0.0\tNeutral text",
    "movieReviewSnippets_anonDataRatings.txt": "1\t2.5\t0.5\t[2, 3]\r\n2\t-1.0\t1.0\t[0, -2]\r\n3\t0.0\t0.0\t[0, 0]",
    "tweets_GroundTruth.txt": "1\t1.0\tYay &lt;3\n",
    "tweets_anonDataRatings.txt": "1\t2.0\t0.0\t[2, 2]\n",
    "amazonReviewSnippets_GroundTruth.txt": "1_1\t-3.0\tit broke.  \r\n",
    "amazonReviewSnippets_anonDataRatings.txt": "\ufeff1_1\t-3.0\t1.0\t[-4, -2]\r\n",
    "nytEditorialSnippets_GroundTruth.txt": "1_1\t0.5\tLord &amp;amp; Taylor, a fine plan.\n",
    "nytEditorialSnippets_anonDataRatings.txt": "1_1\t0.5\t0.5\t[0, 1]\n",
}


def make_archive(path: Path, files: dict[str, str | bytes]) -> Path:
    """A vaderSentiment-like source archive holding the dataset archive, as on PyPI."""

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        member = tarfile.TarInfo(name)
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))

    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode("utf-8") if isinstance(content, str) else content
            add(tar, f"hutto_ICWSM_2014/{name}", data)
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "vaderSentiment-3.3.2/setup.py", b"")
        add(
            tar,
            "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
            inner.getvalue(),
        )
    return path


def test_archive_is_parsed_joined_and_cleaned(tmp_path):
    rated, report = read_archive(make_archive(tmp_path / "v.tar.gz", SAMPLE))
    assert report["counts"] == {"movies": 3, "tweets": 1, "amazon": 1, "nyt": 1}
    assert report["skipped"] == []
    assert rated[0] == RatedText(
        "movies", "1", "A wonderful film \u2013 truly.", 2.5, 0.5, (2.0, 3.0)
    )
    by_key = {(r.corpus, r.id): r for r in rated}
    assert by_key["movies", "2"].text == "Dull & slow"
    assert by_key["movies", "3"].text == "Neutral text"  # last row without a newline
    assert by_key["nyt", "1_1"].text == "Lord & Taylor, a fine plan."  # escaped twice
    assert by_key["amazon", "1_1"] == RatedText(
        "amazon", "1_1", "it broke.", -3.0, 1.0, (-4.0, -2.0)
    )
    tweet = by_key["tweets", "1"]
    assert tweet.text == "Yay <3" and tweet.mean == 2.0  # the ratings win over GroundTruth's 1.0
    assert any(note.startswith("tweets: 1 GroundTruth means differ") for note in report["notes"])
    assert any(note.startswith("movies: 1 texts HTML-unescaped") for note in report["notes"])


def test_malformed_rows_are_reported_not_dropped_silently(tmp_path):
    files = dict(SAMPLE)
    files["movieReviewSnippets_GroundTruth.txt"] = (
        "1\t2.5\tGood\n2\t-1.0\tBad\n3\t0.0\tMeh\n4\tnot-a-number\tBad mean\n"
        "5\t1.0\tNobody rated me\n1\t2.5\tGood again\n"
    )
    files["movieReviewSnippets_anonDataRatings.txt"] = (
        "1\t2.5\t0.5\t[2, 3]\n2\t-1.0\t1.0\t[0, -2]\n3\t0.0\t0.0\t[0, 0]\n6\t5.0\t0.0\t[5, 5]\n"
        "7\t1.0\t0.0\t[1, 1]\n8\t9.9\t0.0\t[1, 1]\n"
    )
    rated, report = read_archive(make_archive(tmp_path / "v.tar.gz", files))
    assert report["counts"]["movies"] == 3
    skipped = [(s["file"].split("_")[1], s["line"], s["reason"]) for s in report["skipped"]]
    assert skipped == [
        ("GroundTruth.txt", 4, "mean 'not-a-number' is not a number"),
        ("GroundTruth.txt", 6, "id '1' repeats line 1"),
        ("anonDataRatings.txt", 4, "ratings '[5, 5]' are not a list of whole numbers in -4..4"),
        ("anonDataRatings.txt", 6, "mean 9.9 is not the mean of its ratings (1.000000)"),
        ("GroundTruth.txt", 5, "id '5' has no individual ratings"),
        ("anonDataRatings.txt", 5, "id '7' has no text"),
    ]


def test_a_file_that_is_not_utf8_or_an_archive_without_the_dataset_is_refused(tmp_path):
    files = dict(SAMPLE)
    files["nytEditorialSnippets_GroundTruth.txt"] = b"1_1\t0.5\tcaf\xe9\n"
    not_utf8 = "nytEditorialSnippets_GroundTruth.txt: the byte at offset 11 is not UTF-8"
    with pytest.raises(DataError, match=not_utf8):
        read_archive(make_archive(tmp_path / "latin1.tar.gz", files))
    files = {name: text for name, text in SAMPLE.items() if not name.startswith("tweets")}
    with pytest.raises(DataError, match="no tweets_GroundTruth.txt inside"):
        read_archive(make_archive(tmp_path / "partial.tar.gz", files))
    (tmp_path / "junk.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read it as a .tar.gz"):
        read_archive(tmp_path / "junk.tar.gz")


@pytest.fixture
def synthetic_vader(tmp_path, monkeypatch) -> Path:
    """A tmp cache and RLHFKIT_VADER_ARCHIVE pointing at a synthetic archive, pinned by its hash."""
    archive = make_archive(tmp_path / "vaderSentiment-3.3.2.tar.gz", SAMPLE)
    monkeypatch.setenv("RLHFKIT_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RLHFKIT_VADER_ARCHIVE", str(archive))
    pinned = dataclasses.replace(
        assets.ASSETS["vader"], sha256=hashlib.sha256(archive.read_bytes()).hexdigest()
    )
    monkeypatch.setitem(assets.ASSETS, "vader", pinned)
    return archive


def test_load_vader_prepares_the_cache_and_filters(synthetic_vader):
    every = load_vader()
    assert assets.status("vader") == "ready"
    assert [(r.corpus, r.id) for r in every] == [
        ("movies", "1"),
        ("movies", "2"),
        ("movies", "3"),
        ("tweets", "1"),
        ("amazon", "1_1"),
        ("nyt", "1_1"),
    ]
    assert every == read_archive(synthetic_vader)[0]  # the cache round-trips exactly
    assert assets.manifest("vader")["counts"] == {"movies": 3, "tweets": 1, "amazon": 1, "nyt": 1}
    assert [r.id for r in load_vader("tweets")] == ["1"]
    assert [r.corpus for r in load_vader(["nyt", "amazon"])] == ["amazon", "nyt"]
    by_split = {split: load_vader(split=split) for split in ("train", "validation", "test")}
    assert sorted(sum(by_split.values(), []), key=every.index) == every
    for split, rows in by_split.items():
        assert all(split_of(r.corpus, r.id) == split for r in rows)


def test_the_archive_from_the_environment_is_still_verified(synthetic_vader, monkeypatch):
    real_sha256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
    monkeypatch.setitem(
        assets.ASSETS, "vader", dataclasses.replace(assets.ASSETS["vader"], sha256=real_sha256)
    )
    with pytest.raises(AssetError) as error:
        load_vader()
    found = hashlib.sha256(synthetic_vader.read_bytes()).hexdigest()
    assert "expected 5d7c06e0" in str(error.value) and f"found {found}" in str(error.value)
    assert assets.status("vader") == "missing"
    monkeypatch.setenv("RLHFKIT_VADER_ARCHIVE", str(synthetic_vader.parent / "absent.tar.gz"))
    with pytest.raises(AssetError, match="RLHFKIT_VADER_ARCHIVE=.*absent.tar.gz is not a file"):
        assets.prepare("vader")


def test_bad_corpus_or_split_names_are_config_errors(synthetic_vader):
    with pytest.raises(ConfigError, match="choose one or more of movies, tweets, amazon, nyt"):
        load_vader(["movie"])
    with pytest.raises(ConfigError, match="split 'dev'"):
        load_vader(split="dev")


def test_split_is_fixed_and_close_to_80_10_10():
    # pinned: changing the hash would silently move texts between train and test
    assert [split_of("movies", str(i)) for i in (1, 4, 17)] == ["train", "test", "validation"]
    assert split_of("tweets", "1") == "test" and split_of("amazon", "1_1") == "train"
    counts = collections.Counter(split_of("movies", str(i)) for i in range(20_000))
    assert abs(counts["train"] / 20_000 - 0.8) < 0.01
    assert abs(counts["validation"] / 20_000 - 0.1) < 0.01
    assert abs(counts["test"] / 20_000 - 0.1) < 0.01


@pytest.mark.slow
def test_real_vader_ratings(monkeypatch):
    monkeypatch.delenv("RLHFKIT_HOME", raising=False)
    monkeypatch.delenv("RLHFKIT_VADER_ARCHIVE", raising=False)
    rated = load_vader()
    counts = collections.Counter(r.corpus for r in rated)
    assert counts == {"movies": 10605, "tweets": 4200, "amazon": 3708, "nyt": 5190}
    assert sum(len(r.ratings) for r in rated) == 536_520
    assert set(CORPORA) == set(counts)
    for r in rated:
        assert r.text and r.ratings and all(-4 <= x <= 4 for x in r.ratings)
        assert r.mean == pytest.approx(statistics.fmean(r.ratings))
    assert not any("&amp;" in r.text for r in rated)
    splits = collections.Counter(split_of(r.corpus, r.id) for r in rated)
    assert abs(splits["train"] / len(rated) - 0.8) < 0.01
    positive = [r.mean for r in rated if "wonderful" in r.text.lower()]
    negative = [r.mean for r in rated if "terrible" in r.text.lower()]
    assert statistics.fmean(positive) > 1 and statistics.fmean(negative) < -1
