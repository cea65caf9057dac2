"""The feedback store: campaigns of prompts, model outputs, tasks and people's labels.

    store = open_store("runs/round-1")       # runs/round-1/feedback.db, created or upgraded
    store.create_campaign("round-1", task_kinds=("pairwise",), overlap=0.2)
    store.add_annotator("ada", password_hash)
    prompt = store.add_prompt("round-1", "Review a film you liked.")
    a = store.add_output(prompt, text, model="runs/sft", model_hash=digest, seed=0)
    b = store.add_output(prompt, other_text, model="runs/sft", model_hash=digest, seed=1)
    store.add_task("round-1", "pairwise", [a, b])
    task = store.next_task("round-1", "ada")  # offered and reserved for ada
    store.submit_label(task.task_id, "ada", request_id, {"choice": "A"}, campaign="round-1")
    store.label_records("round-1")          # for rlhfkit.feedback.agreement and .export

SQLite by default, PostgreSQL by URL (``rlhfkit.feedback.engine``). Every method is one
transaction: it happens whole or not at all. Campaigns and annotators are named by their
(unique) names, everything else by id.

A submission is idempotent on its ``request_id``, a fresh id the client makes per form: the
unique constraint on it, not a look-up first, decides, so even concurrent retries store one
row (the second insert fails and finds the first). Undo keeps the label, marked undone.

Which task an annotator gets next, and how many annotators each task needs (the campaign's
overlap ratio), is decided in ``rlhfkit.feedback.assign``; gold tasks, with a known answer,
are made so by ``add_task(gold=...)`` or later by ``set_gold``, and go to every annotator.
``next_task`` reserves the task it offers, and ``submit_label`` / ``skip`` given the campaign
(as the studio calls them) take only the task offered, while it has a place: what a client
posts cannot label another campaign's task, an unoffered one, or one past its count.
``transaction()`` makes several calls one transaction (``label init`` writes a campaign whole).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from secrets import token_hex
from typing import Any

from sqlalchemy import Engine, delete, func, select
from sqlalchemy import text as sql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.feedback.assign import (
    HOLD_S,
    annotators_needed,
    campaign_lock,
    has_a_place,
    next_task_query,
    places_taken,
    renumber_unlabelled,
    reserve,
)
from rlhfkit.feedback.engine import LAZY_SYNC, connect
from rlhfkit.feedback.migrations import upgrade
from rlhfkit.feedback.payload import (
    ID_MAX,
    PayloadError,
    check_gold,
    check_label,
    check_request_id,
    check_text,
    outputs_allowed,
)
from rlhfkit.feedback.records import LabelRecord, OutputRecord
from rlhfkit.feedback.schema import (
    NAME_MAX,
    Annotator,
    Campaign,
    Label,
    Output,
    Prompt,
    Reservation,
    Secret,
    Skip,
    Task,
    utc_now,
)
from rlhfkit.feedback.views import (
    AnnotatorInfo,
    AnnotatorProgress,
    CampaignSettings,
    Progress,
    TaskDetails,
    TaskView,
    gold_in_output_ids,
    label_record,
    output_record,
)


class NotFoundError(RlhfkitError):
    """A campaign, annotator, prompt, output or task the store does not hold."""


class ConflictError(RlhfkitError):
    """A write that clashes with what is stored: a name taken, a task already labelled."""


class NotAllowedError(RlhfkitError):
    """A label or skip of a task the studio did not offer this annotator, or with no place left."""


_SHARED: ContextVar[tuple[Store, Session] | None] = ContextVar(
    "rlhfkit_store_transaction", default=None
)
"""The store and session of the ``Store.transaction()`` the current thread runs in, if any."""


def open_store(target: str | os.PathLike) -> Store:
    """Open the store at a path, directory or URL, creating or upgrading its tables."""
    engine, write_engine, shown_url = connect(target)
    try:
        upgrade(write_engine, shown_url)
    except BaseException:
        engine.dispose()
        raise
    return Store(engine, write_engine, shown_url)


class Store:
    """The feedback database. Build with ``open_store``; ``close()`` when done (or ``with``)."""

    def __init__(self, engine: Engine, write_engine: Engine, url: str):
        self._engine, self._write_engine, self.url = engine, write_engine, url
        self._reserve_engine = write_engine.execution_options(**{LAZY_SYNC: True})

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- setting up a campaign -------------------------------------------------------------------

    def create_campaign(
        self,
        name: str,
        *,
        task_kinds: Sequence[str] = ("pairwise",),
        overlap: float = 0.0,
        overlap_annotators: int = 2,
    ) -> int:
        settings = CampaignSettings(tuple(task_kinds), overlap, overlap_annotators)
        problems = settings.problems()
        if problems:
            raise ConfigError([f"campaign {name!r}: {problem}" for problem in problems])
        row = Campaign(name=_name("campaign name", name), settings=settings.as_json())
        return self._insert_named(row, f"campaign {name!r}")

    def campaign_settings(self, campaign: str) -> CampaignSettings:
        with self._read() as session:
            return CampaignSettings.from_json(self._campaign(session, campaign).settings)

    def add_annotator(self, name: str, password_hash: str, is_admin: bool = False) -> int:
        """A person who labels (an admin also manages campaigns). Hash the password first."""
        row = Annotator(
            name=_name("annotator name", name),
            is_admin=bool(is_admin),
            password_hash=check_text("password_hash", password_hash),
        )
        return self._insert_named(row, f"annotator {name!r}")

    def get_annotator(self, name: str) -> AnnotatorInfo | None:
        with self._read() as session:
            row = session.scalars(select(Annotator).where(Annotator.name == name)).one_or_none()
            if row is None:
                return None
            return AnnotatorInfo(
                row.id, row.name, row.password_hash, row.is_admin, row.session_epoch
            )

    def set_password(self, name: str, password_hash: str) -> int:
        """A new password for the account (hash it first); ends its sessions as
        ``end_sessions`` does and returns the new epoch."""
        with self._write() as session:
            row = self._annotator(session, name)
            row.password_hash = check_text("password_hash", password_hash)
            return self._next_epoch(session, row)

    def end_sessions(self, name: str) -> int:
        """Ends every session of the account, wherever it signed in: raises its session epoch,
        which the studio's cookies must match. Returns the new epoch."""
        with self._write() as session:
            return self._next_epoch(session, self._annotator(session, name))

    def _next_epoch(self, session: Session, row: Annotator) -> int:
        row.session_epoch = Annotator.session_epoch + 1  # in SQL: concurrent raises both count
        session.flush()
        session.refresh(row, ["session_epoch"])
        return row.session_epoch

    def add_prompt(self, campaign: str, text: str, meta: Mapping[str, Any] | None = None) -> int:
        prompt = Prompt(text=check_text("prompt text", text), meta=_json_object("meta", meta))
        with self._write() as session:
            prompt.campaign_id = self._campaign(session, campaign).id
            session.add(prompt)
            session.flush()
            return prompt.id

    def add_output(
        self,
        prompt_id: int,
        text: str,
        *,
        model: str,
        model_hash: str,
        generation: Mapping[str, Any] | None = None,
        seed: int | None = None,
    ) -> int:
        """A model's output for a prompt, with its provenance; ``text`` is kept byte for byte."""
        if seed is not None and type(seed) is not int:
            raise PayloadError(f"seed {seed!r} must be an integer or None (imported outputs)")
        output = Output(
            prompt_id=prompt_id,
            text=check_text("output text", text, blank_ok=True),
            model=check_text("model", model),
            model_hash=check_text("model_hash", model_hash),
            generation=_json_object("generation", generation),
            seed=seed,
        )
        with self._write() as session:
            _get(session, Prompt, prompt_id)
            session.add(output)
            session.flush()
            return output.id

    def add_task(
        self,
        campaign: str,
        kind: str,
        output_ids: Sequence[int],
        *,
        gold: Mapping[str, Any] | None = None,
        required: int | None = None,
    ) -> int:
        """A task showing ``output_ids`` (outputs of one prompt) in this order.

        ``gold``, a known answer in label form (``{"choice": "A"}``), makes it a gold task.
        ``required`` (annotators who should label it) defaults to the campaign's overlap:
        every ``1 / overlap``-th task, starting with the first, gets ``overlap_annotators``
        and the others 1 (``rlhfkit.feedback.assign``).
        """
        output_ids = list(output_ids)
        with self._write() as session:
            row = self._campaign(session, campaign)
            settings = CampaignSettings.from_json(row.settings)
            if kind not in settings.task_kinds:
                raise PayloadError(
                    f"task kind {kind!r} is not one campaign {campaign!r} "
                    f"holds: use {', '.join(settings.task_kinds)}"
                )
            problem = outputs_allowed(kind, len(output_ids))
            if problem or len(set(output_ids)) != len(output_ids):
                raise PayloadError(f"outputs {output_ids}: {problem or 'an output repeats'}")
            outputs = [_get(session, Output, output_id) for output_id in output_ids]
            prompt_ids = {output.prompt_id for output in outputs}
            prompt = _get(session, Prompt, prompt_ids.pop())
            if prompt_ids or prompt.campaign_id != row.id:
                raise PayloadError(
                    f"outputs {output_ids} must all answer one prompt of campaign {campaign!r}"
                )
            if required is None:
                count = session.scalar(
                    select(func.count(Task.id)).where(Task.campaign_id == row.id)
                )
                required = annotators_needed(count, settings.overlap, settings.overlap_annotators)
            elif type(required) is not int or required < 1:
                raise PayloadError(f"required {required!r}: give 1 or more annotators")
            gold_answer = None if gold is None else check_gold(kind, len(output_ids), gold)
            task = Task(
                campaign_id=row.id,
                prompt_id=prompt.id,
                kind=kind,
                output_ids=output_ids,
                required=required,
                is_gold=gold is not None,
                gold_answer=gold_answer and gold_answer.as_json(),
            )
            session.add(task)
            session.flush()
            return task.id

    # --- changing a campaign ---------------------------------------------------------------------

    def set_gold(self, campaign: str, answers: Mapping[int, Mapping[str, Any] | None]) -> None:
        """Give tasks a known answer, making them gold, or (answer None) make them plain again.

        Answers are in label form, positions as the task shows its outputs (``{"choice": "A"}``,
        ``{"ranking": [2, 0, 1]}``, ``{"rating": 6}``). All or nothing: one bad answer writes
        none. Labels a task already has are scored against its answer from now on
        (``gold_answers``), and a gold task is offered to every annotator who has not seen it.
        """
        with self._write() as session:
            row = self._campaign(session, campaign)
            for task_id, answer in answers.items():
                task = _get(session, Task, task_id)
                if task.campaign_id != row.id:
                    raise NotFoundError(
                        f"task {task_id} is not one of campaign {campaign!r}'s: "
                        "check the task number"
                    )
                try:
                    checked = (
                        None
                        if answer is None
                        else check_gold(task.kind, len(task.output_ids), answer)
                    )
                except PayloadError as error:
                    raise PayloadError(f"task {task_id}: {error}") from None
                task.is_gold = checked is not None
                task.gold_answer = None if checked is None else checked.as_json()

    def set_overlap(
        self, campaign: str, overlap: float, overlap_annotators: int | None = None
    ) -> tuple[int, int]:
        """Change the campaign's overlap ratio (and, if given, annotators per overlap item).

        The ``n`` tasks nobody has labelled yet are renumbered from 0 in id order under the new
        settings (``assign.renumber_unlabelled``): ``ceil(n * overlap)`` become overlap items.
        Tasks with a live label keep what they were given, as people judged them under it;
        tasks added later follow the new settings. Returns (``n``, overlap items among them).
        """
        with self._write() as session:
            row = self._campaign(session, campaign)
            old = CampaignSettings.from_json(row.settings)
            settings = CampaignSettings(
                old.task_kinds,
                overlap,
                old.overlap_annotators if overlap_annotators is None else overlap_annotators,
            )
            problems = settings.problems()
            if problems:
                raise ConfigError([f"campaign {campaign!r}: {problem}" for problem in problems])
            row.settings = settings.as_json()
            return renumber_unlabelled(
                session, row.id, settings.overlap, settings.overlap_annotators
            )

    # --- labelling -------------------------------------------------------------------------------

    def next_task(
        self, campaign: str, annotator: str, *, hold_s: float = HOLD_S
    ) -> TaskView | None:
        """The annotator's next task (``assign.next_task_query``), reserved for them for
        ``hold_s`` seconds, or None when none is left.

        The query runs first without the campaign's lock, beside other work; then, holding it
        (``assign.campaign_lock``), the task found is checked to still have a place for them
        and reserved, so what is reserved is true when written. Only if the place went
        meanwhile does the query run again, under the lock. Holding the lock for the check and
        not the query lets assignments of one campaign run side by side on PostgreSQL."""
        with self._read() as session:
            row = self._campaign(session, campaign)
            who = self._annotator(session, annotator)
            found = session.scalar(next_task_query(row.id, who.id, utc_now()))
        with self._write(lazy_sync=True) as session:
            campaign_lock(session, row.id, lazy_commit=True)
            now = utc_now()
            task_id = found
            if task_id is None or not has_a_place(session, task_id, who.id, now):
                task_id = session.scalar(next_task_query(row.id, who.id, now))
            reserve(session, row.id, who.id, task_id, now, hold_s)
            if task_id is None:
                return None
            kind, output_ids, prompt = session.execute(
                select(Task.kind, Task.output_ids, Prompt.text)
                .join(Prompt, Prompt.id == Task.prompt_id)
                .where(Task.id == task_id)
            ).one()
            return TaskView(task_id, row.name, kind, prompt, _outputs(session, output_ids))

    def submit_label(
        self,
        task_id: int,
        annotator: str,
        request_id: str,
        payload: Mapping[str, Any],
        *,
        campaign: str | None = None,
    ) -> tuple[int, bool]:
        """Store a label; return its id and whether this call created it.

        A second call with the same ``request_id`` (a retry, a double click), even one running
        at the same moment, returns the first label's id and False. A bad payload raises
        ``PayloadError`` and writes nothing; a second label by the same annotator on the same
        task raises ``ConflictError`` (undo the first).

        With ``campaign``, as the studio calls it, the label must be one the studio served: a
        task of that campaign (else ``NotFoundError``), the one ``next_task`` last offered the
        annotator there, not skipped, and with a place left: gold, or fewer live labels and
        other people's live reservations than it requires (else ``NotAllowedError``). An
        annotator may not label a task of the campaign they were not offered: the assignment,
        not the client, decides who labels what. Without ``campaign`` (scripts and tools that
        own the database) any task may be labelled.
        """
        request_id = check_request_id(request_id)
        try:
            with self._write() as session:
                who = self._annotator(session, annotator)
                if campaign is None:
                    task = _get(session, Task, task_id)
                else:
                    row = self._campaign(session, campaign)
                    campaign_lock(session, row.id)
                    repeat = _repeated(session, request_id, task_id, who.id)
                    if repeat is not None:
                        return repeat, False
                    task = _task_of(session, row, task_id)
                fields = check_label(task.kind, len(task.output_ids), payload)
                if campaign is not None:
                    _check_served(session, row, task, who, "label")
                label = Label(
                    task_id=task.id,
                    annotator_id=who.id,
                    request_id=request_id,
                    choice=fields.choice,
                    ranking=None if fields.ranking is None else list(fields.ranking),
                    rating=fields.rating,
                    thumbs=fields.thumbs,
                    critique=fields.critique,
                    correction=fields.correction,
                    flags=list(fields.flags),
                )
                session.add(label)
                session.flush()
                _release(session, task.id, who.id)
                return label.id, True
        except IntegrityError as error:
            clash = error  # the request id, or a live label on this task, is already stored
        with self._read() as session:
            who = self._annotator(session, annotator)
            repeat = _repeated(session, request_id, task_id, who.id)
            if repeat is not None:
                return repeat, False
            _check_not_labelled(session, task_id, who)
        raise clash

    def skip(self, task_id: int, annotator: str, *, campaign: str | None = None) -> None:
        """Never offer this task to this annotator again (skipping twice is harmless).

        With ``campaign`` (the studio) only the task last offered them there may be skipped,
        as ``submit_label`` says."""
        try:
            with self._write() as session:
                who = self._annotator(session, annotator)
                if campaign is None:
                    task = _get(session, Task, task_id)
                else:
                    row = self._campaign(session, campaign)
                    campaign_lock(session, row.id)
                    task = _task_of(session, row, task_id)
                    if _skipped(session, task.id, who.id):
                        return
                    _check_served(session, row, task, who, "skip")
                _release(session, task.id, who.id)
                session.add(Skip(task_id=task.id, annotator_id=who.id))
        except IntegrityError:
            with self._read() as session:
                who = self._annotator(session, annotator)
                if (
                    session.scalars(
                        select(Skip.id).where(Skip.task_id == task_id, Skip.annotator_id == who.id)
                    ).first()
                    is None
                ):
                    raise

    def undo_last(self, annotator: str, campaign: str) -> LabelRecord | None:
        """Mark the annotator's latest live label in the campaign undone and return it; its
        task is offered again. None when there is nothing to undo."""
        with self._write() as session:
            row = self._campaign(session, campaign)
            who = self._annotator(session, annotator)
            label = session.scalars(
                select(Label)
                .join(Task)
                .where(
                    Task.campaign_id == row.id,
                    Label.annotator_id == who.id,
                    Label.undone_at.is_(None),
                )
                .order_by(Label.id.desc())
                .limit(1)
                .with_for_update(of=Label)
            ).first()
            if label is None:
                return None
            label.undone_at = utc_now()
            task = session.get(Task, label.task_id)
            prompt = session.get(Prompt, task.prompt_id)
            outputs = {output.output_id: output for output in _outputs(session, task.output_ids)}
            return label_record(label, task, prompt.text, row.name, who.name, outputs)

    # --- reading results -------------------------------------------------------------------------

    def progress(self, campaign: str) -> Progress:
        with self._read() as session:
            row = self._campaign(session, campaign)
            tasks = session.execute(
                select(Task.id, Task.required).where(Task.campaign_id == row.id)
            ).all()
            labelled = session.execute(
                select(Label.task_id, Label.annotator_id)
                .join(Task)
                .where(Task.campaign_id == row.id, Label.undone_at.is_(None))
            ).all()
            skipped = session.execute(
                select(Skip.task_id, Skip.annotator_id).join(Task).where(Task.campaign_id == row.id)
            ).all()
            people = session.execute(
                select(Annotator.id, Annotator.name).order_by(Annotator.name)
            ).all()
        per_task = Counter(task_id for task_id, _ in labelled)
        done, passed = defaultdict(set), defaultdict(set)
        for task_id, annotator_id in labelled:
            done[annotator_id].add(task_id)
        for task_id, annotator_id in skipped:
            passed[annotator_id].add(task_id)
        annotators = tuple(
            AnnotatorProgress(
                name,
                len(done[annotator_id]),
                len(passed[annotator_id]),
                len(tasks) - len(done[annotator_id] | passed[annotator_id]),
            )
            for annotator_id, name in people
        )
        complete = sum(per_task[task_id] >= required for task_id, required in tasks)
        return Progress(row.name, len(tasks), complete, len(labelled), annotators)

    def refresh_statistics(self) -> None:
        """Let the database planner see freshly written rows (``ANALYZE``).

        Call after a bulk write (``label init``, ``next-round``): PostgreSQL otherwise plans
        ``next_task`` for empty tables until autovacuum analyses them, about a minute later, and
        a 500-task campaign answered in 278 ms instead of 7 ms (bench/README.md).
        """
        with self._write() as session:
            session.execute(sql("ANALYZE"))

    def campaign_outputs(self, campaign: str) -> list[tuple[int, str, list[OutputRecord]]]:
        """(prompt id, prompt text, its outputs oldest first) for each prompt of ``campaign``."""
        with self._read() as session:
            prompts = session.execute(
                select(Prompt.id, Prompt.text)
                .join(Campaign)
                .where(Campaign.name == campaign)
                .order_by(Prompt.id)
            ).all()
            outputs: dict[int, list[OutputRecord]] = {prompt_id: [] for prompt_id, _ in prompts}
            for row in session.scalars(
                select(Output).where(Output.prompt_id.in_(list(outputs))).order_by(Output.id)
            ):
                outputs[row.prompt_id].append(output_record(row))
        return [(prompt_id, text, outputs[prompt_id]) for prompt_id, text in prompts]

    def label_records(self, campaign: str) -> list[LabelRecord]:
        """Every live label of the campaign, oldest first, with its task's outputs as shown."""
        with self._read() as session:
            row = self._campaign(session, campaign)
            outputs = {
                output.id: output_record(output)
                for output in session.scalars(
                    select(Output).join(Prompt).where(Prompt.campaign_id == row.id)
                )
            }
            rows = session.execute(
                select(Label, Task, Prompt.text, Annotator.name)
                .join(Task, Label.task_id == Task.id)
                .join(Prompt, Task.prompt_id == Prompt.id)
                .join(Annotator, Label.annotator_id == Annotator.id)
                .where(Task.campaign_id == row.id, Label.undone_at.is_(None))
                .order_by(Label.id)
            ).all()
            return [
                label_record(label, task, prompt, row.name, name, outputs)
                for label, task, prompt, name in rows
            ]

    def task_details(self, campaign: str, task_id: int | None = None) -> TaskDetails:
        """A task of the campaign (None: its first) with what an admin may see: its gold
        answer, its labels."""
        with self._read() as session:
            row = self._campaign(session, campaign)
            if task_id is None:
                task_id = session.scalar(
                    select(func.min(Task.id)).where(Task.campaign_id == row.id)
                )
                if task_id is None:
                    raise NotFoundError(
                        f"campaign {campaign!r} has no tasks yet: make them with "
                        "`rlhfkit label init` or `label next-round`"
                    )
            task = _get(session, Task, task_id)
            if task.campaign_id != row.id:
                raise NotFoundError(
                    f"task {task_id} is not one of campaign {campaign!r}'s: check the task number"
                )
            return self._details(session, row.name, task)

    def gold_tasks(self, campaign: str) -> list[TaskDetails]:
        """The campaign's gold tasks, by id."""
        with self._read() as session:
            row = self._campaign(session, campaign)
            tasks = session.scalars(
                select(Task).where(Task.campaign_id == row.id, Task.is_gold).order_by(Task.id)
            ).all()
            return [self._details(session, row.name, task) for task in tasks]

    def gold_answers(self, campaign: str) -> dict[int, Any]:
        """Task id -> known answer, in output ids, the form ``agreement.gold_accuracy`` takes:
        a pairwise task's better output id (or "tie" / "both_bad"), a ranking's output ids best
        first, a rating's number (or thumbs' True / False when no number is given)."""
        with self._read() as session:
            row = self._campaign(session, campaign)
            tasks = session.scalars(
                select(Task).where(Task.campaign_id == row.id, Task.is_gold)
            ).all()
            return {task.id: gold_in_output_ids(task) for task in tasks}

    def secret(self, name: str) -> bytes:
        """The store's random 32-byte key called ``name``, made on first use and kept (the HMAC
        key of export pseudonyms, ``rlhfkit.feedback.privacy``)."""
        with self._read() as session:
            row = session.get(Secret, name)
        if row is None:
            try:
                with self._write() as session:
                    session.add(Secret(name=name, value=token_hex(32)))
            except IntegrityError:
                pass  # another process made it a moment ago: everyone must use that one
            with self._read() as session:
                row = session.get(Secret, name)
        return bytes.fromhex(row.value)

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """Make the store calls this thread makes inside one transaction: all are stored when
        the block ends, none if it raises (``label init`` writes a campaign whole)."""
        with self._write() as session:
            token = _SHARED.set((self, session))
            try:
                yield self
            finally:
                _SHARED.reset(token)

    # --- helpers ---------------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Session]:
        shared = _SHARED.get()
        if shared is not None and shared[0] is self:
            yield shared[1]
            return
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _write(self, lazy_sync: bool = False) -> Iterator[Session]:
        """A write transaction; ``lazy_sync`` for one that writes only reservations, which a
        power cut may lose without harm (``engine.LAZY_SYNC``)."""
        shared = _SHARED.get()
        if shared is not None and shared[0] is self:
            yield shared[1]
            return
        engine = self._reserve_engine if lazy_sync else self._write_engine
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session

    def _details(self, session: Session, campaign: str, task: Task) -> TaskDetails:
        prompt = session.get(Prompt, task.prompt_id)
        labels = session.scalar(
            select(func.count(Label.id)).where(Label.task_id == task.id, Label.undone_at.is_(None))
        )
        view = TaskView(
            task.id, campaign, task.kind, prompt.text, _outputs(session, task.output_ids)
        )
        siblings = select(Task.id).where(Task.campaign_id == task.campaign_id)
        previous = session.scalar(
            siblings.where(Task.id < task.id).order_by(Task.id.desc()).limit(1)
        )
        following = session.scalar(siblings.where(Task.id > task.id).order_by(Task.id).limit(1))
        return TaskDetails(
            view,
            task.required,
            labels,
            task.gold_answer if task.is_gold else None,
            previous,
            following,
        )

    def _insert_named(self, row: Campaign | Annotator, what: str) -> int:
        try:
            with self._write() as session:
                session.add(row)
                session.flush()
                return row.id
        except IntegrityError:
            raise ConflictError(f"{what} already exists in {self.url}: pick another name") from None

    def _campaign(self, session: Session, name: str) -> Campaign:
        return self._named(session, Campaign, name, "campaign")

    def _annotator(self, session: Session, name: str) -> Annotator:
        return self._named(session, Annotator, name, "annotator")

    def _named(self, session: Session, model: type, name: str, what: str) -> Any:
        row = session.scalars(select(model).where(model.name == name)).one_or_none()
        if row is None:
            known = session.scalars(select(model.name).order_by(model.name).limit(20)).all()
            raise NotFoundError(
                f"no {what} {name!r} in {self.url}; known: {', '.join(known) or 'none yet'}"
            )
        return row


def _get(session: Session, model: type, row_id: int) -> Any:
    # ids are signed 64-bit in both databases: a larger int would overflow the driver (a 500)
    row = session.get(model, row_id) if type(row_id) is int and 0 < row_id <= ID_MAX else None
    if row is None:
        raise NotFoundError(f"no {model.__tablename__[:-1]} with id {row_id!r}")
    return row


def _check_served(
    session: Session, campaign: Campaign, task: Task, who: Annotator, action: str
) -> None:
    """Raise ``ConflictError`` or ``NotAllowedError``, naming why, unless ``who`` may
    ``action`` ("label" or "skip") the campaign's ``task`` now (``Store.submit_label``).
    Passing on a task needs no place on it."""
    _check_not_labelled(session, task.id, who)
    if _skipped(session, task.id, who.id):
        raise NotAllowedError(
            f"task {task.id}: {who.name!r} skipped it, so it is not theirs "
            "to label; take the task the studio offers next"
        )
    held = session.get(Reservation, (campaign.id, who.id))
    if held is None or held.task_id != task.id:
        raise NotAllowedError(
            f"task {task.id} was not offered to {who.name!r}: {action} the "
            "task the studio offers (GET /api/next or the label page)"
        )
    if (
        action == "label"
        and not task.is_gold
        and (places_taken(session, task, who.id, utc_now()) >= task.required)
    ):
        raise NotAllowedError(
            f"task {task.id} already has the {task.required} label(s) it "
            "needs (your hold on it had expired): take the next task"
        )


def _task_of(session: Session, campaign: Campaign, task_id: Any) -> Task:
    """Task ``task_id`` of ``campaign``; one of another campaign is "not found" too."""
    task = _get(session, Task, task_id) if type(task_id) is int and task_id > 0 else None
    if task is None or task.campaign_id != campaign.id:
        raise NotFoundError(
            f"task_id {task_id!r}: campaign {campaign.name!r} has no such task; "
            "label the task the studio offers you"
        )
    return task


def _repeated(session: Session, request_id: str, task_id: Any, annotator_id: int) -> int | None:
    """The id of the label this request already stored for this task and annotator (a retry),
    None if the request id is new; ``ConflictError`` if another submission used it."""
    stored = session.execute(
        select(Label.id, Label.task_id, Label.annotator_id).where(Label.request_id == request_id)
    ).first()
    if stored is None:
        return None
    if (stored.task_id, stored.annotator_id) != (task_id, annotator_id):
        # whose label and which task it was is not the sender's business
        raise ConflictError(
            f"request_id {request_id!r} is already used: send a new request_id with each submission"
        )
    return stored.id


def _check_not_labelled(session: Session, task_id: Any, who: Annotator) -> None:
    live = (
        session.scalars(
            select(Label.id).where(
                Label.task_id == task_id, Label.annotator_id == who.id, Label.undone_at.is_(None)
            )
        ).first()
        if type(task_id) is int
        else None
    )
    if live is not None:
        raise ConflictError(
            f"{who.name!r} has already labelled task {task_id} (label "
            f"{live}): undo that label to label the task again"
        )


def _release(session: Session, task_id: int, annotator_id: int) -> None:
    """Drop the annotator's hold on a task they answered or passed: the next ``next_task``
    reserves anew, and meanwhile the place is not counted twice (label and hold)."""
    session.execute(
        delete(Reservation).where(
            Reservation.task_id == task_id, Reservation.annotator_id == annotator_id
        )
    )


def _skipped(session: Session, task_id: int, annotator_id: int) -> bool:
    return (
        session.scalars(
            select(Skip.id).where(Skip.task_id == task_id, Skip.annotator_id == annotator_id)
        ).first()
        is not None
    )


def _name(field: str, name: Any) -> str:
    if not (isinstance(name, str) and 0 < len(name) <= NAME_MAX and name == name.strip()):
        raise PayloadError(
            f"{field} {name!r}: give 1 to {NAME_MAX} characters, without leading or trailing spaces"
        )
    return name


def _json_object(field: str, value: Mapping[str, Any] | None) -> dict[str, Any]:
    """``value`` as a JSON object to store, checked now rather than at commit."""
    value = {} if value is None else value
    try:
        if not isinstance(value, Mapping):
            raise TypeError(f"a {type(value).__name__}, not a mapping")
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise PayloadError(f"{field} must be a JSON object: {error}") from None


def _outputs(session: Session, output_ids: Sequence[int]) -> tuple[OutputRecord, ...]:
    """The outputs with these ids, in this order."""
    rows = {row.id: row for row in session.scalars(select(Output).where(Output.id.in_(output_ids)))}
    return tuple(output_record(rows[output_id]) for output_id in output_ids)
