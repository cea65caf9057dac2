"""Who may use the studio: password hashes, CSRF tokens and a limit on login attempts.

Passwords are stored as argon2id hashes (RFC 9106; the argon2-cffi defaults), never in
clear. A session is a cookie signed with the app's secret key (starlette's
``SessionMiddleware``): it names the annotator and holds a CSRF token, a random value that
every form posts back as a hidden field (or a script sends as ``X-CSRF-Token``). Another site
can make a browser send the cookie but cannot read the token, so a forged POST fails the check.

Guessing passwords is slowed twice: argon2 makes each guess cost tens of milliseconds, and
``LoginLimiter`` refuses a (name, client address) after ``MAX_FAILURES`` wrong passwords in
``WINDOW_S`` seconds until the oldest of them ages out.
"""

from __future__ import annotations

import hmac
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MAX_FAILURES = 5
WINDOW_S = 300.0
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

_hasher = PasswordHasher()  # argon2id, time_cost 3, 64 MiB, parallelism 4
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
"""Checked against when the name is unknown, so that a wrong name takes as long as a wrong
password and the timing does not tell which names exist."""


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
    return bool(expected and isinstance(given, str)
                and hmac.compare_digest(expected.encode(), given.encode()))


# --- login attempts ------------------------------------------------------------------------------


class LoginLimiter:
    """Counts wrong passwords per (name, client address) over a sliding window.

    Keyed on both, so one client guessing many names is limited per name and a person behind a
    shared address is not locked out by someone else's typos. Thread-safe: sync routes run in
    a thread pool.
    """

    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic):
        self.max_failures, self.window_s, self._clock = max_failures, window_s, clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, name: str, address: str) -> int:
        """Seconds until this pair may try again; 0 when it may now."""
        with self._lock:
            recent = self._recent((name, address))
            if len(recent) < self.max_failures:
                return 0
            return max(1, math.ceil(recent[0] + self.window_s - self._clock()))

    def failed(self, name: str, address: str) -> None:
        with self._lock:
            self._recent((name, address)).append(self._clock())

    def succeeded(self, name: str, address: str) -> None:
        with self._lock:
            self._failures.pop((name, address), None)

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        """The key's failures inside the window; drops expired ones (and, now and then, keys
        with none left, so guessing many names cannot grow the table without bound)."""
        now = self._clock()
        if len(self._failures) > 10_000:
            self._failures = {k: times for k, times in self._failures.items()
                              if times and times[-1] > now - self.window_s}
        recent = self._failures.setdefault(key, deque())
        while recent and recent[0] <= now - self.window_s:
            recent.popleft()
        return recent
