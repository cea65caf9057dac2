"""Exports of labels: each form on hand-built labels, what is skipped and why, provenance, and
round trips through the loaders the training commands use."""

from __future__ import annotations

import itertools

import pytest

from rlhfkit.config import FeedbackDataCfg
from rlhfkit.data.feedback import load_demonstrations, load_labeled, load_pairs, load_ratings
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.feedback.export import export, export_rows, write_export
from rlhfkit.feedback.records import LabelRecord, OutputRecord

GENERATION = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 64}


def output(output_id: int, text: str, model: str = "smollm2") -> OutputRecord:
    return OutputRecord(
        output_id,
        text,
        model,
        f"sha256:{model}",
        GENERATION,
        1000 + output_id,
        "2026-11-20T09:00:00Z",
    )


GOOD, BAD, MEH = output(1, "Paris."), output(2, "Lyon, I think.", "tiny"), output(3, "France?")
EMPTY = output(4, "  ")
_label_ids = itertools.count(1)


def label(
    task: int, kind: str, outputs: tuple[OutputRecord, ...], annotator: str = "alice", **answer
) -> LabelRecord:
    return LabelRecord(
        next(_label_ids),
        "capitals",
        task,
        kind,
        annotator,
        "Capital of France?",
        outputs,
        created_at="2026-11-21T12:00:00Z",
        **answer,
    )


PAIRWISE = [
    label(1, "pairwise", (GOOD, BAD), choice="A"),
    label(2, "pairwise", (BAD, GOOD), "bob", choice="B", critique="A guesses"),
    label(3, "pairwise", (GOOD, MEH), choice="tie"),
    label(4, "pairwise", (BAD, MEH), choice="both_bad"),
    label(5, "pairwise", (BAD, GOOD), choice="A", flags=("factually_wrong",)),
    label(6, "pairwise", (GOOD, BAD), choice="A", is_gold=True),
    label(7, "pairwise", (GOOD, output(5, "Paris."))),  # no answer: not part of any export
]
RANKING = label(8, "ranking", (MEH, GOOD, BAD), ranking=(1, 0, 2))
SINGLE = [
    label(9, "rating", (GOOD,), rating=6.0, thumbs=True),
    label(9, "rating", (GOOD,), "bob", rating=4.0),
    label(10, "rating", (BAD,), thumbs=True, flags=("factually_wrong",)),
    label(11, "rating", (EMPTY,), thumbs=False),
    label(12, "critique", (MEH,), critique="Answer with the city, not the country."),
    label(13, "correction", (BAD,), correction="Paris.", flags=("factually_wrong",)),
    label(14, "correction", (MEH,), "bob", correction="The capital of France is Paris."),
]
LABELS = [*PAIRWISE, RANKING, *SINGLE]


def texts(rows, *columns):
    return [tuple(row[column] for column in columns) for row in rows]


def test_pairs_from_choices_and_rankings():
    pairs = export(LABELS, "pairs")
    assert texts(pairs.rows, "chosen", "rejected", "task_id") == [
        ("Paris.", "Lyon, I think.", 1),
        ("Paris.", "Lyon, I think.", 2),
        ("Paris.", "France?", 8),
        ("Paris.", "Lyon, I think.", 8),
        ("France?", "Lyon, I think.", 8),
    ]
    assert pairs.skipped == {"tie": 1, "both_bad": 1, "flagged": 1, "gold": 1}
    assert len(export_rows(LABELS, "pairs", include_flagged=True, include_gold=True)) == 7
    twins = label(15, "pairwise", (GOOD, output(5, "Paris.")), choice="B")
    assert export([twins], "pairs").skipped == {"identical outputs": 1}


def test_every_row_carries_its_provenance():
    row = export_rows(LABELS, "pairs")[1]  # bob's choice of B on task 2: GOOD over BAD
    label_two = PAIRWISE[1]
    assert row == {
        "prompt": "Capital of France?",
        "chosen": "Paris.",
        "rejected": "Lyon, I think.",
        "campaign": "capitals",
        "task_id": 2,
        "label_id": label_two.label_id,
        "annotator": "bob",
        "kind": "pairwise",
        "flags": [],
        "is_gold": False,
        "created_at": "2026-11-21T12:00:00Z",
        "chosen_id": 1,
        "chosen_model": "smollm2",
        "chosen_model_hash": "sha256:smollm2",
        "chosen_seed": 1001,
        "chosen_generation": GENERATION,
        "chosen_created_at": "2026-11-20T09:00:00Z",
        "rejected_id": 2,
        "rejected_model": "tiny",
        "rejected_model_hash": "sha256:tiny",
        "rejected_seed": 1002,
        "rejected_generation": GENERATION,
        "rejected_created_at": "2026-11-20T09:00:00Z",
    }


def test_ratings_one_row_per_annotator_and_output():
    ratings = export(LABELS, "ratings")
    assert texts(ratings.rows, "completion", "rating", "annotator", "output_model") == [
        ("Paris.", 6.0, "alice", "smollm2"),
        ("Paris.", 4.0, "bob", "smollm2"),
    ]
    assert ratings.skipped == {}


def test_binary_from_thumbs_and_choices():
    binary = export(LABELS, "binary")
    assert texts(binary.rows, "completion", "label", "task_id") == [
        ("Paris.", True, 1),
        ("Lyon, I think.", False, 1),
        ("Paris.", True, 2),
        ("Lyon, I think.", False, 2),
        ("Lyon, I think.", False, 4),
        ("France?", False, 4),  # both bad
        ("Paris.", False, 5),  # flagged: its chosen output is left out, its rejected kept
        ("Paris.", True, 9),
    ]
    assert binary.skipped == {"tie": 1, "flagged": 2, "gold": 1, "empty text": 1}
    only_thumbs = export(LABELS, "binary", binary_from_choices=False)
    assert texts(only_thumbs.rows, "task_id") == [(9,)]
    assert only_thumbs.skipped == {"flagged": 1, "empty text": 1}


def test_critiques_of_single_outputs():
    critiques = export(LABELS, "critiques")
    assert texts(critiques.rows, "completion", "critique", "output_id") == [
        ("France?", "Answer with the city, not the country.", 3)
    ]
    assert critiques.skipped == {"about several outputs": 1}  # the note on task 2's choice


def test_sft_from_corrections_and_optionally_chosen_outputs():
    sft = export(LABELS, "sft")
    assert texts(sft.rows, "completion", "source", "output_text", "task_id") == [
        ("Paris.", "correction", "Lyon, I think.", 13),  # flagged, but the correction repairs it
        ("The capital of France is Paris.", "correction", "France?", 14),
    ]
    assert sft.skipped == {}
    with_chosen = export(LABELS, "sft", sft_from_chosen=True)
    assert texts(with_chosen.rows, "completion", "source", "task_id") == [
        ("Paris.", "chosen", 1),
        ("Paris.", "chosen", 2),
        ("Paris.", "chosen", 8),
        ("Paris.", "correction", 13),
        ("The capital of France is Paris.", "correction", 14),
    ]
    assert with_chosen.skipped == {"tie": 1, "both_bad": 1, "flagged": 1, "gold": 1}


def test_bad_requests_are_refused():
    with pytest.raises(ConfigError, match="export as 'dpo': choose one of pairs, ratings"):
        export(LABELS, "dpo")
    with pytest.raises(DataError, match="exports are JSONL"):
        write_export("pairs.csv", [])


# --- round trips through the loaders -------------------------------------------------------------


def written(tmp_path, as_, **options):
    """The export written as train and eval files, and the loader config that reads them."""
    rows = export_rows(LABELS, as_, **options)
    write_export(tmp_path / f"{as_}.jsonl", rows)
    write_export(tmp_path / f"{as_}_eval.jsonl", rows[:1])
    return FeedbackDataCfg(
        path=str(tmp_path / f"{as_}.jsonl"), eval_path=str(tmp_path / f"{as_}_eval.jsonl")
    )


def test_pairs_load_with_provenance_in_meta(tmp_path):
    cfg = written(tmp_path, "pairs")
    pairs = load_pairs(cfg, "train")
    assert [(p.chosen, p.rejected) for p in pairs] == [
        (row["chosen"], row["rejected"]) for row in export_rows(LABELS, "pairs")
    ]
    assert pairs[0].meta["chosen_generation"] == GENERATION
    assert (pairs[0].meta["rejected_model"], pairs[0].meta["annotator"]) == ("tiny", "alice")
    assert len(load_pairs(cfg, "eval")) == 1


def test_ratings_load_merged_across_annotators(tmp_path):
    [rating] = load_ratings(written(tmp_path, "ratings"), "train")
    assert (rating.completion, rating.rating, rating.ratings) == ("Paris.", 5.0, (6.0, 4.0))
    assert rating.meta["annotators"] == ("alice", "bob")
    assert rating.meta["output_model_hash"] == "sha256:smollm2"  # the same for both: kept once
    assert len(rating.meta["label_id"]) == 2  # one per annotator


def test_binary_loads_as_labeled(tmp_path):
    labeled = load_labeled(written(tmp_path, "binary"), "train")
    assert [(row.completion, row.desirable) for row in labeled] == [
        (row["completion"], row["label"]) for row in export_rows(LABELS, "binary")
    ]
    assert labeled[0].meta["output_seed"] == 1001


@pytest.mark.parametrize("as_", ["sft", "critiques"])
def test_sft_and_critiques_load_as_demonstrations(tmp_path, as_):
    options = {"sft_from_chosen": True} if as_ == "sft" else {}
    demonstrations = load_demonstrations(written(tmp_path, as_, **options), "train")
    assert [d.completion for d in demonstrations] == [
        row["completion"] for row in export_rows(LABELS, as_, **options)
    ]
    assert all(d.prompt == "Capital of France?" for d in demonstrations)
    assert demonstrations[-1].meta["campaign"] == "capitals"
