"""The feedback store's tables, as SQLAlchemy 2 ORM models (one class per table).

    campaigns ──< prompts ──< outputs                 (a ──< b: one a, many b)
        │                        ▲ tasks.output_ids, in display order
        └───────< tasks ─────────┘
                    ├──< labels >── annotators
                    ├──< skips  >── annotators
                    └──< reservations >── annotators   (the task each was last offered)
    schema_version: one row, the version of these tables (``rlhfkit.feedback.migrations``)
    secrets: keys the store makes for itself (the HMAC key of export pseudonyms)

Outputs keep everything needed to reproduce them (model path, weights hash, generation
settings, seed, time), so a label can always be traced to the model version it judged. A task
lists its output ids in the order they are shown; ``choice`` and ``ranking`` refer to that
order. Two constraints carry the store's promises, whatever the web app does:

- ``labels.request_id`` is unique: a retried or double-clicked submission is stored once;
- one live (not undone) label per annotator and task, a partial unique index (SQLite and
  PostgreSQL both have them): two tabs cannot label the same task twice.
- one reservation per annotator and campaign (its primary key): the task the studio offered
  them last, which counts against the task's ``required`` until it expires
  (``rlhfkit.feedback.assign``).

Times are stored as naive UTC (``UtcDateTime``): SQLite has no time zones, and one convention
on both databases gives the same ISO 8601 strings back from either.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from rlhfkit.feedback.records import CHOICES, KINDS, RATING_SCALE

NAME_MAX = 200


def utc_now() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime in Python, a naive UTC timestamp in the database."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: give a time zone (the store keeps UTC)")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class Base(DeclarativeBase):
    type_annotation_map = {
        datetime: UtcDateTime,
        dict[str, Any]: JSON,
        list[int]: JSON,
        list[str]: JSON,
    }


class SchemaVersion(Base):
    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), unique=True)
    settings: Mapped[dict[str, Any]]
    """``CampaignSettings`` as JSON: task kinds, overlap ratio, annotators per overlap item."""
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class Annotator(Base):
    __tablename__ = "annotators"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    is_admin: Mapped[bool] = mapped_column(default=False)
    session_epoch: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    """Raised to end the account's sessions (signing out, a new password): the studio's
    cookies carry the epoch they were made in and are refused once it has moved on."""
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class Prompt(Base):
    __tablename__ = "prompts"

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Output(Base):
    __tablename__ = "outputs"

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    """Exactly as generated: never stripped or normalised."""
    model: Mapped[str] = mapped_column(Text)
    model_hash: Mapped[str] = mapped_column(String(NAME_MAX))
    generation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(_one_of("kind", KINDS), name="ck_tasks_kind"),
        CheckConstraint("required >= 1", name="ck_tasks_required"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"))
    kind: Mapped[str] = mapped_column(String(16))
    output_ids: Mapped[list[int]]
    """The outputs shown, in display order: position 0 is "A"."""
    is_gold: Mapped[bool] = mapped_column(default=False)
    gold_answer: Mapped[dict[str, Any] | None]
    """For a gold task, the known answer as label fields (``{"choice": "A"}``)."""
    required: Mapped[int]
    """How many annotators should label it: 1, or more for an overlap item."""
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class Label(Base):
    __tablename__ = "labels"
    __table_args__ = (
        Index(
            "uq_labels_live",
            "task_id",
            "annotator_id",
            unique=True,
            sqlite_where=text("undone_at IS NULL"),
            postgresql_where=text("undone_at IS NULL"),
        ),
        CheckConstraint(f"choice IS NULL OR {_one_of('choice', CHOICES)}", name="ck_labels_choice"),
        CheckConstraint(
            f"rating IS NULL OR rating BETWEEN {RATING_SCALE[0]} AND {RATING_SCALE[1]}",
            name="ck_labels_rating",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    request_id: Mapped[str] = mapped_column(String(100), unique=True)
    """The client's id for the submission: a retry with the same id finds this row."""
    choice: Mapped[str | None] = mapped_column(String(8))
    ranking: Mapped[list[int] | None]
    rating: Mapped[float | None]
    thumbs: Mapped[bool | None]
    critique: Mapped[str | None] = mapped_column(Text)
    correction: Mapped[str | None] = mapped_column(Text)
    flags: Mapped[list[str]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    undone_at: Mapped[datetime | None]
    """Set by undo: the label stays (an audit trail) but no longer counts."""


class Skip(Base):
    __tablename__ = "skips"
    __table_args__ = (UniqueConstraint("task_id", "annotator_id", name="uq_skips_task_annotator"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)


class Reservation(Base):
    """The task an annotator was last offered in a campaign, held for them until ``expires_at``:
    while it is held, nobody else is offered it beyond the task's ``required``."""

    __tablename__ = "reservations"

    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id"), primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    expires_at: Mapped[datetime]


class Secret(Base):
    """A random key the store made for itself, by name: ``pseudonym_key`` keys the HMAC that
    pseudonymous exports name annotators by (``rlhfkit.feedback.privacy``). Kept in the database
    so that the CLI and every web worker use one key without a file to share or lose."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    """Hex."""
