"""The plain values the store hands out, and how its rows become them.

Label records (``records.LabelRecord``) go to agreement statistics and exports; the values here
go to the web app and the CLI: a campaign's settings, a task as an annotator sees it, progress.
All are frozen, built inside a transaction and usable after it, with no database attached.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rlhfkit.feedback.records import KINDS, LabelRecord, OutputRecord
from rlhfkit.feedback.schema import Label, Output, Task


@dataclass(frozen=True)
class CampaignSettings:
    """How a campaign hands out work (the ``campaigns.settings`` JSON)."""

    task_kinds: tuple[str, ...] = ("pairwise",)
    """The kinds of task it may hold (``records.KINDS``)."""
    overlap: float = 0.0
    """Fraction of tasks that go to several annotators, so agreement can be measured."""
    overlap_annotators: int = 2
    """How many annotators an overlap task goes to."""

    def problems(self) -> list[str]:
        """What is wrong with these settings, one message per field; empty when nothing."""
        found = [
            f"task kind {kind!r} is not one of {', '.join(KINDS)}"
            for kind in self.task_kinds
            if kind not in KINDS
        ]
        if not self.task_kinds:
            found.append(f"task_kinds is empty: give one or more of {', '.join(KINDS)}")
        if not (isinstance(self.overlap, (int, float)) and 0 <= self.overlap <= 1):
            found.append(
                f"overlap {self.overlap!r} is not a fraction: give 0..1 (0.2 sends one "
                "task in five to several annotators)"
            )
        if type(self.overlap_annotators) is not int or self.overlap_annotators < 2:
            found.append(f"overlap_annotators {self.overlap_annotators!r}: give 2 or more")
        return found

    def as_json(self) -> dict[str, Any]:
        return {
            "task_kinds": list(self.task_kinds),
            "overlap": self.overlap,
            "overlap_annotators": self.overlap_annotators,
        }

    @classmethod
    def from_json(cls, saved: Mapping[str, Any]) -> CampaignSettings:
        return cls(tuple(saved["task_kinds"]), saved["overlap"], saved["overlap_annotators"])


@dataclass(frozen=True)
class AnnotatorInfo:
    """An account, for signing in: the web app checks the password against the hash."""

    annotator_id: int
    name: str
    password_hash: str
    is_admin: bool
    session_epoch: int = 0
    """Session cookies stamped with another epoch are refused (``Store.end_sessions``)."""


@dataclass(frozen=True)
class TaskView:
    """A task as an annotator sees it: the prompt and the outputs in display order.

    Whether it is a gold task is left out: an annotator who knew would try harder on it.
    """

    task_id: int
    campaign: str
    kind: str
    prompt: str
    outputs: tuple[OutputRecord, ...]


@dataclass(frozen=True)
class TaskDetails:
    """A task as an admin sees it: what annotators see, and what they are not shown."""

    task: TaskView
    required: int
    """How many annotators should label it (``rlhfkit.feedback.assign``)."""
    labels: int
    """Its live labels, all annotators."""
    gold: dict[str, Any] | None
    """The known answer of a gold task in label form (``{"choice": "A"}``), else None."""
    previous: int | None
    """The campaign's task before it, by id (None for the first): for browsing."""
    next: int | None
    """The campaign's task after it, by id (None for the last)."""


@dataclass(frozen=True)
class AnnotatorProgress:
    annotator: str
    labelled: int
    """Live (not undone) labels in the campaign."""
    skipped: int
    remaining: int
    """Tasks neither labelled nor skipped."""


@dataclass(frozen=True)
class Progress:
    campaign: str
    tasks: int
    complete: int
    """Tasks with as many live labels as they require."""
    labels: int
    """Live labels, all annotators."""
    annotators: tuple[AnnotatorProgress, ...]
    """Every annotator, by name."""


def output_record(output: Output) -> OutputRecord:
    return OutputRecord(
        output.id,
        output.text,
        output.model,
        output.model_hash,
        output.generation,
        output.seed,
        output.created_at.isoformat(),
    )


def label_record(
    label: Label,
    task: Task,
    prompt: str,
    campaign: str,
    annotator: str,
    outputs: Mapping[int, OutputRecord],
) -> LabelRecord:
    """A label row as a record; ``outputs`` maps ids to records and must hold the task's."""
    return LabelRecord(
        label_id=label.id,
        campaign=campaign,
        task_id=task.id,
        kind=task.kind,
        annotator=annotator,
        prompt=prompt,
        outputs=tuple(outputs[output_id] for output_id in task.output_ids),
        choice=label.choice,
        ranking=None if label.ranking is None else tuple(label.ranking),
        rating=label.rating,
        thumbs=label.thumbs,
        critique=label.critique,
        correction=label.correction,
        flags=tuple(label.flags),
        is_gold=task.is_gold,
        created_at=label.created_at.isoformat(),
    )


def gold_in_output_ids(task: Task) -> Any:
    """A gold task's answer in the form ``agreement.gold_accuracy`` takes (see
    ``Store.gold_answers``): positions become output ids, so display order does not matter."""
    answer = task.gold_answer
    if "choice" in answer:
        choice = answer["choice"]
        return task.output_ids["AB".index(choice)] if choice in ("A", "B") else choice
    if "ranking" in answer:
        return [task.output_ids[position] for position in answer["ranking"]]
    return answer["rating"] if "rating" in answer else answer["thumbs"]
