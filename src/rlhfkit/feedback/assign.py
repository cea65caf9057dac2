"""Who labels what: which tasks go to several annotators, and which task an annotator gets next.

Overlap. A campaign's ``overlap`` ratio r makes a fraction r of its tasks *overlap items*, each
to be labelled by ``overlap_annotators`` people, so that agreement can be measured; the other
tasks need one label. In a run of tasks taken in id order, task ``i`` (from 0) is an overlap
item when ceil((i + 1) r) > ceil(i r): every 1/r-th task, the first one included, so that the
first ``n`` of the run always hold exactly ceil(n r) overlap items, however many are added later.
``Store.add_task`` numbers a new task after the campaign's others. When the ratio changes
(``Store.set_overlap``), ``renumber_unlabelled`` numbers the tasks nobody has labelled yet from
0 and gives each the annotators the new settings say; tasks with a label keep theirs, since
people have judged them under the old settings.

Next task (``next_task_query``): one the annotator has neither labelled (live, not undone) nor
skipped; first those that still need annotators (fewer live labels than ``required``) and gold
tasks, which every annotator should see; then, once every task has its labels, the rest (extra
labels only add overlap). Within each group the order is fixed per annotator, so the same task
comes back on a reload, and differs between annotators, so people working at once spread over
different tasks instead of all labelling the first one. The whole choice is one SQL query that
returns one row; the database does the work, not Python over every candidate.

The per-annotator order is a Weyl sequence, computable in plain integer SQL on SQLite and
PostgreSQL alike: task ``t`` sits at (t * TASK_STEP + annotator * ANNOTATOR_STEP) mod MODULUS,
with the steps golden-ratio and silver-ratio fractions of the prime MODULUS. Consecutive task ids
land far apart on that circle (tasks of one prompt are not served in a row), and each annotator
starts at a different point of it, the points spread as evenly as such a sequence spreads them
(Weyl 1916; the three-gap theorem). Products stay below 2**63, so nothing overflows while ids are below 2**31.
"""

from __future__ import annotations

import math
from fractions import Fraction

from sqlalchemy import (
    BigInteger,
    Select,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from rlhfkit.feedback.schema import Label, Skip, Task

MODULUS = 2**31 - 1
"""A prime: every step below is a generator of the integers mod MODULUS."""
TASK_STEP = 1_327_217_884
"""round(MODULUS * (sqrt(5) - 1) / 2): the golden ratio's fraction of the circle."""
ANNOTATOR_STEP = 889_516_852
"""round(MODULUS * (sqrt(2) - 1)): the silver ratio's, so the two steps share no pattern."""


def is_overlap_item(index: int, overlap: float) -> bool:
    """Whether task ``index`` (from 0) of a run is an overlap item at ratio ``overlap``."""
    ratio = Fraction(overlap).limit_denominator(10_000)  # 0.3 is 3/10, not 0.2999...
    return math.ceil((index + 1) * ratio) > math.ceil(index * ratio)


def annotators_needed(index: int, overlap: float, overlap_annotators: int) -> int:
    """How many annotators task ``index`` of a run needs: ``overlap_annotators`` or 1."""
    return overlap_annotators if is_overlap_item(index, overlap) else 1


def renumber_unlabelled(session: Session, campaign_id: int, overlap: float,
                        overlap_annotators: int) -> tuple[int, int]:
    """Give the campaign's tasks nobody has labelled yet, in id order from 0, the annotators
    these settings say; return how many tasks that is and how many are overlap items."""
    nobody_has_labelled = ~exists().where(Label.task_id == Task.id, Label.undone_at.is_(None))
    unlabelled = session.execute(select(Task.id, Task.required)
                                 .where(Task.campaign_id == campaign_id, nobody_has_labelled)
                                 .order_by(Task.id)).all()
    wanted = [annotators_needed(index, overlap, overlap_annotators)
              for index in range(len(unlabelled))]
    changes = [{"task": task_id, "new_required": new}
               for (task_id, required), new in zip(unlabelled, wanted, strict=True)
               if new != required]
    if changes:
        # checked again as each row is written: a task labelled meanwhile keeps its number
        session.connection().execute(
            update(Task).where(Task.id == bindparam("task"), nobody_has_labelled)
            .values(required=bindparam("new_required")), changes)
    return len(unlabelled), sum(new > 1 for new in wanted)


def next_task_query(campaign_id: int, annotator_id: int) -> Select:
    """``SELECT`` of the id of the annotator's next task in the campaign (no row: none left).

    Live labels are counted once, grouped by task, and joined: counted per candidate task in a
    correlated subquery, they cost PostgreSQL a scan of a small ``labels`` table per task (160
    ms against 8 ms at 5,000 tasks and 300 labels).
    """
    live = (select(Label.task_id, func.count().label("labels"))
            .join(Task, Task.id == Label.task_id)
            .where(Task.campaign_id == campaign_id, Label.undone_at.is_(None))
            .group_by(Label.task_id).subquery())
    labelled = exists().where(Label.task_id == Task.id, Label.annotator_id == annotator_id,
                              Label.undone_at.is_(None))
    skipped = exists().where(Skip.task_id == Task.id, Skip.annotator_id == annotator_id)
    has_its_labels = and_(func.coalesce(live.c.labels, 0) >= Task.required,
                          Task.is_gold.is_(False))
    position = (cast(Task.id, BigInteger) * TASK_STEP
                + cast(annotator_id, BigInteger) * ANNOTATOR_STEP) % MODULUS
    return (select(Task.id)
            .outerjoin(live, live.c.task_id == Task.id)
            .where(Task.campaign_id == campaign_id, ~or_(labelled, skipped))
            .order_by(case((has_its_labels, 1), else_=0), position, Task.id)
            .limit(1))
