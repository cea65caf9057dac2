"""Load on the feedback studio: many annotators labelling at once, no label lost or doubled.

For each backend (SQLite, then PostgreSQL on a throwaway cluster) the bench fills a pairwise
campaign, starts ``rlhfkit label serve`` in a child process (uvicorn, one worker, loopback),
signs in ``--annotators`` simulated annotators and has each loop ``GET /api/next`` +
``POST /api/label`` for ``--seconds``. A random ``--retry-share`` of accepted submissions is
sent again with the same request_id, as a client retrying after a lost answer would; each retry
must be answered 200 with ``created: false`` and the same label id.

With ``--kill-at S`` the server is killed (SIGKILL, no shutdown) S seconds into the labelling
and started again on the same database and port; clients resend what failed, a label with its
same request_id, until it answers again.

At the end the database is read back: every label answered 201 must be stored (else lost),
nothing else may be (else duplicated), and no task may hold more live labels than it requires
(two annotators offered one place). The exit code is 1 when anything was lost or duplicated, a
task is over its count, a retry created a label, or the server answered 5xx.

    python bench/label_load.py --quick
    python bench/label_load.py                 # 50 annotators, 60 s per backend
    python bench/label_load.py --kill-at 30    # ... with the server killed and restarted at 30 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from common import print_table

# the throwaway PostgreSQL cluster of the store's tests (tests/postgres.py)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

CAMPAIGN = "load"
PASSWORD = "load-test-password"
LOGINS_AT_ONCE = 4  # argon2 takes 64 MiB and tens of ms per check: sign in a few at a time
RESEND_FOR_S = 120.0  # how long a client keeps resending a label while the server is away
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Tally:
    """What the clients saw, pooled over all annotators."""

    label_ms: list[float] = field(default_factory=list)  # first submissions only
    next_ms: list[float] = field(default_factory=list)
    accepted: dict[int, tuple[int, str]] = field(default_factory=dict)  # label id -> (task, who)
    statuses: Counter = field(default_factory=Counter)  # every response, "GET /api/next 200"
    retries: int = 0
    retries_ok: int = 0  # 200, created false, same label id
    retry_created: int = 0  # a retry that made a new label: a duplicate
    transport_errors: int = 0
    ran_out: int = 0  # annotators left with no task before the end
    seconds: float = 0.0
    down_s: float = 0.0  # from the kill until the restarted server answered


def populate(url: str, tasks: int, annotators: int) -> float:
    """A pairwise campaign of ``tasks`` prompts (two outputs each) and the annotator accounts;
    returns the seconds it took."""
    from rlhfkit.feedback.store import open_store
    from rlhfkit.feedback.web.auth import hash_password

    started = time.perf_counter()
    with open_store(url) as store:
        store.create_campaign(CAMPAIGN, task_kinds=("pairwise",))
        for i in range(tasks):
            prompt = store.add_prompt(CAMPAIGN, f"prompt {i}: say something kind")
            outputs = [
                store.add_output(
                    prompt, f"answer {i}{side}", model="bench", model_hash="sha256:bench", seed=i
                )
                for side in "ab"
            ]
            store.add_task(CAMPAIGN, "pairwise", outputs)
        password_hash = hash_password(PASSWORD)  # one argon2 hash, shared by every account
        for n in range(annotators):
            store.add_annotator(f"annotator-{n:03d}", password_hash)
    return time.perf_counter() - started


class StudioServer:
    """``rlhfkit label serve`` in a child process (one uvicorn worker) on a loopback port; it
    can be killed and started again on the same database and port."""

    def __init__(self, url: str, scratch: Path):
        from postgres import free_port

        self.url, self.scratch, self.port = url, scratch, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = self.scratch / f"server-{self.starts}.log"
        command = [
            sys.executable,
            "-m",
            "rlhfkit",
            "label",
            "serve",
            "--campaign",
            CAMPAIGN,
            "--db",
            self.url,
            "--port",
            str(self.port),
        ]
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                command, cwd=self.scratch, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the studio did not start:\n{log.read_text()[-4000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.base}/login", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)

    def kill_and_restart(self) -> float:
        """SIGKILL (no shutdown: requests in flight die with it), then start again; returns
        the seconds until it answered."""
        started = time.perf_counter()
        self.process.kill()
        self.process.wait()
        self.start()
        return time.perf_counter() - started

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def studio_server(url: str, scratch: Path):
    """A started ``StudioServer``, stopped on exit."""
    server = StudioServer(url, scratch)
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def sign_in(client: httpx.AsyncClient, name: str, gate: asyncio.Semaphore) -> None:
    async with gate:
        page = await client.get("/login")
        token = CSRF_INPUT.search(page.text)
        if token is None:
            raise SystemExit(f"no CSRF token on the login page ({page.status_code})")
        answer = await client.post(
            "/login", data={"name": name, "password": PASSWORD, "csrf_token": token.group(1)}
        )
        if answer.status_code != 303:
            raise SystemExit(f"{name} could not sign in: {answer.status_code} {answer.text[:200]}")


async def post_label(
    client: httpx.AsyncClient, submission: dict, headers: dict, tally: Tally
) -> httpx.Response:
    """POST /api/label, sent again unchanged (same request_id) while the connection fails, for
    up to ``RESEND_FOR_S`` (a killed server takes seconds to come back): the label may have
    been stored without the answer arriving, and only a resend can tell."""
    give_up = time.perf_counter() + RESEND_FOR_S
    while True:
        try:
            return await client.post("/api/label", json=submission, headers=headers)
        except httpx.TransportError:
            tally.transport_errors += 1
            if time.perf_counter() > give_up:
                raise  # counted by the caller
            await asyncio.sleep(0.25)


async def annotate(
    client: httpx.AsyncClient,
    name: str,
    tally: Tally,
    deadline: float,
    retry_share: float,
    rng: random.Random,
) -> None:
    """Label until ``deadline``: next task, a random choice, now and then the same POST again."""
    while time.perf_counter() < deadline:
        try:
            started = time.perf_counter()
            offered = await client.get("/api/next")
            tally.next_ms.append((time.perf_counter() - started) * 1000)
            tally.statuses[f"GET /api/next {offered.status_code}"] += 1
            if offered.status_code != 200:
                continue
            body = offered.json()
            if body["task"] is None:
                tally.ran_out += 1
                return
            task_id = body["task"]["task_id"]
            submission = {
                "task_id": task_id,
                "request_id": body["request_id"],
                "label": {"choice": rng.choice("AB")},
            }
            headers = {"X-CSRF-Token": body["csrf_token"]}
            started = time.perf_counter()
            answer = await post_label(client, submission, headers, tally)
            tally.label_ms.append((time.perf_counter() - started) * 1000)
            tally.statuses[f"POST /api/label {answer.status_code}"] += 1
            if answer.status_code not in (200, 201):  # 200: stored by a resend's first try
                continue
            label_id = answer.json()["label_id"]
            tally.accepted[label_id] = (task_id, name)
            if rng.random() < retry_share:
                again = await post_label(client, submission, headers, tally)
                tally.retries += 1
                tally.statuses[f"POST /api/label (retry) {again.status_code}"] += 1
                result = again.json() if again.status_code < 300 else {}
                if again.status_code == 201:
                    tally.retry_created += 1
                elif again.status_code == 200 and result == {
                    "label_id": label_id,
                    "created": False,
                }:
                    tally.retries_ok += 1
        except httpx.TransportError:
            tally.transport_errors += 1
            await asyncio.sleep(0.25)  # the server may be restarting: do not spin


async def kill_later(server: StudioServer, after_s: float, tally: Tally) -> None:
    await asyncio.sleep(after_s)
    print(f"killing the server (SIGKILL) at {after_s:g} s and starting it again", flush=True)
    tally.down_s = await asyncio.to_thread(server.kill_and_restart)
    print(f"the server answered again {tally.down_s:.1f} s after the kill", flush=True)


async def load(
    server: StudioServer,
    annotators: int,
    seconds: float,
    retry_share: float,
    seed: int,
    kill_at: float | None = None,
) -> Tally:
    tally = Tally()
    gate = asyncio.Semaphore(LOGINS_AT_ONCE)
    limits = httpx.Limits(max_connections=1)  # one browser tab per annotator
    clients = [
        httpx.AsyncClient(base_url=server.base, timeout=60, limits=limits)
        for _ in range(annotators)
    ]
    try:
        await asyncio.gather(
            *(sign_in(client, f"annotator-{n:03d}", gate) for n, client in enumerate(clients))
        )
        started = time.perf_counter()
        deadline = started + seconds
        work = [
            annotate(
                client,
                f"annotator-{n:03d}",
                tally,
                deadline,
                retry_share,
                random.Random(seed * 1000 + n),
            )
            for n, client in enumerate(clients)
        ]
        if kill_at is not None:
            work.append(kill_later(server, kill_at, tally))
        await asyncio.gather(*work)
        tally.seconds = time.perf_counter() - started
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    return tally


def check(url: str, tally: Tally) -> dict:
    """Compare the database's live labels with the accepted submissions (label id, task, who),
    and count tasks holding more live labels than they require."""
    from sqlalchemy import text

    from rlhfkit.feedback.engine import connect
    from rlhfkit.feedback.store import open_store

    with open_store(url) as store:
        stored = {
            record.label_id: (record.task_id, record.annotator)
            for record in store.label_records(CAMPAIGN)
        }
    engine = connect(url)[0]
    try:
        with engine.connect() as connection:
            over = connection.execute(
                text(
                    "SELECT COUNT(*) FROM (SELECT tasks.id FROM tasks JOIN labels ON "
                    "labels.task_id = tasks.id AND labels.undone_at IS NULL "
                    "GROUP BY tasks.id, tasks.required "
                    "HAVING COUNT(labels.id) > tasks.required) AS over_count"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    accepted = tally.accepted
    lost = sum(1 for label_id in accepted if label_id not in stored)
    extra = sum(1 for label_id in stored if label_id not in accepted)
    moved = sum(
        1
        for label_id, owner in accepted.items()
        if label_id in stored and stored[label_id] != owner
    )
    return {
        "stored": len(stored),
        "lost": lost + moved,
        "duplicated": extra + tally.retry_created,
        "over_required": over,
    }


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")


def run_backend(backend: str, args: argparse.Namespace, scratch: Path) -> dict:
    from postgres import fresh_database, throwaway_postgres

    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = str(scratch / "feedback.db")
        else:
            url = stack.enter_context(
                fresh_database(stack.enter_context(throwaway_postgres()), prefix="load")
            )
        fill_s = populate(url, args.tasks, args.annotators)
        print(
            f"{backend}: {args.tasks} tasks and {args.annotators} annotators stored in "
            f"{fill_s:.1f} s; serving",
            flush=True,
        )
        with studio_server(url, scratch) as server:
            tally = asyncio.run(
                load(
                    server, args.annotators, args.seconds, args.retry_share, args.seed, args.kill_at
                )
            )
        verdict = check(url, tally)
    server_errors = sum(
        n for status, n in tally.statuses.items() if status.rsplit(" ", 1)[1].startswith("5")
    )
    other = {
        status: n for status, n in tally.statuses.items() if not status.endswith((" 200", " 201"))
    }
    print(f"{backend}: statuses {dict(sorted(tally.statuses.items()))}", flush=True)
    return {
        "backend": backend,
        "submissions": len(tally.label_ms),
        "accepted": len(tally.accepted),
        "stored": verdict["stored"],
        "retries": tally.retries,
        "retries_ok": tally.retries_ok,
        "lost": verdict["lost"],
        "duplicated": verdict["duplicated"],
        "over_required": verdict["over_required"],
        "down_s": tally.down_s,
        "server_errors": server_errors,
        "other_statuses": other,
        "transport_errors": tally.transport_errors,
        "ran_out": tally.ran_out,
        "p50": percentile(tally.label_ms, 50),
        "p95": percentile(tally.label_ms, 95),
        "p99": percentile(tally.label_ms, 99),
        "next_p50": percentile(tally.next_ms, 50),
        "next_p95": percentile(tally.next_ms, 95),
        "labels_per_s": len(tally.accepted) / tally.seconds,
        "seconds": tally.seconds,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="labelling time per backend")
    parser.add_argument("--annotators", type=int, default=50, help="simulated annotators")
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql"
    )
    parser.add_argument(
        "--tasks",
        type=int,
        default=5000,
        help="pairwise tasks in the campaign (enough that nobody runs out)",
    )
    parser.add_argument(
        "--retry-share",
        type=float,
        default=0.1,
        help="share of accepted submissions sent again with the same request_id",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--kill-at",
        type=float,
        default=None,
        metavar="SECONDS",
        help="kill -9 the server this many seconds into the labelling and "
        "start it again on the same database and port",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke check: 5 s, 10 annotators, 500 tasks"
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.annotators, args.tasks = 5.0, 10, 500
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in ("sqlite", "postgresql")]
    if unknown or not backends:
        parser.error(f"--backends {args.backends!r}: choose from sqlite, postgresql")
    if args.seconds <= 0 or args.annotators < 1 or args.tasks < 1:
        parser.error("--seconds, --annotators and --tasks must be positive")
    if args.kill_at is not None and not 0 < args.kill_at < args.seconds:
        parser.error(
            f"--kill-at {args.kill_at:g}: give a time inside the labelling, "
            f"0 < SECONDS < --seconds ({args.seconds:g})"
        )
    if not 0 <= args.retry_share <= 1:
        parser.error(f"--retry-share {args.retry_share}: give a share between 0 and 1")
    args.backends = backends
    return args


def main() -> int:
    args = parse_args()
    print(
        f"{args.annotators} annotators x {args.seconds:g} s per backend, {args.tasks} tasks, "
        f"{args.retry_share:.0%} of accepted submissions retried; server: rlhfkit label serve, "
        "uvicorn, one worker, loopback"
        + (f"; killed and restarted at {args.kill_at:g} s" if args.kill_at else ""),
        flush=True,
    )
    results = []
    for backend in args.backends:
        with tempfile.TemporaryDirectory(prefix="rlhfkit-load-") as scratch:
            results.append(run_backend(backend, args, Path(scratch)))
    headers = [
        "backend",
        "submissions",
        "accepted",
        "stored",
        "retries (200 ok)",
        "lost",
        "duplicated",
        "over required",
        "5xx",
        "label p50/p95/p99 ms",
        "next p50/p95 ms",
        "labels/s",
    ]
    print_table(
        headers,
        [
            [
                r["backend"],
                r["submissions"],
                r["accepted"],
                r["stored"],
                f"{r['retries']} ({r['retries_ok']})",
                r["lost"],
                r["duplicated"],
                r["over_required"],
                r["server_errors"],
                f"{r['p50']:.0f} / {r['p95']:.0f} / {r['p99']:.0f}",
                f"{r['next_p50']:.0f} / {r['next_p95']:.0f}",
                f"{r['labels_per_s']:.1f}",
            ]
            for r in results
        ],
    )
    failed = False
    for r in results:
        if r["other_statuses"] or r["transport_errors"] or r["ran_out"]:
            print(
                f"{r['backend']}: other answers {r['other_statuses']}, transport errors "
                f"{r['transport_errors']}, annotators out of tasks {r['ran_out']}"
            )
        if r["down_s"]:
            print(f"{r['backend']}: the killed server answered again after {r['down_s']:.1f} s")
        if (
            r["lost"]
            or r["duplicated"]
            or r["over_required"]
            or r["server_errors"]
            or r["retries_ok"] != r["retries"]
        ):
            print(
                f"{r['backend']}: FAILED: {r['lost']} lost, {r['duplicated']} duplicated, "
                f"{r['over_required']} tasks over their required label count, "
                f"{r['server_errors']} 5xx, {r['retries'] - r['retries_ok']} retries not "
                "answered 200 created false",
                file=sys.stderr,
            )
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
