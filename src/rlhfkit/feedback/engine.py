"""From a database URL to a SQLAlchemy engine: SQLite by default, PostgreSQL by URL.

    runs/my-campaign            a directory: its feedback.db
    runs/my-campaign/votes.db   a path, or sqlite:///runs/my-campaign/votes.db
    postgresql://USER:PASSWORD@HOST:5432/DB   (psycopg 3; postgres:// also accepted)

SQLite is set up on every connection: write-ahead logging (readers never wait for the writer,
and a crash mid-write loses nothing that was committed), foreign keys enforced (SQLite leaves
them off by default) and a busy timeout, so concurrent writers queue instead of failing.

Writes on SQLite begin with ``BEGIN IMMEDIATE`` (the ``write`` engine): a transaction that
read first and then tries to write could otherwise fail at once with "database is locked",
since SQLite cannot wait for a lock a reader would need to upgrade. Taking the write lock up
front makes writers queue on the busy timeout; reads begin plainly and run beside them.

A write that may be lost in a power cut without harm (``LAZY_SYNC``: a task reservation, which
only holds a task for a while) commits on SQLite without waiting for the disk: ``synchronous =
NORMAL`` for that transaction (in WAL mode still safe against a crash of the process; the next
ordinary commit syncs it too). It saves an fsync, about 4 ms on the benchmark machine, on every
task handed out. (On PostgreSQL ``assign.campaign_lock`` turns ``synchronous_commit`` off.)
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from rlhfkit.errors import ConfigError, RlhfkitError

DEFAULT_DB_NAME = "feedback.db"
BUSY_TIMEOUT_S = 30
CONNECT_TIMEOUT_S = 10
URL_FORMS = "a file path, sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DB"
_WRITE = "rlhfkit_write"  # execution option: this transaction will write
LAZY_SYNC = "rlhfkit_lazy_sync"  # execution option: its commit need not wait for the disk


def resolve_url(target: str | os.PathLike) -> URL:
    """The SQLAlchemy URL for a path, a directory (its ``feedback.db``) or a database URL."""
    given = os.fspath(target)
    if "://" not in given:
        path = Path(given).expanduser()
        if path.is_dir():
            path = path / DEFAULT_DB_NAME
        return URL.create("sqlite", database=str(path))
    try:
        url = make_url(given)
    except ArgumentError as error:
        raise ConfigError(f"feedback database {given!r}: {error}; give {URL_FORMS}") from None
    if url.drivername in ("postgres", "postgresql", "postgresql+psycopg"):
        return url.set(drivername="postgresql+psycopg")
    if url.drivername == "sqlite" and url.database not in (None, "", ":memory:"):
        return url
    raise ConfigError(
        f"feedback database {display(url)!r} is not supported: give {URL_FORMS} "
        "(an in-memory SQLite database would vanish with each connection)"
    )


def display(url: URL) -> str:
    """The URL as it may be shown or logged: the password masked."""
    return url.render_as_string(hide_password=True)


def connect(target: str | os.PathLike) -> tuple[Engine, Engine, str]:
    """Engines for reading and for writing (same pool), and the URL to show in messages.

    Connects once up front, so an unreachable database fails here, with the URL named.
    """
    url = resolve_url(target)
    if url.get_backend_name() == "sqlite":
        try:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RlhfkitError(
                f"cannot create the folder of the feedback database "
                f"{display(url)}: {error}; give another path"
            ) from None
        _create_private(Path(url.database), url)
        engine = _sqlite_engine(url)
    else:
        engine = create_engine(
            url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
        )
    try:
        engine.connect().close()
    except DBAPIError as error:
        engine.dispose()
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        if url.password:
            reason = reason.replace(str(url.password), "***")
        fix = (
            "give the path of an SQLite database file you may write"
            if url.get_backend_name() == "sqlite"
            else "check that the server is running and the URL is right"
        )
        raise RlhfkitError(
            f"cannot connect to the feedback database {display(url)}: {reason}; {fix}"
        ) from None
    return engine, engine.execution_options(**{_WRITE: True}), display(url)


def _create_private(path: Path, url: URL) -> None:
    """Create the SQLite file readable and writable by its owner only: it holds password
    hashes and every label. SQLite gives the -wal and -shm files beside it the same mode. A
    file that exists keeps the mode its owner gave it."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass  # an existing database keeps the mode its owner chose; nothing to create
    except OSError as error:
        raise RlhfkitError(
            f"cannot create the feedback database {display(url)}: {error}; "
            "give the path of a file you may write"
        ) from None


def _sqlite_engine(url: URL) -> Engine:
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _set_up(dbapi_connection, _record) -> None:
        # pysqlite would BEGIN on its own before some statements and not others; with this
        # off, the "begin" hook below starts every transaction, so DDL is transactional too.
        dbapi_connection.isolation_level = None
        for pragma in (
            f"busy_timeout = {BUSY_TIMEOUT_S * 1000}",
            "journal_mode = WAL",
            "foreign_keys = ON",
        ):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        options = connection.get_execution_options()
        # the level can only change outside a transaction, so each sets its own, when it differs
        level = "NORMAL" if options.get(LAZY_SYNC, False) else "FULL"
        if connection.info.get("synchronous") != level:
            connection.exec_driver_sql(f"PRAGMA synchronous = {level}")
            connection.info["synchronous"] = level
        connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE, False) else "BEGIN")

    return engine
