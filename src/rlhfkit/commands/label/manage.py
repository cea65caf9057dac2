"""``label gold`` and ``label overlap``: change how a running campaign checks and shares its work.

    rlhfkit label gold --campaign round-1 --file gold.jsonl      # known answers, by task number
    rlhfkit label overlap --campaign round-1 --overlap 0.5       # more tasks to several people

Both are also on the studio's admin page. A gold task has a known answer: every annotator gets
it, agreement leaves it out, and the admin page shows each annotator's accuracy on gold tasks
(``rlhfkit.feedback.agreement.gold_accuracy``). A new overlap ratio applies to the tasks nobody
has labelled yet and to tasks added later (``rlhfkit.feedback.assign``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from rlhfkit.commands.label.options import CampaignOptions, open_campaign
from rlhfkit.config import Bounds, InputFile, Problem
from rlhfkit.errors import DataError


@dataclass(frozen=True)
class GoldConfig(CampaignOptions):
    """Give tasks known answers (gold), to measure how often each annotator gets them right."""

    file: InputFile = ""
    """JSONL, a row per task: {"task_id": 12, "choice": "A"}, {"task_id": 13, "ranking": [2, 0,
    1]} or {"task_id": 14, "rating": 6}, positions as the studio shows the task ("A" is the
    first output; the admin page's task view shows it) (required)."""
    clear: bool = False
    """Make the file's tasks plain again instead (rows need only task_id)."""

    def check(self) -> Iterable[Problem]:
        yield from CampaignOptions.check(self)
        if not self.file:
            yield Problem(
                "file",
                "",
                "is required; pass --file gold.jsonl with rows such as "
                '{"task_id": 12, "choice": "A"}',
            )


@dataclass(frozen=True)
class OverlapConfig(CampaignOptions):
    """Change the fraction of tasks given to several annotators, for tasks not yet labelled."""

    overlap: Annotated[float | None, Bounds(ge=0, le=1)] = None
    """The new fraction, 0..1 (required): 0.2 gives one task in five to several annotators."""
    overlap_annotators: Annotated[int | None, Bounds(ge=2)] = None
    """How many annotators an overlap task goes to (empty = keep the campaign's)."""

    def check(self) -> Iterable[Problem]:
        yield from CampaignOptions.check(self)
        if self.overlap is None:
            yield Problem("overlap", None, "is required; pass --overlap 0.2 (a fraction 0..1)")


def gold(cfg: GoldConfig) -> None:
    from rlhfkit.feedback.payload import PayloadError
    from rlhfkit.feedback.store import NotFoundError

    answers = _gold_rows(cfg.file, cfg.clear)
    with open_campaign(cfg) as store:
        try:
            store.set_gold(cfg.campaign, answers)
        except (PayloadError, NotFoundError) as error:
            raise DataError(f"{cfg.file}: {error}; nothing was changed") from None
        kinds = Counter(store.task_details(cfg.campaign, task_id).task.kind for task_id in answers)
        total = len(store.gold_answers(cfg.campaign))
    summary = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
    done = "made plain again" if cfg.clear else "marked gold"
    print(
        f"campaign {cfg.campaign!r}: {done}: {summary}; it has {total} gold tasks now, and "
        "the admin page shows each annotator's accuracy on them"
    )


def _gold_rows(path: str, clear: bool) -> dict[int, dict[str, Any] | None]:
    """Task id -> answer (None with ``clear``) from the rows of ``path``, checked for form here
    and for content by the store."""
    from rlhfkit.data.files import read_rows

    rows = read_rows(os.path.expanduser(path))
    if not rows:
        raise DataError(
            f'{path}: holds no rows; give one per task, such as {{"task_id": 12, "choice": "A"}}'
        )
    answers: dict[int, dict[str, Any] | None] = {}
    for number, row in enumerate(rows, start=1):
        task_id = row.get("task_id")
        answer = {key: value for key, value in row.items() if key != "task_id"}
        if type(task_id) is not int:
            raise DataError(
                f"{path}: row {number}: task_id {task_id!r} is not a task number; "
                "the studio's admin page shows each task with its number"
            )
        if task_id in answers:
            raise DataError(f"{path}: row {number}: task {task_id} is given twice; keep one row")
        if clear and answer:
            raise DataError(
                f"{path}: row {number}: --clear takes rows of task_id only, not "
                f"{', '.join(answer)}; drop those fields or --clear"
            )
        answers[task_id] = None if clear else answer
    return answers


def overlap(cfg: OverlapConfig) -> None:
    with open_campaign(cfg) as store:
        unlabelled, items = store.set_overlap(cfg.campaign, cfg.overlap, cfg.overlap_annotators)
        settings = store.campaign_settings(cfg.campaign)
    print(
        f"campaign {cfg.campaign!r}: overlap {settings.overlap:g}, "
        f"{settings.overlap_annotators} annotators per overlap task. Of the {unlabelled} tasks "
        f"nobody has labelled yet, {items} now go to {settings.overlap_annotators} annotators "
        "and the rest to 1; labelled tasks keep theirs, and new tasks follow the new ratio"
    )
