"""How far annotators agree on the items they share, beyond what chance would give.

A campaign's overlap ratio sends some items to two or more annotators; on those items a
chance-corrected coefficient says how reliable the labels are:

    coefficient = (observed agreement - chance agreement) / (1 - chance agreement)

1 is perfect agreement, 0 what annotators labelling at random (with their own category
frequencies) would reach, below 0 systematic disagreement. Three classic coefficients:

- Cohen's kappa: two annotators, the items both labelled, categories (nominal);
- Fleiss' kappa: any number of annotators per item, categories;
- Krippendorff's alpha: any number of annotators per item, missing labels allowed, with a
  metric: nominal for categories, interval for ratings (6 vs 7 disagrees less than 1 vs 7).

``agreement_report`` picks the right ones per kind of label. A coefficient is undefined when
there is nothing to compare or chance agreement is already perfect (everyone used one
category); it then comes back as None with the reason, never as a division by zero.

This is agreement between the people of a campaign. What disagreement between raters means for
a reward model's accuracy (the ceiling it sets) is ``rlhfkit.data.agreement``.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

from rlhfkit.errors import ConfigError, DataError
from rlhfkit.feedback.records import LabelRecord

Metric = Literal["nominal", "interval"]
METRICS = ("nominal", "interval")


class Agreement(NamedTuple):
    """A coefficient and what it was computed on."""

    value: float | None
    """The coefficient; None when it is undefined (``reason`` says why)."""
    items: int
    """Items that entered it."""
    dropped: int = 0
    """Items left out for having fewer than two labels (nothing to agree with)."""
    reason: str = ""


# --- coefficients --------------------------------------------------------------------------------


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> Agreement:
    """Cohen's kappa of two annotators over the items both labelled: item i got ``first[i]``
    from one and ``second[i]`` from the other.

        kappa = (p_o - p_e) / (1 - p_e)
        p_o   = (1/N) sum_i [a_i = b_i]          observed agreement
        p_e   = sum_k (n_ak / N) (n_bk / N)      chance: each keeps their own frequencies

    with n_ak the items annotator a put in category k. Computed on counts, as
    (N agreed - sum_k n_ak n_bk) / (N^2 - sum_k n_ak n_bk), so that the one undefined case (both
    used a single, same category) is found exactly. Cohen (1960), "A coefficient of agreement
    for nominal scales", Educational and Psychological Measurement 20(1), 37-46.
    """
    if len(first) != len(second):
        raise DataError(
            f"Cohen's kappa got {len(first)} labels from one annotator and "
            f"{len(second)} from the other; give one label each per shared item"
        )
    items = len(first)
    if items == 0:
        return Agreement(None, 0, reason="no item labelled by both annotators")
    first_counts, second_counts = Counter(first), Counter(second)
    if len(first_counts.keys() | second_counts.keys()) < 2:
        return Agreement(
            None,
            items,
            reason=f"one category only ({first[0]!r}): chance "
            "agreement is 1, so kappa is undefined",
        )
    agreed = sum(a == b for a, b in zip(first, second, strict=True))
    chance = sum(count * second_counts[category] for category, count in first_counts.items())
    return Agreement((items * agreed - chance) / (items * items - chance), items)


def fleiss_kappa(items: Iterable[Sequence[Hashable]]) -> Agreement:
    """Fleiss' kappa over items each labelled by any number of annotators (categories).

    ``items`` gives each item's labels, one per annotator (None = no label, ignored):

        P_i   = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1))   share of item i's label pairs that agree
        P     = mean_i P_i
        p_j   = sum_i n_ij / sum_i n_i                   share of all labels in category j
        P_e   = sum_j p_j^2
        kappa = (P - P_e) / (1 - P_e)

    with n_ij the labels of item i in category j and n_i = sum_j n_ij. Fleiss (1971),
    "Measuring nominal scale agreement among many raters", Psychological Bulletin 76(5),
    378-382, has every n_i equal; here each item's agreement is over its own label pairs and
    p_j pools all labels, which is the same when they are equal. The annotators may differ
    from item to item. An item with fewer than two labels has no pair: it is dropped and
    counted in ``dropped``.
    """
    counts = [Counter(label for label in labels if label is not None) for labels in items]
    kept = [count for count in counts if count.total() >= 2]
    dropped = len(counts) - len(kept)
    if not kept:
        return Agreement(None, 0, dropped, "no item has two or more labels")
    categories: Counter = sum(kept, Counter())
    if len(categories) < 2:
        return Agreement(
            None,
            len(kept),
            dropped,
            f"one category only "
            f"({next(iter(categories))!r}): chance agreement is 1, so kappa is "
            "undefined",
        )
    observed = sum(
        (sum(n * n for n in count.values()) - count.total()) / (count.total() * (count.total() - 1))
        for count in kept
    ) / len(kept)
    labels = categories.total()
    chance = sum((n / labels) ** 2 for n in categories.values())
    return Agreement((observed - chance) / (1 - chance), len(kept), dropped)


def krippendorff_alpha(units: Iterable[Sequence[Any]], metric: Metric = "nominal") -> Agreement:
    """Krippendorff's alpha over units each labelled by any number of annotators.

    ``units`` gives each unit's values, one per annotator who labelled it (None = missing,
    ignored): the columns of the paper's coders x units reliability matrix. Units with fewer
    than two values (m_u < 2) are not pairable (dropped, counted). From the pairable values,
    the coincidence matrix and its marginals

        o_ck = sum_u (ordered pairs (c, k) of two different labels' values in u) / (m_u - 1)
        n_c  = sum_k o_ck,       n = sum_c n_c           (n: number of pairable values)

    give the observed and the expected disagreement, and

        alpha = 1 - D_o / D_e = 1 - (n - 1) sum_ck o_ck d2(c, k) / sum_ck n_c n_k d2(c, k)

    with the metric's squared difference d2: nominal [c != k], interval (c - k)^2. Krippendorff
    (2011), "Computing Krippendorff's alpha-reliability", Departmental Papers (ASC) 43,
    University of Pennsylvania: the general form for any number of coders and missing values.
    """
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r}: choose one of {', '.join(METRICS)}")
    counts = [
        Counter(_value(value, metric) for value in values if value is not None) for values in units
    ]
    pairable = [count for count in counts if count.total() >= 2]
    dropped = len(counts) - len(pairable)
    if not pairable:
        return Agreement(None, 0, dropped, "no unit has two or more values")
    coincidences: Counter = Counter()  # (c, k) -> o_ck
    for count in pairable:
        share = 1 / (count.total() - 1)
        for (c, n_c), (k, n_k) in itertools.product(count.items(), repeat=2):
            coincidences[c, k] += (n_c * (n_c - 1) if c == k else n_c * n_k) * share
    marginals: Counter = Counter()  # c -> n_c
    for (c, _), o_ck in coincidences.items():
        marginals[c] += o_ck
    if len(marginals) < 2:
        return Agreement(
            None,
            len(pairable),
            dropped,
            f"one value only "
            f"({next(iter(marginals))!r}): no disagreement to expect, so alpha "
            "is undefined",
        )
    distance = _squared_difference[metric]
    observed = sum(o_ck * distance(c, k) for (c, k), o_ck in coincidences.items())
    expected = sum(
        n_c * n_k * distance(c, k)
        for (c, n_c), (k, n_k) in itertools.product(marginals.items(), repeat=2)
    )
    values = sum(marginals.values())
    return Agreement(1 - (values - 1) * observed / expected, len(pairable), dropped)


_squared_difference = {
    "nominal": lambda c, k: float(c != k),
    "interval": lambda c, k: float(c - k) ** 2,
}


def _value(value: Any, metric: Metric) -> Any:
    """A label as the metric reads it: any hashable for nominal, a finite number for interval."""
    if metric == "interval" and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    ):
        raise DataError(
            f"interval agreement got {value!r}; interval data must be finite "
            "numbers (use metric='nominal' for categories)"
        )
    return value


# --- a campaign's report -------------------------------------------------------------------------


def agreement_report(
    records: Sequence[LabelRecord], gold: Mapping[int, Any] | None = None
) -> dict[str, Any]:
    """Agreement per kind of answer on the items several annotators labelled, and gold accuracy.

    Items are tasks, keyed by campaign and task id; a ranking's items are its pairs of outputs.
    Labels compare by output id, not by the position an output was shown at, so the coefficients
    hold whatever order each annotator saw: a choice is "first" (the output with the lower id is
    better), "second", "tie" or "both_bad", categories that mean the same on every item, as
    chance agreement needs. One label per annotator and item: the latest (by ``created_at``,
    then ``label_id``) if the store holds more. Gold tasks (``is_gold`` or in ``gold``) are left
    out of agreement: every annotator sees them and they are chosen to be clear, so they would
    inflate it; they are scored against their answers instead (``gold_accuracy``).

    Each kind present gets a block: ``pairwise`` (choices; nominal), ``ranking`` (for each
    pair of a task's outputs, which one is ranked higher: the pairs an export trains on;
    nominal), ``rating`` (1..7; interval) and ``thumbs`` (nominal). A nominal block has
    ``fleiss_kappa``, ``krippendorff_alpha`` and, per pair of annotators who share items,
    ``cohen_kappa``; the rating block has ``krippendorff_alpha`` (interval) overall and per
    pair, since Cohen's kappa would count 6 against 7 as a full disagreement. Each block counts
    its ``items``, ``overlapping_items`` (two or more annotators) and ``labels``; each
    coefficient is ``Agreement._asdict()``. Critiques and corrections are free text, with no
    coefficient. ``gold_accuracy`` is present when there are gold labels or answers.
    """
    gold = {} if gold is None else gold
    items: dict[str, dict[Hashable, dict[str, Any]]] = {
        "pairwise": {},
        "ranking": {},
        "rating": {},
        "thumbs": {},
    }
    for label in _oldest_first(records):  # a later label replaces an earlier one
        if label.is_gold or label.task_id in gold:
            continue
        task = (label.campaign, label.task_id)
        if label.choice is not None:
            items["pairwise"].setdefault(task, {})[label.annotator] = _choice_category(label)
        if label.ranking is not None:
            rank = {output_id: place for place, output_id in enumerate(_ranked_ids(label))}
            for low, high in itertools.combinations(sorted(rank), 2):
                items["ranking"].setdefault((*task, low, high), {})[label.annotator] = (
                    "first" if rank[low] < rank[high] else "second"
                )
        if label.rating is not None:
            items["rating"].setdefault(task, {})[label.annotator] = label.rating
        if label.thumbs is not None:
            items["thumbs"].setdefault(task, {})[label.annotator] = label.thumbs
    report: dict[str, Any] = {
        kind: _block(kind_items, "interval" if kind == "rating" else "nominal")
        for kind, kind_items in items.items()
        if kind_items
    }
    if gold or any(label.is_gold for label in records):
        report["gold_accuracy"] = gold_accuracy(records, gold)
    return report


def gold_accuracy(
    records: Sequence[LabelRecord], gold: Mapping[int, Any]
) -> dict[str, dict[str, Any]]:
    """Per annotator: of their labels on gold tasks, how many give the known answer.

    ``gold`` maps task_id to the answer in output ids, so that it holds whatever order the
    outputs are shown in (``FeedbackStore.gold_answers`` gives it so): a pairwise task's better
    ``output_id`` (or "tie" / "both_bad"), a ranking's output ids best first, a rating's number
    (matched exactly) or thumbs' True / False. A label that does not answer in that form (a
    critique, or thumbs where a number is known) is not scored. One label per annotator and
    task, the latest. Returns ``{annotator: {"labels", "correct", "accuracy"}}``, by name.
    """
    scored: dict[tuple[str, int, str], bool] = {}
    for label in _oldest_first(records):  # a later label replaces an earlier one
        if label.task_id not in gold:
            if label.is_gold:
                raise DataError(
                    f"label {label.label_id} is on gold task {label.task_id}, which "
                    "has no answer in gold; pass every gold task's answer"
                )
            continue
        correct = _matches_gold(label, gold[label.task_id])
        if correct is not None:
            scored[label.campaign, label.task_id, label.annotator] = correct
    totals: dict[str, list[int]] = {}
    for (_, _, annotator), correct in scored.items():
        counts = totals.setdefault(annotator, [0, 0])
        counts[0] += 1
        counts[1] += correct
    return {
        annotator: {"labels": labels, "correct": correct, "accuracy": correct / labels}
        for annotator, (labels, correct) in sorted(totals.items())
    }


def _matches_gold(label: LabelRecord, expected: Any) -> bool | None:
    """Whether the label gives the gold answer; None when it does not answer in that form."""
    shown = [output.output_id for output in label.outputs]
    if label.choice is not None:
        if isinstance(expected, bool) or expected not in ("tie", "both_bad", *shown):
            raise DataError(
                f"gold answer {expected!r} of pairwise task {label.task_id}: give "
                f"the better output's id (one of {shown}), 'tie' or 'both_bad'"
            )
        if label.choice in ("tie", "both_bad"):
            return label.choice == expected
        return shown["AB".index(label.choice)] == expected
    if label.ranking is not None:
        if not isinstance(expected, (list, tuple)) or sorted(expected) != sorted(shown):
            raise DataError(
                f"gold answer {expected!r} of ranking task {label.task_id}: give "
                f"the output ids {sorted(shown)} in order, best first"
            )
        return _ranked_ids(label) == tuple(expected)
    if isinstance(expected, bool):
        return None if label.thumbs is None else label.thumbs == expected
    if isinstance(expected, (int, float)):
        return None if label.rating is None else label.rating == expected
    return None


def _oldest_first(records: Sequence[LabelRecord]) -> list[LabelRecord]:
    return sorted(records, key=lambda label: (label.created_at, label.label_id))


def _choice_category(label: LabelRecord) -> str:
    """A pairwise choice by output id: "first" (the lower id is better), "second", or as is."""
    if label.choice in ("tie", "both_bad"):
        return label.choice
    better = label.outputs["AB".index(label.choice)].output_id
    return "first" if better == min(output.output_id for output in label.outputs) else "second"


def _ranked_ids(label: LabelRecord) -> tuple[int, ...]:
    """A ranking's output ids, best first."""
    return tuple(label.outputs[position].output_id for position in label.ranking)


def _block(items: dict[Hashable, dict[str, Any]], metric: Metric) -> dict[str, Any]:
    """One kind's coefficients over its items (item -> annotator -> value)."""
    units = [list(by_annotator.values()) for by_annotator in items.values()]
    block: dict[str, Any] = {
        "metric": metric,
        "items": len(units),
        "overlapping_items": sum(len(unit) >= 2 for unit in units),
        "labels": sum(map(len, units)),
    }
    if metric == "nominal":
        block["fleiss_kappa"] = fleiss_kappa(units)._asdict()
    block["krippendorff_alpha"] = krippendorff_alpha(units, metric)._asdict()
    block["annotator_pairs"] = _annotator_pairs(items, metric)
    return block


def _annotator_pairs(items: dict[Hashable, dict[str, Any]], metric: Metric) -> list[dict]:
    """Per pair of annotators who share items: Cohen's kappa (nominal) or alpha (interval)."""
    shared: dict[tuple[str, str], list[tuple[Any, Any]]] = {}
    for by_annotator in items.values():
        for first, second in itertools.combinations(sorted(by_annotator), 2):
            shared.setdefault((first, second), []).append(
                (by_annotator[first], by_annotator[second])
            )
    pairs = []
    for (first, second), values in sorted(shared.items()):
        if metric == "nominal":
            statistic = {"cohen_kappa": cohen_kappa(*zip(*values, strict=True))._asdict()}
        else:
            statistic = {"krippendorff_alpha": krippendorff_alpha(values, metric)._asdict()}
        pairs.append({"annotators": [first, second], **statistic})
    return pairs
