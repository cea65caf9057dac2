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
skipped, and that still needs annotators: fewer live labels and live reservations of other
annotators than ``required``; or a gold task, which every annotator should see once. A task
with its labels is never offered again, so the counts that overlap and gold accuracy rest on
cannot be stuffed. The order is fixed per annotator, so the same task comes back on a reload,
and differs between annotators, so people working at once spread over different tasks instead
of all labelling the first one. The whole choice is one SQL query that returns one row; the
database does the work, not Python over every candidate.

Reservations. The task offered is held for the annotator (``schema.Reservation``, one per
annotator and campaign) for ``HOLD_S``: it counts as one of the task's labels, so two people
working at once are never offered the last place on one task. ``Store.next_task`` chooses and
reserves in one transaction that no other assignment or label of the campaign runs beside
(SQLite's ``BEGIN IMMEDIATE``; on PostgreSQL a transaction-scoped advisory lock per campaign,
``campaign_lock``), so the count it reads is still true when it writes. A reservation that
expired (the person walked away) no longer holds the task for them.

What an annotator may label (``Store.submit_label`` with a campaign, as the studio calls it): the
task the studio last offered them in that campaign (their reservation, expired or not), while
it still has a place for them by the rules above. Any other task of the campaign, one of another
campaign, a task they skipped or already labelled, or one whose places others have taken since
their reservation expired, is refused, whatever id a client posts.

The per-annotator order is a Weyl sequence, computable in plain integer SQL on SQLite and
PostgreSQL alike: task ``t`` sits at (t * TASK_STEP + annotator * ANNOTATOR_STEP) mod MODULUS,
with the steps golden-ratio and silver-ratio fractions of the prime MODULUS. Consecutive task ids
land far apart on that circle (tasks of one prompt are not served in a row), and each annotator
starts at a different point of it, the points spread as evenly as such a sequence spreads them
(Weyl 1916; the three-gap theorem). Products stay below 2**63, so nothing overflows while ids are below 2**31.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from fractions import Fraction

from sqlalchemy import (
    BigInteger,
    Select,
    bindparam,
    cast,
    delete,
    exists,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from rlhfkit.feedback.schema import Label, Reservation, Skip, Task

MODULUS = 2**31 - 1
"""A prime: every step below is a generator of the integers mod MODULUS."""
TASK_STEP = 1_327_217_884
"""round(MODULUS * (sqrt(5) - 1) / 2): the golden ratio's fraction of the circle."""
ANNOTATOR_STEP = 889_516_852
"""round(MODULUS * (sqrt(2) - 1)): the silver ratio's, so the two steps share no pattern."""
HOLD_S = 15 * 60
"""How long an offered task stays reserved for its annotator: a person reading two long
outputs takes minutes, and one who walked away frees the task after this."""
_LOCK_SPACE = 0x726C6866  # "rlhf": first key of the per-campaign PostgreSQL advisory lock


def is_overlap_item(index: int, overlap: float) -> bool:
    """Whether task ``index`` (from 0) of a run is an overlap item at ratio ``overlap``."""
    ratio = Fraction(overlap).limit_denominator(10_000)  # 0.3 is 3/10, not 0.2999...
    return math.ceil((index + 1) * ratio) > math.ceil(index * ratio)


def annotators_needed(index: int, overlap: float, overlap_annotators: int) -> int:
    """How many annotators task ``index`` of a run needs: ``overlap_annotators`` or 1."""
    return overlap_annotators if is_overlap_item(index, overlap) else 1


def renumber_unlabelled(
    session: Session, campaign_id: int, overlap: float, overlap_annotators: int
) -> tuple[int, int]:
    """Give the campaign's tasks nobody has labelled yet, in id order from 0, the annotators
    these settings say; return how many tasks that is and how many are overlap items."""
    nobody_has_labelled = ~exists().where(Label.task_id == Task.id, Label.undone_at.is_(None))
    unlabelled = session.execute(
        select(Task.id, Task.required)
        .where(Task.campaign_id == campaign_id, nobody_has_labelled)
        .order_by(Task.id)
    ).all()
    wanted = [
        annotators_needed(index, overlap, overlap_annotators) for index in range(len(unlabelled))
    ]
    changes = [
        {"task": task_id, "new_required": new}
        for (task_id, required), new in zip(unlabelled, wanted, strict=True)
        if new != required
    ]
    if changes:
        # checked again as each row is written: a task labelled meanwhile keeps its number
        session.connection().execute(
            update(Task)
            .where(Task.id == bindparam("task"), nobody_has_labelled)
            .values(required=bindparam("new_required")),
            changes,
        )
    return len(unlabelled), sum(new > 1 for new in wanted)


def campaign_lock(session: Session, campaign_id: int, *, lazy_commit: bool = False) -> None:
    """Make the session's transaction the only one assigning or labelling in the campaign.

    SQLite needs nothing: the store's write transactions begin ``IMMEDIATE``, one at a time.
    PostgreSQL runs them side by side under READ COMMITTED, where two could count the same free
    place; a transaction-scoped advisory lock per campaign queues them, and each statement after
    it sees what the one before committed. ``lazy_commit`` (a transaction that only reserves)
    also lets its commit skip the wait for the disk, in the same round trip
    (``engine.LAZY_SYNC`` does it for SQLite).
    """
    if session.get_bind().dialect.name == "postgresql":
        lazy = ", set_config('synchronous_commit', 'off', true)" if lazy_commit else ""
        session.execute(
            text(f"SELECT pg_advisory_xact_lock(:space, :campaign){lazy}"),
            {"space": _LOCK_SPACE, "campaign": campaign_id},
        )


def reserve(
    session: Session,
    campaign_id: int,
    annotator_id: int,
    task_id: int | None,
    now: datetime,
    hold_s: float,
) -> None:
    """Hold ``task_id`` for the annotator until ``now + hold_s`` (None: hold nothing), in one
    statement. Asked again for the task it holds with over half the hold left (a reload), it
    writes nothing."""
    if task_id is None:
        session.execute(
            delete(Reservation).where(
                Reservation.campaign_id == campaign_id, Reservation.annotator_id == annotator_id
            )
        )
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    expires_at = now + timedelta(seconds=hold_s)
    statement = insert(Reservation).values(
        campaign_id=campaign_id, annotator_id=annotator_id, task_id=task_id, expires_at=expires_at
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[Reservation.campaign_id, Reservation.annotator_id],
            set_={"task_id": task_id, "expires_at": expires_at},
            where=or_(
                Reservation.task_id != task_id,
                Reservation.expires_at < now + timedelta(seconds=hold_s / 2),
            ),
        )
    )


def next_task_query(campaign_id: int, annotator_id: int, now: datetime) -> Select:
    """``SELECT`` of the id of the annotator's next task in the campaign (no row: none left),
    counting places held at ``now`` by other annotators' reservations as taken.

    Live labels are counted once, grouped by task, and joined: counted per candidate task in a
    correlated subquery, they cost PostgreSQL a scan of a small ``labels`` table per task (160
    ms against 8 ms at 5,000 tasks and 300 labels). Reservations, one per annotator, likewise.
    """
    live = (
        select(Label.task_id, func.count().label("labels"))
        .join(Task, Task.id == Label.task_id)
        .where(Task.campaign_id == campaign_id, Label.undone_at.is_(None))
        .group_by(Label.task_id)
        .subquery()
    )
    held = (
        select(Reservation.task_id, func.count().label("held"))
        .where(
            Reservation.campaign_id == campaign_id,
            Reservation.annotator_id != annotator_id,
            Reservation.expires_at > now,
        )
        .group_by(Reservation.task_id)
        .subquery()
    )
    labelled = exists().where(
        Label.task_id == Task.id, Label.annotator_id == annotator_id, Label.undone_at.is_(None)
    )
    skipped = exists().where(Skip.task_id == Task.id, Skip.annotator_id == annotator_id)
    has_a_place = or_(
        Task.is_gold.is_(True),
        func.coalesce(live.c.labels, 0) + func.coalesce(held.c.held, 0) < Task.required,
    )
    position = (
        cast(Task.id, BigInteger) * TASK_STEP + cast(annotator_id, BigInteger) * ANNOTATOR_STEP
    ) % MODULUS
    return (
        select(Task.id)
        .outerjoin(live, live.c.task_id == Task.id)
        .outerjoin(held, held.c.task_id == Task.id)
        .where(Task.campaign_id == campaign_id, ~or_(labelled, skipped), has_a_place)
        .order_by(position, Task.id)
        .limit(1)
    )


def has_a_place(session: Session, task_id: int, annotator_id: int, now: datetime) -> bool:
    """Whether ``next_task_query`` may still offer ``task_id`` to the annotator: not labelled
    or skipped by them, and gold or with a place free at ``now``. One statement: it runs under
    the campaign's lock, on every task handed out."""
    labels = (
        select(func.count())
        .select_from(Label)
        .where(Label.task_id == task_id, Label.undone_at.is_(None))
        .scalar_subquery()
    )
    held = (
        select(func.count())
        .select_from(Reservation)
        .where(
            Reservation.task_id == task_id,
            Reservation.annotator_id != annotator_id,
            Reservation.expires_at > now,
        )
        .scalar_subquery()
    )
    theirs = or_(
        exists().where(
            Label.task_id == task_id, Label.annotator_id == annotator_id, Label.undone_at.is_(None)
        ),
        exists().where(Skip.task_id == task_id, Skip.annotator_id == annotator_id),
    )
    return (
        session.scalar(
            select(~theirs & or_(Task.is_gold.is_(True), labels + held < Task.required)).where(
                Task.id == task_id
            )
        )
        is True
    )


def places_taken(session: Session, task: Task, annotator_id: int, now: datetime) -> int:
    """Live labels on ``task`` plus places held on it at ``now`` by other annotators."""
    labels = session.scalar(
        select(func.count())
        .select_from(Label)
        .where(Label.task_id == task.id, Label.undone_at.is_(None))
    )
    held = session.scalar(
        select(func.count())
        .select_from(Reservation)
        .where(
            Reservation.task_id == task.id,
            Reservation.annotator_id != annotator_id,
            Reservation.expires_at > now,
        )
    )
    return labels + held
