"""Versions of the store's tables, and the ordered upgrades between them (no Alembic needed).

A new database gets today's tables (``schema.py``) in one transaction, stamped with today's
version. A database from an older rlhfkit is brought up by running, in order, the migrations
after its version: ``MIGRATIONS[i]`` takes version ``i + 1`` to ``i + 2``, each in its own
transaction together with the version bump, so a migration that fails leaves the database at
the version before it, unchanged (SQLite and PostgreSQL both roll back DDL). A database newer
than this code is refused: its rows may mean what this code does not know.

To change a table: change its model in ``schema.py``, append a function here that makes the
same change to an existing database (``connection.execute(...)`` with SQL or SQLAlchemy Core;
write the DDL out, never call the models, which will have moved on by the next version), and
test that a database at the previous version upgrades, its rows intact.

Two processes opening one database at once (web workers) take turns: on SQLite the write
transaction's ``BEGIN IMMEDIATE``, on PostgreSQL a transaction-scoped advisory lock. The one
that comes second finds the work done.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, insert, inspect, select, text, update

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.schema import Base, SchemaVersion

Migration = Callable[[Connection], None]


def _add_secrets(connection: Connection) -> None:
    """``secrets`` (``schema.Secret``): keys the store makes for itself."""
    connection.execute(
        text(
            "CREATE TABLE secrets (name VARCHAR(100) NOT NULL, "
            "value TEXT NOT NULL, PRIMARY KEY (name))"
        )
    )


def _add_session_epoch(connection: Connection) -> None:
    """``annotators.session_epoch``: signing out and a new password end an account's
    sessions."""
    connection.execute(
        text("ALTER TABLE annotators ADD COLUMN session_epoch INTEGER NOT NULL DEFAULT 0")
    )


def _add_reservations(connection: Connection) -> None:
    """``reservations`` (``schema.Reservation``): the task each annotator was last offered in a
    campaign, held for them so that two people are not offered its last place."""
    connection.execute(
        text(
            "CREATE TABLE reservations (campaign_id INTEGER NOT NULL, "
            "annotator_id INTEGER NOT NULL, task_id INTEGER NOT NULL, "
            "expires_at TIMESTAMP NOT NULL, "  # naive UTC, as schema.UtcDateTime keeps times
            "PRIMARY KEY (campaign_id, annotator_id), "
            "FOREIGN KEY (campaign_id) REFERENCES campaigns (id), "
            "FOREIGN KEY (annotator_id) REFERENCES annotators (id), "
            "FOREIGN KEY (task_id) REFERENCES tasks (id))"
        )
    )
    connection.execute(text("CREATE INDEX ix_reservations_task_id ON reservations (task_id)"))


MIGRATIONS: list[Migration] = [_add_secrets, _add_session_epoch, _add_reservations]
"""Upgrades in order: ``MIGRATIONS[i]`` brings version ``i + 1`` to ``i + 2``."""
_LOCK_KEY = 0x726C6866_6B697431  # "rlhfkit1": PostgreSQL advisory lock held while upgrading


def latest_version() -> int:
    """The version this code reads and writes."""
    return 1 + len(MIGRATIONS)


def upgrade(write_engine: Engine, shown_url: str) -> int:
    """Create or upgrade the tables behind ``write_engine`` to ``latest_version()``; return it."""
    latest = latest_version()
    while True:
        with write_engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
            version = _version(connection, shown_url)
            if version > latest:
                raise RlhfkitError(
                    f"feedback database {shown_url} has schema version {version}, newer than "
                    f"this rlhfkit knows ({latest}): upgrade rlhfkit to open it"
                )
            if version == latest:
                return version
            if version == 0:
                Base.metadata.create_all(connection)
                connection.execute(insert(SchemaVersion).values(version=latest))
                return latest
            MIGRATIONS[version - 1](connection)
            connection.execute(update(SchemaVersion).values(version=version + 1))


def _version(connection: Connection, shown_url: str) -> int:
    """The database's schema version; 0 for a database without the store's tables."""
    tables = set(inspect(connection).get_table_names())
    if SchemaVersion.__tablename__ not in tables:
        ours = sorted(tables & set(Base.metadata.tables))
        if ours:
            raise RlhfkitError(
                f"feedback database {shown_url} has tables {', '.join(ours)} but "
                "no schema_version: it is not an rlhfkit feedback store; give "
                "another database"
            )
        return 0
    versions = connection.execute(select(SchemaVersion.version)).scalars().all()
    if len(versions) != 1:
        raise RlhfkitError(
            f"feedback database {shown_url}: schema_version holds {len(versions)} "
            "rows, not 1; restore it from a backup"
        )
    return versions[0]
