"""What the feedback store returns: model outputs with their provenance, and people's labels.

A campaign holds tasks; a task shows a prompt and one or more model outputs, and each person's
answer to it is a label. Labels come in five kinds, one per way of judging:

- ``pairwise``: two outputs, A or B is better, or it is a tie, or both are bad (``choice``);
- ``ranking``: two or more outputs ordered best first (``ranking``);
- ``rating``: one output scored on a 1..7 scale (``rating``) and/or thumbs up or down
  (``thumbs``);
- ``critique``: free text on what is wrong with one output (``critique``);
- ``correction``: the output as the person would have written it (``correction``).

Any label may carry flags (``FLAGS``), and the store lets any kind carry a critique as a note
(``rlhfkit.feedback.payload``). Flags belong to the label, not to one output: on a label
that shows two outputs the flag does not say which of them it is about, so exports treat every
output of a flagged label as flagged (``rlhfkit.feedback.export``).

``outputs`` are in the order the annotator saw them, and ``choice`` and ``ranking`` point into
that order: "A" is ``outputs[0]``. Agreement statistics compare labels by ``output_id``, so they
do not depend on that order (``rlhfkit.feedback.agreement``).

The records are frozen values: the store builds them from its rows, and agreement statistics
and exports read them without a database. ``LabelRecord`` checks on creation that its values
are ones the store can hold (a known kind and choice, a rating on the scale, a ranking that
orders every output once), so a damaged database is reported where it is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlhfkit.errors import DataError

KINDS = ("pairwise", "ranking", "rating", "critique", "correction")
"""The kinds of task a label answers."""
CHOICES = ("A", "B", "tie", "both_bad")
"""A pairwise label's answers: A (``outputs[0]``) better, B (``outputs[1]``) better, equally
good, or both unacceptable."""
FLAGS = ("unsafe", "factually_wrong", "off_topic")
"""What an annotator may flag on any label."""
RATING_SCALE = (1.0, 7.0)
"""Lowest and highest rating: 1 worst, 7 best."""


@dataclass(frozen=True)
class OutputRecord:
    """One model output as stored, with the provenance needed to reproduce it."""

    output_id: int
    text: str
    """Exactly as generated (or imported): shown and exported unchanged."""
    model: str
    """The model's path or name as given to ``label init`` / ``next-round``."""
    model_hash: str
    """Hash of the model's weights: which version of the model produced the text."""
    generation: dict
    """Generation settings (temperature, top_p, max_new_tokens ...), JSON-serialisable."""
    seed: int | None
    """Sampling seed; None for imported outputs."""
    created_at: str
    """ISO 8601 UTC."""


@dataclass(frozen=True)
class LabelRecord:
    """One annotator's answer to one task, with the outputs as they were shown."""

    label_id: int
    campaign: str
    task_id: int
    kind: str
    """One of ``KINDS``."""
    annotator: str
    prompt: str
    outputs: tuple[OutputRecord, ...]
    """As shown, in display order."""
    choice: str | None = None
    """Pairwise: "A" | "B" | "tie" | "both_bad" (``CHOICES``), over ``outputs[0]`` and ``[1]``."""
    ranking: tuple[int, ...] | None = None
    """Positions into ``outputs``, best first, each position once."""
    rating: float | None = None
    """1..7 (``RATING_SCALE``), higher is better."""
    thumbs: bool | None = None
    """True for thumbs up."""
    critique: str | None = None
    correction: str | None = None
    """The corrected text of the (single) output."""
    flags: tuple[str, ...] = ()
    """Any of ``FLAGS``; about the label's outputs as a whole."""
    is_gold: bool = False
    """The task has a known answer, seeded to measure annotators (see agreement.gold_accuracy)."""
    created_at: str = ""
    """ISO 8601 UTC."""

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem:
            raise DataError(
                f"label {self.label_id} (campaign {self.campaign!r}, task "
                f"{self.task_id}): {problem}; fix or remove it in the store"
            )

    def _problem(self) -> str:
        """What makes this label impossible to use, or "" if nothing."""
        shown = len(self.outputs)
        if self.kind not in KINDS:
            return f"kind {self.kind!r} is not one of {', '.join(KINDS)}"
        if shown == 0:
            return "shows no outputs"
        if self.choice is not None:
            if self.choice not in CHOICES:
                return f"choice {self.choice!r} is not one of {', '.join(CHOICES)}"
            if shown != 2:
                return f"a pairwise choice over {shown} outputs; it needs exactly 2"
        if self.ranking is not None and sorted(self.ranking) != list(range(shown)):
            return (
                f"ranking {list(self.ranking)} does not order each of the {shown} "
                f"output positions 0..{shown - 1} once"
            )
        low, high = RATING_SCALE
        if self.rating is not None and not (
            math.isfinite(self.rating) and low <= self.rating <= high
        ):
            return f"rating {self.rating!r} is outside the scale {low:g}..{high:g}"
        unknown = [flag for flag in self.flags if flag not in FLAGS]
        if unknown:
            return f"flags {unknown} are not among {', '.join(FLAGS)}"
        return ""
