"""Relabelling in hindsight: say what a sample actually achieved, so it can be learned from.

Two kinds of relabelling, for the round-based hindsight methods:

- **Instructions (HIR)**: a verifier's (or thresholded reward's) verdict picks the instruction a
  sample fulfilled: the success instruction ("... Answer correctly.") when it passed, the failure
  one ("... Answer incorrectly.") when it did not (Zhang et al. 2023, arXiv 2302.05206).
- **Goals (hindsight experience replay, Andrychowicz et al. 2017)**: a goal-conditioned prompt
  ("[negative] The movie was") asked for one goal; the sample is rewritten with the goal it
  actually reached, measured from the reward's score, and becomes a success for it.

Goals are said in words the pretrained model already reads ("very positive", "length 12 words"), not
codes ("level 4 of 4"): relabelling then sharpens a meaning the model half knows instead of
teaching an arbitrary token one from a few hundred samples. Measured on SmolLM2-135M with 64
held-out movie openings, the untrained model asked "[very positive]" scores +0.17 against +0.08
unasked, while "[sentiment level 4 of 4]" scores +0.08 (docs/hindsight.md).

The reward's score is the measurement, so a goal kind works only with rewards that measure it:

==========  =====================  ===============================================================
goal kind   rewards that measure   goal reached
==========  =====================  ===============================================================
sentiment   sentiment, vader       level k of K: the score in -1..1 cut into K equal-width bins
                                   (edges -1 + 2i/K, i = 1..K-1; a score on an edge goes up),
                                   named in words (``SENTIMENT_NAMES``, or ``names``)
length      length (word count)    N words, N = 0..max_words; longer outputs reach "max_words or
                                   more words"
number      number (first number   the number N, N = 0..max_number; a completion without a number
            in digits)             reaches "no number" and a larger one "a number above
                                   max_number": outcomes a prompt never asks for, but learns from
==========  =====================  ===============================================================
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rlhfkit.batch import Prompt
from rlhfkit.conditioning import Conditioning
from rlhfkit.errors import ConfigError

GoalKind = Literal["sentiment", "length", "number"]

# goal kind -> the reward names whose score measures it (a spec's part before ':', and its argument)
GOAL_MEASURES: dict[str, tuple[str, ...]] = {
    "sentiment": ("sentiment", "vader"),
    "length": ("length",),
    "number": ("number",),
}
NO_NUMBER = -1  # the goal a completion without a number reached (number goals)

# K sentiment levels -> their names, most negative first (other K: "sentiment level k of K")
SENTIMENT_NAMES: dict[int, tuple[str, ...]] = {
    2: ("negative", "positive"),
    3: ("negative", "neutral", "positive"),
    4: ("very negative", "negative", "positive", "very positive"),
    5: ("very negative", "negative", "neutral", "positive", "very positive"),
}


# --- HIR: success or failure ---------------------------------------------------------------------


def binary_outcomes(scores: Sequence[float], threshold: float | None, reward: str) -> list[bool]:
    """Whether each sample succeeded: score >= ``threshold``, or the verifier's own 1/0.

    Without a threshold every score must be exactly 0 or 1 (a verifier's verdict): a reward with
    partial credit (reasoning-gym gives 0.5 for "-4.0" against "-4") or a continuous score has
    no success to read off until the user says where it starts.
    """
    if threshold is not None:
        return [score >= threshold for score in scores]
    other = next((score for score in scores if score not in (0.0, 1.0)), None)
    if other is not None:
        raise ConfigError(
            f"hir.threshold is not set, but reward {reward!r} gave the non-binary "
            f"score {other:g}; HIR relabels each sample as a success or a failure: "
            "pass --hir.threshold T (success when score >= T, e.g. 1.0 for full "
            "credit)"
        )
    return [score == 1.0 for score in scores]


def relabel_instructions(
    prompts: Sequence[Prompt],
    successes: Sequence[bool],
    success: Conditioning,
    failure: Conditioning,
) -> tuple[list[Prompt], list[Prompt]]:
    """(each prompt with the instruction its sample fulfilled, each with the opposite one)."""
    matching = [
        (success if ok else failure).apply(p) for p, ok in zip(prompts, successes, strict=True)
    ]
    opposite = [
        (failure if ok else success).apply(p) for p, ok in zip(prompts, successes, strict=True)
    ]
    return matching, opposite


# --- goals ---------------------------------------------------------------------------------------


def measure_problem(kind: str, reward: str) -> str | None:
    """Why ``reward`` cannot measure goals of ``kind`` (to follow "goal.kind = KIND: "), or None."""
    name, _, arg = reward.strip().partition(":")
    measures = GOAL_MEASURES[kind]
    if name in measures and not (name == "length" and arg):
        return None
    extra = (
        " (plain length, the word count; length:N scores the distance to N words)"
        if name == "length" and kind == "length"
        else ""
    )
    return (
        f"is measured by the reward's score, but reward = {reward!r} cannot measure it; "
        f"set --reward {' or '.join(measures)}{extra}, or choose a goal.kind that reward "
        "measures"
    )


def goal_range(kind: str, levels: int, max_words: int, max_number: int) -> range:
    """The goals a prompt of ``kind`` may ask for: sentiment levels 1..levels, word counts
    0..max_words, or numbers 0..max_number."""
    if kind == "sentiment":
        return range(1, levels + 1)
    return range(0, (max_words if kind == "length" else max_number) + 1)


@dataclass(frozen=True)
class GoalSpace:
    """The goals of one kind: which one a score reached, and how a prompt asks for one.

    Goals are integers: sentiment levels 1..K, word counts 0..max_words, or numbers
    0..max_number. ``names`` says the sentiment levels in words, most negative first (empty:
    ``SENTIMENT_NAMES`` for K = 2..5). A number goal's sample can reach two goals no prompt asks
    for: ``NO_NUMBER`` and max_number + 1 ("a number above max_number").
    """

    kind: GoalKind
    levels: int = 4
    max_words: int = 16
    max_number: int = 9
    template: str = "[{goal}] {prompt}"
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in GOAL_MEASURES:
            raise ConfigError(
                f"goal.kind = {self.kind!r}: not a goal kind; choose one of "
                + ", ".join(GOAL_MEASURES)
            )
        for key in ("{goal}", "{prompt}"):
            if self.template.count(key) != 1:
                raise ConfigError(
                    f"goal.template = {self.template!r} must contain {key} exactly "
                    "once, as in '[{goal}] {prompt}'"
                )
        if self.kind == "sentiment" and self.names and len(self.names) != self.levels:
            raise ConfigError(
                f"goal.names = {list(self.names)!r} names {len(self.names)} levels "
                f"but goal.levels = {self.levels}; give one name per level, most "
                "negative first"
            )

    @classmethod
    def for_reward(cls, kind: GoalKind, reward: str, **settings: Any) -> GoalSpace:
        """The goal space, after checking that ``reward`` measures ``kind`` (ConfigError if not)."""
        space = cls(kind, **settings)
        problem = measure_problem(kind, reward)
        if problem:
            raise ConfigError(f"goal.kind = {kind!r}: {problem}")
        return space

    @property
    def goals(self) -> list[int]:
        """The goals a prompt may ask for."""
        return list(goal_range(self.kind, self.levels, self.max_words, self.max_number))

    @property
    def top(self) -> int:
        """The most positive level, the longest length, or the largest number."""
        return self.goals[-1]

    def edges(self) -> list[float]:
        """Sentiment: the K-1 inner bin edges on -1..1."""
        return [-1.0 + 2.0 * i / self.levels for i in range(1, self.levels)]

    def reached(self, score: float) -> int:
        """The goal a sample with this reward ``score`` reached."""
        if self.kind == "sentiment":
            return 1 + bisect.bisect_right(self.edges(), score)
        if self.kind == "number":
            return NO_NUMBER if score < 0 else min(round(score), self.max_number + 1)
        return min(max(round(score), 0), self.max_words)

    def describe(self, goal: int) -> str:
        """The goal in words, as the prompt shows it."""
        if self.kind == "sentiment":
            names = self.names or SENTIMENT_NAMES.get(self.levels)
            return names[goal - 1] if names else f"sentiment level {goal} of {self.levels}"
        if self.kind == "number" and goal == NO_NUMBER:
            return "no number"
        if self.kind == "number":
            return (
                f"a number above {self.max_number}"
                if goal > self.max_number
                else f"the number {goal}"
            )
        if goal == self.max_words:
            return f"length {goal} or more words"
        return f"length {goal} word" + ("" if goal == 1 else "s")

    def conditioning(self, goal: int, method: str) -> Conditioning:
        """The prompt template that asks for ``goal`` (what the exported model is asked with)."""
        return Conditioning(
            method=method, instruction=self.template.replace("{goal}", self.describe(goal))
        )

    def ask(self, prompt: Prompt, goal: int) -> Prompt:
        """``prompt`` conditioned on ``goal``."""
        return self.conditioning(goal, "relabel").apply(prompt)

    def distance(self, reached: int, commanded: int) -> float:
        """How far the reached goal is from the commanded one, 0 (hit) .. 1 (opposite end, or
        an outcome outside the goals: no number, or one above max_number)."""
        if reached not in self.goals:
            return 1.0
        return abs(reached - commanded) / max(self.top - self.goals[0], 1)
