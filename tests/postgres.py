"""A throwaway PostgreSQL cluster, for the store's tests and the studio's load benchmark
(``bench/label_load.py`` puts this folder on its path).

``initdb`` into a temporary directory, ``pg_ctl start`` on a free loopback port with its socket in
that directory, ``pg_ctl stop`` and the directory removed at the end. The server binaries come
from PATH or Debian's /usr/lib/postgresql/<version>/bin (``apt-get install -y postgresql``).
PostgreSQL refuses to run as root, so as root the cluster runs as ``nobody`` (``runuser``).
Durability is switched off (``fsync``, ``full_page_writes``): a throwaway cluster need not
survive a crash.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class PostgresMissing(Exception):
    """PostgreSQL's server binaries are not installed."""


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def server_binaries() -> tuple[str, str]:
    """Paths of ``initdb`` and ``pg_ctl``: on PATH, else the newest Debian install."""
    search = os.pathsep.join(
        [os.environ.get("PATH", ""), *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    )
    initdb, pg_ctl = shutil.which("initdb", path=search), shutil.which("pg_ctl", path=search)
    if not (initdb and pg_ctl):
        raise PostgresMissing(
            "PostgreSQL's initdb and pg_ctl are not on PATH nor in "
            "/usr/lib/postgresql/*/bin: install Debian's postgresql package"
        )
    return initdb, pg_ctl


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """``postgresql://rlhfkit@127.0.0.1:PORT`` of a fresh cluster (trust auth), stopped and
    deleted on exit."""
    initdb, pg_ctl = server_binaries()
    root = Path(tempfile.mkdtemp(prefix="rlhfkit-pg-"))  # in /tmp: `nobody` can reach it
    as_server_user = []
    if os.geteuid() == 0:
        shutil.chown(root, user="nobody")
        as_server_user = ["runuser", "-u", "nobody", "--"]
    data, log, port = root / "data", root / "server.log", free_port()
    try:
        _run(
            [
                *as_server_user,
                initdb,
                "-D",
                data,
                "-U",
                "rlhfkit",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        _run([*as_server_user, pg_ctl, "-D", data, "-l", log, "-w", "-o", options, "start"], log)
        try:
            yield f"postgresql://rlhfkit@127.0.0.1:{port}"
        finally:
            _run([*as_server_user, pg_ctl, "-D", data, "-m", "fast", "-w", "stop"], log)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def fresh_database(server: str, prefix: str = "test") -> Iterator[str]:
    """The URL of a new, empty database on ``server``, dropped on exit."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _run(command: list, log: Path | None = None) -> None:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True)
    if done.returncode != 0:
        server_log = log.read_text() if log and log.exists() else ""
        raise RuntimeError(
            f"{' '.join(map(str, command))} failed ({done.returncode}):\n"
            f"{done.stdout}{done.stderr}{server_log}"
        )
