"""Inter-annotator agreement: the textbooks' worked examples, hand-computed cases, the cases
where a coefficient is undefined, and a campaign's report on hand-built labels."""

from __future__ import annotations

import pytest

from rlhfkit.errors import ConfigError, DataError
from rlhfkit.feedback.agreement import (
    Agreement,
    agreement_report,
    cohen_kappa,
    fleiss_kappa,
    gold_accuracy,
    krippendorff_alpha,
)
from rlhfkit.feedback.records import LabelRecord, OutputRecord

# --- coefficients on textbook examples -----------------------------------------------------------

# Fleiss (1971), as worked in Wikipedia's "Fleiss' kappa": 10 subjects, 14 raters each, 5
# categories; row i holds how many raters put subject i in each category. P = 0.378,
# P_e = 0.213, kappa = 0.210.
FLEISS_COUNTS = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", example C: 4 coders, 12
# units, values 1..5, None missing. Unit 12 has one value (not pairable). Nominal alpha 0.743,
# interval 0.849.
_ = None
KRIPPENDORFF_CODERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, _, _, _],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, _, 3],
    [_, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, _],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, _],
]
KRIPPENDORFF_UNITS = list(zip(*KRIPPENDORFF_CODERS, strict=True))


def test_fleiss_kappa_of_the_1971_worked_example():
    items = [
        [category for category, n in enumerate(row) for _ in range(n)] for row in FLEISS_COUNTS
    ]
    result = fleiss_kappa(items)
    assert result.value == pytest.approx(0.210, abs=5e-4)
    assert (result.items, result.dropped, result.reason) == (10, 0, "")


def test_krippendorff_alpha_of_the_2011_reference_example():
    nominal = krippendorff_alpha(KRIPPENDORFF_UNITS, "nominal")
    interval = krippendorff_alpha(KRIPPENDORFF_UNITS, "interval")
    assert nominal.value == pytest.approx(0.743, abs=5e-4)
    assert interval.value == pytest.approx(0.849, abs=5e-4)
    assert (nominal.items, nominal.dropped) == (interval.items, interval.dropped) == (11, 1)


def test_krippendorff_alpha_ignores_coder_order_and_missing_values():
    shuffled = [tuple(reversed(unit)) + (None,) for unit in KRIPPENDORFF_UNITS]
    assert krippendorff_alpha(shuffled).value == krippendorff_alpha(KRIPPENDORFF_UNITS).value


def test_cohen_kappa_by_hand():
    # 50 items: both yes 20, yes/no 5, no/yes 10, both no 15. p_o = 0.7, p_e = 0.5 * 0.6 +
    # 0.5 * 0.4 = 0.5, kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    first = ["yes"] * 25 + ["no"] * 25
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(first, second) == Agreement(pytest.approx(0.4), 50)


def test_fleiss_kappa_with_unequal_labels_per_item_by_hand():
    # P_1 = (2^2 + 1^2 - 3) / (3 * 2) = 1/3, P_2 = (1 + 1 - 2) / 2 = 0, P = 1/6; p_a = 3/5,
    # p_b = 2/5, P_e = 13/25; kappa = (1/6 - 13/25) / (12/25) = -53/72. The third item has one
    # label (the None is missing): dropped.
    result = fleiss_kappa([["a", "a", "b"], ["a", "b"], ["b", None]])
    assert result == Agreement(pytest.approx(-53 / 72), 2, 1)


def test_two_coders_without_missing_values_agree_with_fleiss_up_to_the_sample_correction():
    # For two coders, alpha = 1 - (n - 1)(1 - p_o) / (n (1 - P_e)) with n the number of
    # values, and Fleiss' kappa (Scott's pi here) = 1 - (1 - p_o) / (1 - P_e).
    first, second = list("aabbcabca"), list("abbbcaacc")
    units = list(zip(first, second, strict=True))
    n = 2 * len(units)
    fleiss, alpha = fleiss_kappa(units).value, krippendorff_alpha(units).value
    assert 1 - alpha == pytest.approx((1 - fleiss) * (n - 1) / n)


# --- undefined cases -----------------------------------------------------------------------------


def test_undefined_coefficients_come_back_as_none_with_a_reason():
    assert cohen_kappa([], []) == Agreement(None, 0, 0, "no item labelled by both annotators")
    one = cohen_kappa(["A", "A"], ["A", "A"])
    assert one.value is None and "one category only" in one.reason
    assert fleiss_kappa([["A"], ["B", None]]) == Agreement(
        None, 0, 2, "no item has two or more labels"
    )
    assert "one category only" in fleiss_kappa([["A", "A"], ["A", "A", "A"]]).reason
    assert krippendorff_alpha([[3], []], "interval") == Agreement(
        None, 0, 2, "no unit has two or more values"
    )
    same = krippendorff_alpha([[4, 4.0], [4, 4, 4]], "interval")
    assert same.value is None and "one value only" in same.reason


def test_bad_input_is_refused():
    with pytest.raises(DataError, match="2 labels from one annotator and 1"):
        cohen_kappa(["A", "B"], ["A"])
    with pytest.raises(DataError, match="interval data must be finite numbers"):
        krippendorff_alpha([["good", "bad"]], "interval")
    with pytest.raises(ConfigError, match="metric 'ordinal'"):
        krippendorff_alpha([[1, 2]], "ordinal")


# --- a campaign's report -------------------------------------------------------------------------

NOW = "2026-11-22T10:00:00Z"
LATER = "2026-11-22T11:00:00Z"


def shown(*output_ids: int) -> tuple[OutputRecord, ...]:
    return tuple(OutputRecord(i, f"output {i}", "m", "h", {}, 0, NOW) for i in output_ids)


def labels() -> list[LabelRecord]:
    """Pairwise tasks 1-5 (bob saw task 1's outputs the other way round), ratings with thumbs on
    tasks 6-8 (alice re-rated task 8 later), a ranking of task 9, a critique, gold tasks 100
    (pairwise) and 101 (rating)."""
    ids = iter(range(1, 100))

    def label(task, kind, annotator, outputs, created_at=NOW, **answer):
        return LabelRecord(
            next(ids), "c", task, kind, annotator, "p", outputs, created_at=created_at, **answer
        )

    def pairwise(task, annotator, choice, outputs=None):
        return label(
            task,
            "pairwise",
            annotator,
            outputs or shown(10 * task + 1, 10 * task + 2),
            choice=choice,
        )

    def rating(task, annotator, score, thumbs=None, created_at=NOW):
        return label(
            task, "rating", annotator, shown(10 * task + 1), created_at, rating=score, thumbs=thumbs
        )

    return [
        pairwise(1, "alice", "A"),
        pairwise(1, "bob", "B", shown(12, 11)),
        pairwise(2, "alice", "B"),
        pairwise(2, "bob", "B"),
        pairwise(3, "alice", "A"),
        pairwise(3, "bob", "B"),
        pairwise(4, "alice", "tie"),
        pairwise(4, "bob", "tie"),
        pairwise(4, "carol", "tie"),
        pairwise(5, "carol", "A"),
        rating(6, "alice", 5.0, True),
        rating(6, "bob", 6.0, True),
        rating(7, "alice", 2.0, False),
        rating(7, "bob", 2.0, True),
        rating(8, "alice", 7.0, created_at=LATER),
        rating(8, "alice", 1.0),
        rating(8, "bob", 5.0),
        label(9, "ranking", "alice", shown(91, 92, 93), ranking=(0, 1, 2)),
        label(9, "ranking", "bob", shown(93, 92, 91), ranking=(2, 1, 0)),
        label(9, "ranking", "carol", shown(91, 92, 93), ranking=(0, 2, 1)),
        label(10, "critique", "alice", shown(101), critique="rambles"),
        label(100, "pairwise", "alice", shown(1001, 1002), choice="A", is_gold=True),
        label(100, "pairwise", "bob", shown(1001, 1002), choice="B", is_gold=True),
        label(101, "rating", "alice", shown(1011), rating=4.0, is_gold=True),
        label(101, "rating", "bob", shown(1011), rating=5.0, is_gold=True),
        label(101, "rating", "carol", shown(1011), critique="only a note", is_gold=True),
    ]


GOLD = {100: 1001, 101: 4}  # task 100: output 1001 is better; task 101: rated 4


def test_report_on_pairwise_choices_by_hand():
    # Tasks 1-4 by output id: alice first, second, first, tie; bob first, second, second,
    # tie; carol tie on task 4; task 5 carol alone.
    block = agreement_report(labels(), GOLD)["pairwise"]
    assert (block["metric"], block["items"], block["overlapping_items"], block["labels"]) == (
        "nominal",
        5,
        4,
        10,
    )
    # P_i = 1, 1, 0, 1: P = 3/4; first 3, second 3, tie 3 of 9: P_e = 1/3; kappa = 5/8.
    assert block["fleiss_kappa"] == {
        "value": pytest.approx(5 / 8),
        "items": 4,
        "dropped": 1,
        "reason": "",
    }
    # o_ff = 2, o_ss = 2, o_fs = o_sf = 1, o_tt = 3; n_c = 3 each, n = 9;
    # alpha = 1 - 8 * 2 / (81 - 27) = 19/27.
    assert block["krippendorff_alpha"]["value"] == pytest.approx(19 / 27)
    # alice-bob on 4 tasks, 3 agreed; sum_k n_ak n_bk = 2*1 + 1*2 + 1*1 = 5: (12-5)/(16-5).
    pairs = {tuple(pair["annotators"]): pair["cohen_kappa"] for pair in block["annotator_pairs"]}
    assert pairs[("alice", "bob")] == {
        "value": pytest.approx(7 / 11),
        "items": 4,
        "dropped": 0,
        "reason": "",
    }
    assert pairs[("alice", "carol")]["value"] is None
    assert "one category only" in pairs[("bob", "carol")]["reason"]


def test_report_on_ratings_thumbs_and_rankings_by_hand():
    report = agreement_report(labels(), GOLD)
    # Ratings (5, 6), (2, 2), (7, 5): alice's later 7 replaces her 1. o: 5-6 twice, 2-2 twice,
    # 7-5 twice: sum o d2 = 2 + 8 = 10; n_2 = n_5 = 2, n_6 = n_7 = 1, n = 6,
    # sum n_c n_k d2 = 258; alpha = 1 - 5 * 10 / 258.
    rating = report["rating"]
    assert (rating["metric"], rating["labels"], "fleiss_kappa" in rating) == ("interval", 6, False)
    assert rating["krippendorff_alpha"]["value"] == pytest.approx(1 - 50 / 258)
    [pair] = rating["annotator_pairs"]
    assert pair["krippendorff_alpha"]["value"] == pytest.approx(1 - 50 / 258)
    # Thumbs (up, up), (down, up): P = 1/2, P_e = (3/4)^2 + (1/4)^2 = 5/8: kappa = -1/3; Cohen:
    # 1 of 2 agreed, sum n_ak n_bk = 1 * 2: (2 - 2) / (4 - 2) = 0.
    thumbs = report["thumbs"]
    assert thumbs["fleiss_kappa"]["value"] == pytest.approx(-1 / 3)
    assert thumbs["annotator_pairs"][0]["cohen_kappa"]["value"] == pytest.approx(0)
    # Ranking pairs (91, 92), (91, 93), (92, 93): alice and bob (who saw the outputs reversed)
    # rank 91 > 92 > 93, carol 91 > 93 > 92. P = (1 + 1 + 1/3) / 3 = 7/9, first 8 and second
    # 1 of 9: P_e = 65/81; kappa = (7/9 - 65/81) / (16/81) = -1/8.
    ranking = report["ranking"]
    assert (ranking["items"], ranking["overlapping_items"]) == (3, 3)
    assert ranking["fleiss_kappa"]["value"] == pytest.approx(-1 / 8)
    pairs = {tuple(pair["annotators"]): pair["cohen_kappa"] for pair in ranking["annotator_pairs"]}
    assert "one category only" in pairs[("alice", "bob")]["reason"]
    assert set(report) == {"pairwise", "rating", "thumbs", "ranking", "gold_accuracy"}


def test_gold_accuracy_per_annotator():
    # Task 100: alice A right, bob B wrong; task 101: alice 4 right, bob 5 wrong, carol's note
    # is not an answer.
    expected = {
        "alice": {"labels": 2, "correct": 2, "accuracy": 1.0},
        "bob": {"labels": 2, "correct": 0, "accuracy": 0.0},
    }
    assert gold_accuracy(labels(), GOLD) == expected
    assert agreement_report(labels(), GOLD)["gold_accuracy"] == expected


def test_gold_answers_of_rankings_and_thumbs_by_output_id():
    # As if tasks 9 and 7 had known answers: 91 > 92 > 93 (alice right, bob right though he
    # saw the outputs reversed, carol wrong) and thumbs up (alice down, bob up).
    assert gold_accuracy(labels(), {**GOLD, 9: [91, 92, 93], 7: True}) == {
        "alice": {"labels": 4, "correct": 3, "accuracy": 0.75},
        "bob": {"labels": 4, "correct": 2, "accuracy": 0.5},
        "carol": {"labels": 1, "correct": 0, "accuracy": 0.0},
    }


def test_gold_labels_need_their_answers():
    with pytest.raises(DataError, match="gold task 101, which has no answer"):
        agreement_report(labels(), {100: 1001})
    with pytest.raises(
        DataError,
        match=r"gold answer 'A' of pairwise task 100: give the "
        r"better output's id \(one of \[1001, 1002\]\)",
    ):
        gold_accuracy(labels(), {**GOLD, 100: "A"})
    with pytest.raises(DataError, match=r"gold answer \[91, 92\] of ranking task 9"):
        gold_accuracy(labels(), {**GOLD, 9: [91, 92]})


def test_gold_tasks_stay_out_of_agreement():
    without_gold = [label for label in labels() if not label.is_gold]
    report = agreement_report(labels(), GOLD)
    assert agreement_report(without_gold) == {
        kind: block for kind, block in report.items() if kind != "gold_accuracy"
    }
