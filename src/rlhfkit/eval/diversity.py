"""Diversity of a set of completions: distinct-n and self-BLEU, with per-item values for intervals.

- distinct-n (Li et al. 2016, "A diversity-promoting objective function for neural
  conversation models", arXiv 1510.03055): the number of different n-grams over all
  completions divided by the number of n-grams, in (0, 1]; 1 when no n-gram repeats. It is
  a statistic of the whole set, so its interval comes from the jackknife (Efron & Stein
  1981): leave each completion out in turn, and the pseudo-values
  ``n·θ - (n - 1)·θ₋ᵢ`` have the statistic's (bias-corrected) mean and a variance whose
  t-interval covers it. Resampling with replacement (the bootstrap) would not do here: a
  drawn duplicate repeats its own n-grams and lowers distinct-n by construction.
- self-BLEU (Zhu et al. 2018, "Texygen", arXiv 1802.01886): each completion's BLEU-4 with the
  others as its references, averaged; near 1 when completions copy each other (a collapsed
  policy), low when they differ. Each completion's value is its own, so the interval is the
  t-interval over them.

Tokens are whitespace-separated words: the measures compare a model with itself or another
model on the same prompts, so what matters is that both sides are cut alike.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

BLEU_ORDER = 4
SMOOTH_FLOOR = 0.1
"""A zero n-gram match counts as this many matches (Chen & Cherry 2014's smoothing 1, NLTK's
``method1`` and sacreBLEU's ``floor``), so one unmatched order does not zero the whole score."""


def words(text: str) -> list[str]:
    return text.split()


def ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    """Each n-gram of ``tokens`` with its count."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Different n-grams / all n-grams over ``texts`` (0 when none has n words)."""
    counts = Counter[tuple[str, ...]]()
    for text in texts:
        counts.update(ngrams(words(text), n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def distinct_n_pseudo_values(texts: Sequence[str], n: int) -> list[float]:
    """The jackknife pseudo-values of distinct-n, one per text: ``N·θ - (N - 1)·θ₋ᵢ``.

    Their mean is the jackknife estimate and their t-interval its 95% interval; two models'
    pseudo-values on the same prompts subtract pairwise for a paired interval. Leaving text i
    out removes its n-grams from the total, and from the types those whose every occurrence
    is in text i.
    """
    each = [ngrams(words(text), n) for text in texts]
    counts = Counter[tuple[str, ...]]()
    for grams in each:
        counts.update(grams)
    total, types, size = sum(counts.values()), len(counts), len(texts)
    theta = types / total if total else 0.0
    values = []
    for grams in each:
        rest_total = total - sum(grams.values())
        rest_types = types - sum(1 for gram, count in grams.items() if counts[gram] == count)
        left_out = rest_types / rest_total if rest_total else 0.0
        values.append(size * theta - (size - 1) * left_out)
    return values


def sentence_bleu(
    hypothesis: Sequence[str], references: Sequence[Sequence[str]], order: int = BLEU_ORDER
) -> float:
    """BLEU of one tokenised hypothesis against references (Papineni et al. 2002), in [0, 1].

    Modified precision per order: each hypothesis n-gram counts at most as often as it occurs
    in any one reference. Orders the hypothesis is too short for are left out (sacreBLEU's
    effective order); a zero match counts ``SMOOTH_FLOOR``. Brevity penalty against the
    reference length closest to the hypothesis's (the shorter on a tie).
    """
    grams = _orders(hypothesis, order)
    most = [Counter[tuple[str, ...]]() for _ in range(order)]
    for reference in references:
        for n, counts in enumerate(_orders(reference, order)):
            most[n] |= counts  # per n-gram, the largest count in any one reference
    return _bleu(
        grams, len(hypothesis), lambda n, gram: most[n][gram], [len(r) for r in references]
    )


def self_bleu(texts: Sequence[str], order: int = BLEU_ORDER) -> list[float]:
    """Each text's BLEU against all the others (one value per text; 0 for an empty text).

    The largest count of an n-gram in any text but i is the largest over all texts unless
    text i holds it, then the second largest: keeping both per n-gram makes the whole set one
    pass, not one pass per text.
    """
    tokenised = [words(text) for text in texts]
    grams = [_orders(tokens, order) for tokens in tokenised]
    # per order and n-gram: (largest count, its text, second largest count)
    top: list[dict[tuple[str, ...], tuple[int, int, int]]] = [{} for _ in range(order)]
    for i, orders in enumerate(grams):
        for n, counts in enumerate(orders):
            for gram, count in counts.items():
                first, owner, second = top[n].get(gram, (0, -1, 0))
                top[n][gram] = (
                    (count, i, first) if count > first else (first, owner, max(second, count))
                )
    lengths = [len(tokens) for tokens in tokenised]

    def others_most(i: int) -> Any:
        def most(n: int, gram: tuple[str, ...]) -> int:
            first, owner, second = top[n][gram]
            return second if owner == i else first

        return most

    return [
        _bleu(grams[i], lengths[i], others_most(i), lengths[:i] + lengths[i + 1 :])
        for i in range(len(texts))
    ]


Orders = list[Counter[tuple[str, ...]]]  # the n-gram counts of orders 1..order


def _orders(tokens: Sequence[str], order: int) -> Orders:
    return [ngrams(tokens, n) for n in range(1, order + 1)]


def _bleu(
    hypothesis: Orders,
    length: int,
    most: Callable[[int, tuple[str, ...]], int],
    reference_lengths: Sequence[int],
) -> float:
    """BLEU from the hypothesis's n-gram counts; ``most(n, gram)``: the largest count of ``gram``
    (of order n + 1) in any one reference."""
    if not length or not reference_lengths:
        return 0.0
    log_precisions = []
    for n, grams in enumerate(hypothesis):
        total = sum(grams.values())
        if not total:
            break
        matched = sum(min(count, most(n, gram)) for gram, count in grams.items())
        log_precisions.append(math.log((matched or SMOOTH_FLOOR) / total))
    closest = min(reference_lengths, key=lambda r: (abs(r - length), r))
    brevity = 0.0 if length >= closest else 1.0 - closest / length
    return math.exp(brevity + sum(log_precisions) / len(log_precisions))
