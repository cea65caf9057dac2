"""Who may use the studio: password hashes, CSRF tokens, and limits on signing in.

Passwords are stored as argon2id hashes (RFC 9106; the argon2-cffi defaults), never in
clear, and are at least ``MIN_PASSWORD`` characters (``password_problem``: one rule for the
command line and the admin page). A session is a cookie signed with the app's secret key
(starlette's ``SessionMiddleware``): it names the annotator, carries the account's session
epoch, and holds a CSRF token, a random value that every form posts back as a hidden field
(or a script sends as ``X-CSRF-Token``). Another site can make a browser send the cookie but
cannot read the token, so a forged POST fails the check. A signed cookie cannot be taken back,
so signing out and a new password raise the account's epoch instead (``Store.end_sessions``),
and the app refuses cookies stamped with an older one.

Signing in is bounded three ways, each before any hashing:

- ``LoginLimiter`` counts wrong passwords per (name, address) and per name, and refuses
  further guesses (429) until old failures age out of the window;
- ``PasswordChecks`` lets ``PASSWORD_CHECK_SLOTS`` checks run at once (each is argon2 with
  64 MiB and 4 lanes) and turns any beyond a short queue away (503), so a flood of sign-ins
  cannot take the memory and cores the people labelling need;
- a name that does not exist costs the same as one that does: it is checked, under the same
  bounds, against a dummy hash, so neither timing nor refusals tell which names exist.
"""

from __future__ import annotations

import hmac
import math
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_PASSWORD = 8
MAX_FAILURES = 5
"""Wrong passwords one address may give for one name in ``WINDOW_S``."""
NAME_MAX_FAILURES = 20
"""Wrong passwords for one name from all addresses together in ``WINDOW_S``; past it, only
addresses that have not failed on the name may still try it."""
WINDOW_S = 300.0
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
PASSWORD_CHECK_SLOTS = max(1, min(4, _CORES // 4))
"""Password checks at once: each keeps 4 cores busy (argon2's 4 lanes run as 4 threads) and
holds 64 MiB, so one per 4 cores, 1 to 4 (at most 256 MiB), whatever comes in."""
PASSWORD_CHECK_QUEUE = 8
PASSWORD_CHECK_WAIT_S = 3.0
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

_hasher = PasswordHasher()  # argon2id, time_cost 3, 64 MiB, parallelism 4
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
"""Checked against when the name is unknown, so that a wrong name takes as long as a wrong
password and the timing does not tell which names exist."""
_PRUNE_AT = 10_000
T = TypeVar("T")


def password_problem(password: str) -> str | None:
    """What is wrong with ``password`` as a new password (None: nothing), as the end of a
    message that starts by naming the field."""
    if len(password) < MIN_PASSWORD:
        return f"is shorter than {MIN_PASSWORD} characters; choose a longer one"
    return None


def hash_password(password: str) -> str:
    """An argon2id hash of the password, salted, in the PHC string format the store keeps."""
    if not isinstance(password, str) or not password:
        raise ValueError("password is empty: give one of at least one character")
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; None (no such account) never does, at
    the cost of a real check."""
    try:
        matched = _hasher.verify(password_hash or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False
    return matched and password_hash is not None


# --- CSRF ----------------------------------------------------------------------------------------


def csrf_token(session: MutableMapping[str, Any]) -> str:
    """The session's CSRF token, made on first use."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return session[CSRF_FIELD]


def csrf_ok(session: MutableMapping[str, Any], given: str | None) -> bool:
    """Whether ``given`` is the session's token (compared in constant time)."""
    expected = session.get(CSRF_FIELD)
    return bool(
        expected
        and isinstance(given, str)
        and hmac.compare_digest(expected.encode(), given.encode())
    )


# --- login attempts ------------------------------------------------------------------------------


class LoginLimiter:
    """Counts wrong passwords over a sliding window, per (name, client address) and per name.

    A (name, address) that gave ``max_failures`` wrong passwords is refused, so one client
    guesses a few passwords per name per window and someone else's typos on a shared address
    lock out only that name. Once a name has ``name_max_failures`` from all addresses
    together, every address that failed on it is refused too, so guessing from many addresses
    gets one try per address; an address that has not failed on the name may still try it,
    so guesses from elsewhere never lock its owner out. Thread-safe: sync routes run in a
    thread pool.
    """

    def __init__(
        self,
        max_failures: int = MAX_FAILURES,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        name_max_failures: int = NAME_MAX_FAILURES,
    ):
        self.max_failures, self.window_s, self._clock = max_failures, window_s, clock
        self.name_max_failures = name_max_failures
        # Each deque keeps only as many times as its limit needs: memory per key is bounded.
        self._pairs: dict[tuple[str, str], deque[float]] = {}
        self._names: dict[str, deque[float]] = {}
        self._prune_at = _PRUNE_AT
        self._lock = threading.Lock()

    def retry_after(self, name: str, address: str) -> int:
        """Seconds until this pair may try again; 0 when it may now."""
        with self._lock:
            now = self._clock()
            pair = self._recent(self._pairs, (name, address), now)
            waits = []
            if len(pair) >= self.max_failures:
                waits.append(self._until_under(pair, self.max_failures, now))
            everyone = self._recent(self._names, name, now)
            if pair and len(everyone) >= self.name_max_failures:
                # free again once the name cools down or this address's failures age out
                waits.append(
                    min(
                        self._until_under(everyone, self.name_max_failures, now),
                        pair[-1] + self.window_s - now,
                    )
                )
            return max(1, math.ceil(max(waits))) if waits else 0

    def failed(self, name: str, address: str) -> None:
        with self._lock:
            now = self._clock()
            if len(self._pairs) + len(self._names) > self._prune_at:
                self._prune(now)
            self._pairs.setdefault((name, address), deque(maxlen=self.max_failures)).append(now)
            self._names.setdefault(name, deque(maxlen=self.name_max_failures)).append(now)

    def succeeded(self, name: str, address: str) -> None:
        with self._lock:
            self._pairs.pop((name, address), None)

    def _recent(self, table: dict, key: Any, now: float) -> deque[float]:
        """The key's failures inside the window (expired ones dropped); empty if none."""
        times = table.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def _until_under(self, times: deque[float], limit: int, now: float) -> float:
        """Seconds until fewer than ``limit`` of ``times`` are inside the window."""
        return times[len(times) - limit] + self.window_s - now

    def _prune(self, now: float) -> None:
        """Drops keys whose failures all aged out, so guessing many names cannot grow the
        tables without bound; the next prune waits until they have doubled (amortised O(1))."""
        cutoff = now - self.window_s
        for table in (self._pairs, self._names):
            for key in [key for key, times in table.items() if not times or times[-1] <= cutoff]:
                del table[key]
        self._prune_at = max(_PRUNE_AT, 2 * (len(self._pairs) + len(self._names)))


class Busy(Exception):
    """Every password-check slot is taken and the queue for them is full (or its wait ran
    out): the sign-in was turned away without being checked."""


class PasswordChecks:
    """Runs password checks, at most ``slots`` at once.

    A check that finds no free slot waits for one, up to ``wait_s``, if fewer than ``queue``
    are already waiting; otherwise, or when the wait runs out, ``run`` raises ``Busy`` at
    once. Waiting happens on the event loop, not in a worker thread, so a flood of sign-ins
    neither queues without end nor takes the thread pool the labelling routes run in.
    """

    def __init__(
        self,
        slots: int = PASSWORD_CHECK_SLOTS,
        queue: int = PASSWORD_CHECK_QUEUE,
        wait_s: float = PASSWORD_CHECK_WAIT_S,
        poll_s: float = 0.02,
    ):
        self.slots, self.queue, self.wait_s, self.poll_s = slots, queue, wait_s, poll_s
        # A thread semaphore, polled: the slots are shared by every event loop in the process
        # (a test client runs one per request), which asyncio's primitives are not.
        self._free = threading.BoundedSemaphore(slots)
        self._waiting = 0
        self._lock = threading.Lock()

    async def run(self, check: Callable[[], T]) -> T:
        """``check()`` in a worker thread once a slot is free; raises ``Busy`` if none frees
        up in time or the queue is full."""
        if not self._free.acquire(blocking=False):
            await self._wait_for_slot()
        try:
            # not abandoned on cancel: the slot is freed only when the hashing has stopped
            return await anyio.to_thread.run_sync(check)
        finally:
            self._free.release()

    async def _wait_for_slot(self) -> None:
        with self._lock:
            if self._waiting >= self.queue:
                raise Busy()
            self._waiting += 1
        try:
            deadline = time.monotonic() + self.wait_s
            while not self._free.acquire(blocking=False):
                if time.monotonic() >= deadline:
                    raise Busy()
                await anyio.sleep(self.poll_s)
        finally:
            with self._lock:
                self._waiting -= 1
