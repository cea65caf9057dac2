"""Human feedback datasets: demonstrations, preference pairs, ratings and binary labels.

Four kinds of rows, one per way people give feedback (and per training command):

- ``Demonstration``: a prompt and the completion a person wrote (``rlhfkit sft``);
- ``Pair``: a prompt, a chosen and a rejected completion (``rlhfkit reward``, DPO, IPO);
- ``Rating``: a prompt, a completion and its score, with every rater's score when known;
- ``Labeled``: a prompt, a completion and thumbs up or down (KTO).

Where they come from (``FeedbackDataCfg.path``): a .jsonl/.json/.csv/.parquet file, a directory
written by ``datasets``' ``save_to_disk``, or a built-in set of real human ratings,
``vader:<corpus>`` (see ``rlhfkit.data.vader``). Columns are mapped by ``--data.<x>_field``;
the columns a row kind does not use are kept in the row's ``meta``, so nothing is lost.
Kinds convert where the conversion is standard: ratings give pairs (``pairs_from_ratings``) and
binary labels, and pairs give binary labels (chosen desirable, rejected not).

Splits: a built-in set has fixed train / validation / test splits, so ``"eval"`` reads its
validation split and ``"test"`` its test split. A user's data is held out by ``eval_path``,
by a saved dataset's own validation (or test) split, or else by a hash of each row: the same
rows go to eval on every run and machine, whatever the order of the file.

Bad rows (a missing column, an empty completion, a rating that is not a number ...) stop the
load with the file, row, column and fix, or, with ``on_bad_row="skip"``, are dropped with one
warning that counts them by reason: never silently. Reading sources, the eval hash and the
checks on each cell live in ``rlhfkit.data.feedback_source``; the ceiling that rater
disagreement sets on a reward model's accuracy in ``rlhfkit.data.agreement``.
"""

from __future__ import annotations

import math
import random
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from rlhfkit.data import feedback_source as source
from rlhfkit.data import shapes
from rlhfkit.data.feedback_source import Row
from rlhfkit.data.shapes import Prompt, Reply
from rlhfkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from rlhfkit.config import FeedbackDataCfg

VADER_SPLITS = {"train": "train", "eval": "validation", "test": "test"}
NEUTRAL_BAND = 0.5  # ratings within this of 0 give no binary label

T = TypeVar("T")


@dataclass(frozen=True)
class Demonstration:
    """A completion written (or approved) by a person: supervised fine-tuning data."""

    prompt: Prompt  # a chat's messages before the reply, for the chat template
    completion: Reply
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    finished: bool = True  # False: cut off by a length limit, so no EOS is learned after it


@dataclass(frozen=True)
class Pair:
    """Two completions of one prompt, the chosen one preferred; ``margin`` is how strongly."""

    prompt: Prompt
    chosen: Reply
    rejected: Reply
    margin: float = 0.0
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    chosen_finished: bool = True  # False: cut off by a length limit, no EOS learned after it
    rejected_finished: bool = True


@dataclass(frozen=True)
class Rating:
    """A completion's score (the raters' mean), with each rater's score when known."""

    prompt: str
    completion: str
    rating: float
    ratings: tuple[float, ...] = ()
    annotator: str = ""
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Labeled:
    """A completion marked desirable or not: the unpaired binary feedback KTO learns from."""

    prompt: Prompt
    completion: Reply
    desirable: bool
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)


def join_text(prompt: Prompt, completion: Reply) -> str:
    """The one text a reward model scores for a prompt and its completion.

    A conversational prompt gives its last message (``shapes.prompt_text``), as rewards see
    prompts during RL, so a reward model is trained on what it will score; a completion of
    several messages, their contents a line each.

    The completion alone when there is no prompt (a text judged on its own, as in VADER). When
    either side already has whitespace at the join they are concatenated as they are: the
    continuation of an opening ("The film was" + " a delight") carries its own space, and an
    added newline would split the sentence. Otherwise a newline separates them, so a question
    and its answer do not run together into one word ("2 + 2?" + "4").
    """
    prompt, completion = shapes.prompt_text(prompt), shapes.reply_text(completion)
    if not prompt:
        return completion
    if prompt[-1].isspace() or completion[:1].isspace():
        return prompt + completion
    return prompt + "\n" + completion


# --- loaders -------------------------------------------------------------------------------------


def load_demonstrations(cfg: FeedbackDataCfg, split: str) -> list[Demonstration]:
    """Demonstrations of one split: ``{prompt, completion}``, chat ``{messages}`` or ``{text}``
    rows (``rlhfkit.data.shapes``), plain or conversational.

    A chat's last message must be the assistant's: it is the completion, and the messages before
    it are the prompt. A text is learned whole. A built-in set gives each of its texts as a completion without a prompt:
    fine-tuning on them adapts a model to the corpus's language.
    """
    name, rows = source.split_rows(cfg, split)
    if rows is None:
        demonstrations = [
            Demonstration("", r.completion, meta={**r.meta, "rating": r.rating})
            for r in _vader_ratings(name, split)
        ]
    else:
        demonstrations = source.parse_rows(name, split, rows, cfg, _demonstration)
    return _first_rows(demonstrations, cfg, split)


def load_pairs(cfg: FeedbackDataCfg, split: str, seed: int = 0) -> list[Pair]:
    """Preference pairs of one split: a pair file's rows, or pairs made from ratings.

    Rows with the chosen column are pairs; rows with the rating column instead (and built-in
    sets) are ratings, paired by ``pairs_from_ratings(ratings, cfg.min_gap, cfg.pairs_per_text,
    seed)``. Keep ``seed`` fixed for eval pairs, so that runs are evaluated on the same pairs.
    """
    name, rows = source.split_rows(cfg, split)
    holds_pairs = (
        rows is not None
        and source.file_kind(
            name,
            rows,
            cfg,
            ("chosen_field", "rating_field"),
            shapes.accepted(cfg, shapes.PAIRS, ratings=True),
        )
        == "chosen_field"
    )
    if holds_pairs:
        return _first_rows(source.parse_rows(name, split, rows, cfg, _pair), cfg, split)
    pairs = pairs_from_ratings(
        _ratings(name, split, rows, cfg), cfg.min_gap, cfg.pairs_per_text, seed
    )
    if not pairs and not source.no_held_out(cfg, split, rows):
        raise DataError(
            f"{name}: no two {split} texts of one prompt have ratings at least "
            f"{cfg.min_gap:g} apart, so there are no pairs; lower --data.min_gap"
        )
    return _first_rows(pairs, cfg, split)


def load_ratings(cfg: FeedbackDataCfg, split: str) -> list[Rating]:
    """Ratings of one split, one per (prompt, completion).

    A file may rate a text several times, one row per annotator: those rows merge into one
    ``Rating`` whose ``rating`` is their mean and ``ratings`` each score in file order; the
    annotators are kept in ``meta["annotators"]`` and ``weight`` is the rows' mean weight. A
    column whose values differ between the merged rows is kept in ``meta`` as a tuple of them.
    ``balance="inverse-frequency"`` weighs each rating bucket (rating rounded half up) equally.
    """
    name, rows = source.split_rows(cfg, split)
    ratings = _first_rows(_ratings(name, split, rows, cfg), cfg, split)
    return balance_classes(ratings, cfg.balance, lambda r: math.floor(r.rating + 0.5))


def load_labeled(cfg: FeedbackDataCfg, split: str) -> list[Labeled]:
    """Binary feedback of one split: a label file, or labels made from pairs or ratings.

    A pair gives two rows, chosen desirable and rejected undesirable (its ``meta`` shared). A
    rating above 0 is desirable and one below 0 undesirable, so ratings must be centred on 0
    (as VADER's -4..4 are); a text rated within 0.5 of neutral (|rating| < 0.5) says neither,
    so it is left out, and a warning counts those left out. ``balance="inverse-frequency"``
    weighs desirable and undesirable rows equally.
    """
    name, rows = source.split_rows(cfg, split)
    kind = (
        "rating_field"
        if rows is None
        else source.file_kind(
            name,
            rows,
            cfg,
            ("label_field", "chosen_field", "rating_field"),
            shapes.accepted(cfg, shapes.LABELS + shapes.PAIRS, ratings=True),
        )
    )
    if kind == "label_field":
        labeled = source.parse_rows(name, split, rows, cfg, _labeled)
    elif kind == "chosen_field":
        labeled = [
            Labeled(pair.prompt, text, desirable, pair.weight, pair.meta)
            for pair in source.parse_rows(name, split, rows, cfg, _pair)
            for text, desirable in ((pair.chosen, True), (pair.rejected, False))
        ]
    else:
        labeled = (
            []
            if source.no_held_out(cfg, split, rows)
            else _labels_from_ratings(name, split, _ratings(name, split, rows, cfg))
        )
    return balance_classes(_first_rows(labeled, cfg, split), cfg.balance, lambda row: row.desirable)


def pairs_from_ratings(
    ratings: Sequence[Rating], min_gap: float, pairs_per_text: int, seed: int
) -> list[Pair]:
    """Preference pairs made by comparing rated texts, the better-rated one chosen.

    Each text is paired with ``pairs_per_text`` partners drawn at random (``random.Random(seed)``,
    so the same pairs for the same seed) among the texts of the same prompt; each unordered pair
    is kept once. Pairs whose ratings differ by less than ``min_gap`` are dropped, and so are
    ties at any ``min_gap``: a near-tie is mostly rater noise, not a preference. ``margin`` is
    the rating gap (what ``--rm.use_margin`` subtracts inside the sigmoid). ``weight`` is
    the two texts' mean weight; ``meta`` keeps both ratings, each text's individual ratings
    (``chosen_ratings``, ``rejected_ratings``, for ``rlhfkit.data.agreement``) and each text's
    own meta.
    """
    if pairs_per_text < 1 or min_gap < 0:
        raise ConfigError(
            f"pairs_per_text={pairs_per_text}, min_gap={min_gap}: give "
            "pairs_per_text >= 1 and min_gap >= 0"
        )
    rng = random.Random(seed)
    by_prompt: dict[str, list[Rating]] = {}
    for rating in ratings:
        by_prompt.setdefault(rating.prompt, []).append(rating)
    pairs = []
    for prompt, texts in by_prompt.items():
        seen: set[tuple[int, int]] = set()
        for i, text in enumerate(texts):
            for j in rng.sample(range(len(texts) - 1), min(pairs_per_text, len(texts) - 1)):
                j += j >= i  # a partner other than the text itself
                if (min(i, j), max(i, j)) in seen:
                    continue
                seen.add((min(i, j), max(i, j)))
                high, low = sorted((text, texts[j]), key=lambda r: r.rating, reverse=True)
                gap = high.rating - low.rating
                if gap == 0 or gap < min_gap or high.completion == low.completion:
                    continue
                pairs.append(
                    Pair(
                        prompt,
                        high.completion,
                        low.completion,
                        margin=gap,
                        weight=(high.weight + low.weight) / 2,
                        meta={
                            "chosen_rating": high.rating,
                            "rejected_rating": low.rating,
                            "chosen_ratings": high.ratings,
                            "rejected_ratings": low.ratings,
                            "chosen_meta": high.meta,
                            "rejected_meta": low.meta,
                        },
                    )
                )
    return pairs


def _first_rows(rows: list[T], cfg: FeedbackDataCfg, split: str) -> list[T]:
    return rows[: cfg.max_rows] if split == "train" and cfg.max_rows else rows


def balance_classes(rows: list[T], mode: str, bucket: Callable[[T], Any]) -> list[T]:
    """Inverse-frequency weights: each class gets the same total weight, the mean weight is 1.

    w_i = own_i * (N / K) / sum_{j in class(i)} own_j   (N rows, K classes; own = row's weight)
    """
    if mode == "none":
        return rows
    totals: Counter = Counter()
    for row in rows:
        totals[bucket(row)] += row.weight
    classes = sum(total > 0 for total in totals.values())
    if not classes:
        return rows  # every weight is 0: nothing to balance
    share = len(rows) / classes
    return [
        replace(row, weight=row.weight * share / totals[bucket(row)]) if row.weight else row
        for row in rows
    ]


# --- rows of each kind ------------------------------------------------------------------------


def _demonstration(row: Row, cfg: FeedbackDataCfg) -> Demonstration:
    shape, read = shapes.read(row, cfg, shapes.DEMONSTRATIONS)
    return Demonstration(
        read.prompt,
        read.completion,
        source.weight(row, cfg),
        source.other_columns(row, cfg, *shape.options, "weight_field"),
        source.finished(row),
    )


def _pair(row: Row, cfg: FeedbackDataCfg) -> Pair:
    shape, read = shapes.read(row, cfg, shapes.PAIRS)
    margin = 0.0
    if cfg.margin_field in row:
        margin = source.number(row[cfg.margin_field], cfg.margin_field)
    return Pair(
        read.prompt,
        read.chosen,
        read.rejected,
        margin,
        source.weight(row, cfg),
        source.other_columns(row, cfg, *shape.options, "margin_field", "weight_field"),
        source.finished(row, "chosen_finished"),
        source.finished(row, "rejected_finished"),
    )


def _rating(row: Row, cfg: FeedbackDataCfg) -> Rating:
    """One rater's row: ``ratings`` is its single score until ``_merge_raters`` joins rows."""
    score = source.number(source.column(row, cfg, "rating_field"), cfg.rating_field)
    annotator = row.get(cfg.annotator_field)
    return Rating(
        source.prompt(row, cfg),
        source.text(row, cfg, "completion_field"),
        score,
        (score,),
        "" if annotator is None else str(annotator),
        source.weight(row, cfg),
        source.other_columns(
            row,
            cfg,
            "prompt_field",
            "completion_field",
            "rating_field",
            "annotator_field",
            "weight_field",
        ),
    )


def _labeled(row: Row, cfg: FeedbackDataCfg) -> Labeled:
    shape, read = shapes.read(row, cfg, shapes.LABELS)
    return Labeled(
        read.prompt,
        read.completion,
        read.desirable,
        source.weight(row, cfg),
        source.other_columns(row, cfg, *shape.options, "weight_field"),
    )


# --- ratings -------------------------------------------------------------------------------------


def _ratings(
    name: str, split: str, rows: list[tuple[int, Row]] | None, cfg: FeedbackDataCfg
) -> list[Rating]:
    """One Rating per text of the split (before max_rows and balance)."""
    if rows is None:
        return _vader_ratings(name, split)
    return _merge_raters(source.parse_rows(name, split, rows, cfg, _rating))


def _vader_ratings(name: str, split: str) -> list[Rating]:
    """A built-in set's texts, each judged alone (empty prompt), rated by its raters' mean."""
    from rlhfkit.data.vader import load_vader

    corpus = name.removeprefix(source.BUILTIN_PREFIX)
    return [
        Rating("", text.text, text.mean, text.ratings, meta={"id": f"{text.corpus}:{text.id}"})
        for text in load_vader((corpus,), split=VADER_SPLITS[split])
    ]


def _merge_raters(ratings: list[Rating]) -> list[Rating]:
    """One Rating per (prompt, completion), in order of first appearance (see load_ratings)."""
    groups: dict[tuple[str, str], list[Rating]] = {}
    for rating in ratings:
        groups.setdefault((rating.prompt, rating.completion), []).append(rating)
    merged = []
    for (prompt, completion), group in groups.items():
        if len(group) == 1:
            merged.append(group[0])
            continue
        scores = tuple(r.rating for r in group)
        annotators = tuple(r.annotator for r in group)
        meta: dict[str, Any] = {}
        for key in dict.fromkeys(key for r in group for key in r.meta):
            values = tuple(r.meta.get(key) for r in group)
            meta[key] = values[0] if all(v == values[0] for v in values) else values
        merged.append(
            Rating(
                prompt,
                completion,
                sum(scores) / len(scores),
                scores,
                annotators[0] if len(set(annotators)) == 1 else "",
                sum(r.weight for r in group) / len(group),
                {**meta, "annotators": annotators},
            )
        )
    return merged


def _labels_from_ratings(name: str, split: str, ratings: list[Rating]) -> list[Labeled]:
    """Desirable above 0, undesirable below; near-neutral ratings give no label (counted)."""
    labeled = [
        Labeled(r.prompt, r.completion, r.rating > 0, r.weight, {**r.meta, "rating": r.rating})
        for r in ratings
        if abs(r.rating) >= NEUTRAL_BAND
    ]
    sides = {row.desirable for row in labeled}
    if len(sides) < 2:
        found = "no" if not sides else "only desirable" if True in sides else "only undesirable"
        raise DataError(
            f"{name}: the {split} ratings give {found} labels (above 0 desirable, "
            f"below undesirable, within {NEUTRAL_BAND:g} of 0 left out); binary "
            "labels need ratings centred on 0 (subtract the scale's midpoint, e.g. "
            "3 for 1..5)"
        )
    if len(labeled) < len(ratings):
        warnings.warn(
            f"left out {len(ratings) - len(labeled):,} of {len(ratings):,} {split} "
            f"texts of {name} rated near neutral (|rating| < {NEUTRAL_BAND:g}): "
            "neither desirable nor undesirable",
            stacklevel=3,
        )
    return labeled
