"""How well people agree with each other: the ceiling for a reward model's pair accuracy.

A reward model is scored by how often it orders a held-out pair as the consensus does (the
chosen text has the higher mean rating). People disagree, so that accuracy has a natural yard-
stick: how often one person, a single rater drawn at random, would order the pair the same
way. For a pair whose texts have individual ratings ``a`` (chosen) and ``b`` (rejected),

    p = P(r_a > r_b) + 0.5 P(r_a = r_b),      r_a ~ a, r_b ~ b uniformly

(``rlhfkit.losses.preference.rater_preference_probability``; each text may have different
raters, as in VADER, so a rater is drawn per text). Then

    single_rater_accuracy = mean over pairs of p
    rater_agreement       = mean over pairs of p^2 + (1 - p)^2

the second being the chance that two independent raters order a pair the same way (a tie
counts as a coin flip): the inter-annotator agreement that preference datasets report, e.g.
72.6 +- 1.5% between InstructGPT's labellers (Ouyang et al., 2022, "Training language models
to follow instructions with human feedback"). A reward model can beat one rater: trained on
many raters' means, it predicts the consensus, not one person's noisy view of it.

The pairs must carry their texts' individual ratings in ``meta["chosen_ratings"]`` and
``meta["rejected_ratings"]``, as ``rlhfkit.data.feedback.pairs_from_ratings`` keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from rlhfkit.data.feedback import Pair
from rlhfkit.errors import DataError


class AgreementCeiling(NamedTuple):
    """What people achieve on a set of pairs, to set a reward model's accuracy beside."""

    single_rater_accuracy: float
    """Chance that one random rater orders a pair as the consensus does."""
    rater_agreement: float
    """Chance that two random raters order a pair the same way."""
    pairs: int


def rater_consensus_probabilities(pairs: Sequence[Pair]) -> list[float]:
    """p per pair: the chance that a random rater prefers the chosen text (ties half)."""
    from rlhfkit.losses.preference import rater_preference_probability

    if not pairs:
        raise DataError("no pairs to measure rater agreement on; give at least one pair")
    probabilities = []
    for index, pair in enumerate(pairs):
        chosen, rejected = pair.meta.get("chosen_ratings"), pair.meta.get("rejected_ratings")
        if not chosen or not rejected:
            raise DataError(
                f"pair {index} has no individual ratings (meta['chosen_ratings'], "
                "meta['rejected_ratings']); agreement needs pairs made from "
                "ratings by several raters, e.g. by pairs_from_ratings"
            )
        probabilities.append(rater_preference_probability(chosen, rejected))
    return probabilities


def single_rater_accuracy(pairs: Sequence[Pair]) -> float:
    """Mean chance that one random rater orders a pair as the consensus (mean rating) does."""
    probabilities = rater_consensus_probabilities(pairs)
    return sum(probabilities) / len(probabilities)


def rater_agreement(pairs: Sequence[Pair]) -> float:
    """Mean chance that two independent random raters order a pair the same way."""
    probabilities = rater_consensus_probabilities(pairs)
    return sum(p * p + (1 - p) * (1 - p) for p in probabilities) / len(probabilities)


def agreement_ceiling(pairs: Sequence[Pair]) -> AgreementCeiling:
    """Both numbers for a report line beside a reward model's pair accuracy."""
    probabilities = rater_consensus_probabilities(pairs)
    return AgreementCeiling(
        single_rater_accuracy=sum(probabilities) / len(probabilities),
        rater_agreement=sum(p * p + (1 - p) * (1 - p) for p in probabilities) / len(probabilities),
        pairs=len(probabilities),
    )
