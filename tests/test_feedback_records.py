"""Feedback records: a label the store cannot hold is refused where it is read, naming it."""

from __future__ import annotations

import pytest

from rlhfkit.errors import DataError
from rlhfkit.feedback.records import LabelRecord, OutputRecord


def outputs(count: int) -> tuple[OutputRecord, ...]:
    return tuple(OutputRecord(i, f"text {i}", "m", "h", {}, None, "") for i in range(count))


def label(kind: str = "pairwise", shown: int = 2, **answer) -> LabelRecord:
    return LabelRecord(7, "c", 3, kind, "ann", "p", outputs(shown), **answer)


def test_valid_labels_of_every_kind():
    label(choice="both_bad", flags=("unsafe", "off_topic"))
    label("ranking", 3, ranking=(2, 0, 1), critique="a note")
    label("rating", 1, rating=7.0, thumbs=False)
    label("critique", 1, critique="too long")
    label("correction", 1, correction="better text")


@pytest.mark.parametrize(
    ("kind", "shown", "answer", "problem"),
    [
        ("poll", 1, {}, "kind 'poll'"),
        ("rating", 0, {"rating": 3.0}, "shows no outputs"),
        ("pairwise", 2, {"choice": "C"}, "choice 'C'"),
        ("pairwise", 3, {"choice": "A"}, "over 3 outputs"),
        ("ranking", 3, {"ranking": (0, 1)}, "ranking [0, 1]"),
        ("ranking", 3, {"ranking": (0, 1, 1)}, "ranking [0, 1, 1]"),
        ("rating", 1, {"rating": 8.0}, "rating 8.0"),
        ("rating", 1, {"rating": float("nan")}, "rating nan"),
        ("rating", 1, {"flags": ("rude",)}, "flags ['rude']"),
    ],
)
def test_impossible_labels_are_refused_by_id(kind, shown, answer, problem):
    with pytest.raises(DataError, match="label 7 .campaign 'c', task 3.: ") as error:
        label(kind, shown, **answer)
    assert problem in str(error.value)
