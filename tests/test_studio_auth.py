"""Signing in to the feedback studio under attack: revocable sessions, the login limits, a
bound on password checks, and the files and options that keep secrets out of reach.

The app runs in process (FastAPI's TestClient) over a real SQLite store; ``label serve`` runs
with ``uvicorn.run`` replaced, and the app it would serve is wrapped the way uvicorn would
wrap it (``uvicorn.Config.load``), proxy-header middleware included.
"""

from __future__ import annotations

import io
import os
import re
import stat
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from argon2.exceptions import VerificationError
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from rlhfkit.cli import main
from rlhfkit.feedback import migrations
from rlhfkit.feedback.engine import resolve_url
from rlhfkit.feedback.store import open_store
from rlhfkit.feedback.web import auth, create_app
from rlhfkit.feedback.web.auth import LoginLimiter, hash_password, verify_password

SECRET = "test-secret-key-0123456789"
PASSWORDS = {"ada": "ada-password", "bob": "bob-password"}
HASHES = {name: hash_password(password) for name, password in PASSWORDS.items()}  # once: slow


class _QuickHasher:
    """Stands in for argon2 where the limits, not the hashing, are tested: knows this file's
    passwords by their hashes."""

    passwords = {HASHES[name]: password for name, password in PASSWORDS.items()}

    def hash(self, password: str) -> str:
        return f"quick:{password}"

    def verify(self, password_hash: str, password: str) -> bool:
        if password_hash not in (
            f"quick:{password}",
            *[h for h, known in self.passwords.items() if known == password],
        ):
            raise VerificationError()
        return True


@pytest.fixture
def quick_hashing(monkeypatch):
    monkeypatch.setattr(auth, "_hasher", _QuickHasher())


@pytest.fixture
def store(tmp_path):
    with open_store(tmp_path / "feedback.db") as opened:
        opened.add_annotator("ada", HASHES["ada"], is_admin=True)
        opened.add_annotator("bob", HASHES["bob"])
        opened.create_campaign("c")
        yield opened


def _client(app_or_store, address: str = "testclient") -> TestClient:
    app = (
        app_or_store
        if not hasattr(app_or_store, "get_annotator")
        else create_app(app_or_store, secret_key=SECRET, campaign="c")
    )
    return TestClient(app, follow_redirects=False, client=(address, 50000))


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _login(client: TestClient, name: str = "bob", password: str | None = None, **headers):
    token = _csrf(client.get("/login").text)
    return client.post(
        "/login",
        headers=headers,
        data={"csrf_token": token, "name": name, "password": password or PASSWORDS[name]},
    )


def _signed_in(client: TestClient, name: str = "bob") -> TestClient:
    assert _login(client, name).status_code == 303
    return client


def _with_cookies_of(client: TestClient) -> TestClient:
    """Another client carrying a copy of ``client``'s session cookie (a stolen one)."""
    return TestClient(client.app, cookies=dict(client.cookies), follow_redirects=False)


def _is_signed_in(client: TestClient) -> bool:
    response = client.get("/api/next")
    assert response.status_code in (200, 401), response.text
    return response.status_code == 200


def _post_form(client: TestClient, path: str, **fields):
    token = _csrf(client.get("/admin").text)
    return client.post(path, data={"csrf_token": token, **fields})


# --- 2. sessions end when they should ------------------------------------------------------------


def test_logout_ends_the_session_for_a_copied_cookie(store):
    bob = _signed_in(_client(store))
    stolen = _with_cookies_of(bob)
    assert _is_signed_in(stolen)
    token = _csrf(bob.get("/label").text)
    assert bob.post("/logout", data={"csrf_token": token}).headers["location"] == "/login"
    assert not _is_signed_in(stolen)
    assert stolen.get("/label").headers["location"] == "/login"
    assert _is_signed_in(_signed_in(bob))  # signing in again works, with a fresh cookie


def test_a_new_password_from_the_admin_form_ends_that_accounts_sessions(store):
    app = create_app(store, secret_key=SECRET, campaign="c")
    bob, admin = _signed_in(_client(app)), _signed_in(_client(app), "ada")
    changed = _post_form(admin, "/admin/password", name="bob", password="new bob password")
    assert changed.status_code == 303
    assert "new password for &#39;bob&#39;" in admin.get("/admin").text
    assert not _is_signed_in(bob)
    assert _login(_client(app)).status_code == 401  # the old password no longer works
    assert _login(_client(app), "bob", "new bob password").status_code == 303

    admin_elsewhere = _with_cookies_of(admin)
    own = _post_form(admin, "/admin/password", name="ada", password="new ada password")
    assert own.status_code == 303
    assert _is_signed_in(admin) and not _is_signed_in(admin_elsewhere)

    short = _post_form(admin, "/admin/password", name="bob", password="x")
    assert short.status_code == 422 and "password: is shorter than 8 characters" in short.text
    nobody = _post_form(admin, "/admin/password", name="eve", password="long enough")
    assert nobody.status_code == 404 and "no annotator &#39;eve&#39;" in nobody.text


def test_a_new_password_from_the_command_line_ends_sessions(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with open_store("campaigns/c/feedback.db") as store:
        store.create_campaign("c")
        store.add_annotator("bob", HASHES["bob"])
        bob = _signed_in(_client(store))
        assert (
            main(
                [
                    "label",
                    "annotator",
                    "--campaign",
                    "c",
                    "--name",
                    "bob",
                    "--reset_password",
                    "--password",
                    "new bob password",
                ]
            )
            == 0
        )
        assert "their sessions have ended" in capsys.readouterr().out
        assert not _is_signed_in(bob)
        assert verify_password(store.get_annotator("bob").password_hash, "new bob password")

    def error(*args: str) -> str:
        assert main(["label", "annotator", "--campaign", "c", *args]) == 2
        return capsys.readouterr().err

    assert "no such account" in error(
        "--name", "eve", "--reset_password", "--password", "long enough"
    )
    assert "add --reset_password" in error("--name", "bob", "--password", "long enough")
    assert "password = '***': is shorter than 8 characters" in error(
        "--name", "cy", "--password", "x"
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield str(tmp_path / "feedback.db")
        return
    from postgres import PostgresMissing, fresh_database, throwaway_postgres

    try:
        with throwaway_postgres() as server, fresh_database(server) as url:
            yield url
    except PostgresMissing as missing:
        if os.environ.get("RLHFKIT_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"RLHFKIT_REQUIRE_POSTGRES=1 but {missing}")
        pytest.skip(str(missing))


def test_a_database_from_before_session_epochs_upgrades_with_its_accounts(db_url, monkeypatch):
    with open_store(db_url) as store:
        store.add_annotator("bob", HASHES["bob"])
    # Back to the version before the column, as an older rlhfkit left it; the upgrade runs the
    # migration that adds it (later ones' tables are there already: they are left out).
    before = 1 + migrations.MIGRATIONS.index(migrations._add_session_epoch)
    engine = create_engine(resolve_url(db_url))
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE annotators DROP COLUMN session_epoch"))
        connection.execute(
            text("UPDATE schema_version SET version = :version"), {"version": before}
        )
    engine.dispose()
    monkeypatch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:before])
    with open_store(db_url) as store:
        bob = store.get_annotator("bob")
        assert (bob.password_hash, bob.session_epoch) == (HASHES["bob"], 0)
        assert store.end_sessions("bob") == 1
        assert store.set_password("bob", HASHES["ada"]) == 2
        assert store.get_annotator("bob").session_epoch == 2


# --- 3. the login limits -------------------------------------------------------------------------


def _serve(monkeypatch, tmp_path, *options: str) -> tuple[object, dict]:
    """Runs ``label serve`` with ``uvicorn.run`` caught; the app uvicorn would serve (wrapped as
    uvicorn wraps it) and the options it was given."""
    import uvicorn

    tmp_path.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(tmp_path)
    with open_store("campaigns/c/feedback.db") as store:
        if store.get_annotator("bob") is None:
            store.create_campaign("c")
            store.add_annotator("bob", HASHES["bob"])
    served = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: served.append((app, options)))
    assert main(["label", "serve", "--campaign", "c", *options]) == 0
    app, options = served[-1]
    config = uvicorn.Config(app, log_config=None, **options)
    config.load()
    return config.loaded_app, options


def test_x_forwarded_for_cannot_dodge_the_limit_unless_a_proxy_is_trusted(
    monkeypatch, tmp_path, quick_hashing
):
    app, options = _serve(monkeypatch, tmp_path)
    attacker = _client(app, "127.0.0.1")  # on the machine, where uvicorn's default trusts it
    statuses = [
        _login(attacker, "bob", "guess", **{"X-Forwarded-For": f"10.0.0.{i}"}).status_code
        for i in range(6)
    ]
    assert statuses == [401] * 5 + [429]
    assert options["proxy_headers"] is False

    app, options = _serve(monkeypatch, tmp_path, "--trusted_proxies", "127.0.0.1")
    assert options["forwarded_allow_ips"] == ["127.0.0.1"]
    proxy = _client(app, "127.0.0.1")
    for _ in range(5):
        _login(proxy, "bob", "guess", **{"X-Forwarded-For": "10.0.0.1"})
    assert _login(proxy, "bob", **{"X-Forwarded-For": "10.0.0.1"}).status_code == 429
    assert _login(proxy, "bob", **{"X-Forwarded-For": "10.0.0.2"}).status_code == 303


def test_guesses_from_many_addresses_are_limited_per_name_without_locking_out_others(
    store, quick_hashing
):
    app = create_app(store, secret_key=SECRET, campaign="c")
    addresses = [f"10.0.1.{i}" for i in range(25)]  # more than the name's limit
    for address in addresses:
        assert _login(_client(app, address), "bob", "guess").status_code == 401
    again = _login(_client(app, addresses[0]), "bob", "guess")
    assert again.status_code == 429 and "too many failed attempts" in again.text
    assert _login(_client(app, addresses[0]), "bob").status_code == 429
    assert _login(_client(app, "10.0.2.1"), "bob").status_code == 303  # never failed: let in
    assert _login(_client(app, addresses[0]), "ada").status_code == 303  # another name


def test_the_limiter_counts_per_name_across_addresses_and_per_pair():
    now = [0.0]
    limiter = LoginLimiter(max_failures=3, name_max_failures=4, window_s=60, clock=lambda: now[0])
    for second, address in enumerate(["a", "b", "c", "d"]):
        now[0] = float(second)
        assert limiter.retry_after("bob", address) == 0
        limiter.failed("bob", address)
    assert limiter.retry_after("bob", "a") == 57  # until "a"'s failure ages out at 60
    assert limiter.retry_after("bob", "e") == 0  # an address with no failures may still try
    assert limiter.retry_after("ada", "a") == 0
    limiter.failed("ada", "a")
    limiter.failed("ada", "a")
    limiter.failed("ada", "a")
    assert limiter.retry_after("ada", "a") == 60 and limiter.retry_after("ada", "b") == 0
    now[0] = 30.0
    assert limiter.retry_after("bob", "b") == 30  # when the name's oldest failure ages out
    now[0] = 60.5
    assert limiter.retry_after("bob", "b") == 0 and limiter.retry_after("bob", "a") == 0


def test_refused_sign_ins_are_not_hashed(store, monkeypatch):
    client = _client(store)
    for _ in range(5):
        _login(client, "bob", "guess")
    hasher = _BlockingHasher()
    hasher.release.set()
    monkeypatch.setattr(auth, "_hasher", hasher)
    assert [_login(client, "bob", "guess").status_code for _ in range(3)] == [429] * 3
    assert hasher.calls == 0


# --- 4. a flood of sign-ins ----------------------------------------------------------------------


class _BlockingHasher:
    """Stands in for argon2: each check waits until ``release`` is set, counting how many run
    at once (each of which would hold 64 MiB)."""

    def __init__(self):
        self.release, self.lock = threading.Event(), threading.Lock()
        self.running = self.peak = self.calls = 0

    def verify(self, password_hash: str, password: str) -> bool:
        with self.lock:
            self.running += 1
            self.calls += 1
            self.peak = max(self.peak, self.running)
        self.release.wait(timeout=60)
        with self.lock:
            self.running -= 1
        raise VerificationError()


def test_a_flood_of_sign_ins_runs_few_password_checks_and_the_labelling_goes_on(store, monkeypatch):
    app = create_app(store, secret_key=SECRET, campaign="c")
    annotator = _signed_in(_client(app), "bob")
    hasher = _BlockingHasher()
    monkeypatch.setattr(auth, "_hasher", hasher)
    slots, queue, flood = auth.PASSWORD_CHECK_SLOTS, auth.PASSWORD_CHECK_QUEUE, 24
    statuses: list[int] = []
    busy_pages: list[str] = []

    def attempt(i: int) -> None:
        name = "bob" if i % 4 == 0 else f"nobody-{uuid.uuid4().hex[:8]}"
        response = _login(_client(app, f"10.9.0.{i}"), name, "guess")
        if response.status_code == 503:
            busy_pages.append(response.text)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=attempt, args=(i,), daemon=True) for i in range(flood)]
    for thread in threads:
        thread.start()
    try:
        # Wait (by events, not by time) until the slots are full and the attempts beyond the
        # queue have been turned away, or until more checks run than there are slots.
        deadline = time.monotonic() + 60
        while (
            time.monotonic() < deadline
            and hasher.running <= slots
            and (hasher.running < slots or len(statuses) < flood - slots - queue)
        ):
            time.sleep(0.01)
        assert hasher.running == slots  # the rest wait on the event loop or were turned away
        assert statuses.count(503) >= flood - slots - queue
        assert "the server is busy checking other sign-ins: try again" in busy_pages[0]
        assert _is_signed_in(annotator)  # the labelling still answers
    finally:
        hasher.release.set()
        for thread in threads:
            thread.join(timeout=60)
    assert hasher.peak == slots
    assert sorted(set(statuses)) <= [401, 503] and len(statuses) == flood
    assert statuses.count(401) == hasher.calls  # each answered 401 was checked, once
    assert _login(_client(app), "bob", "guess").status_code == 401  # the slots are free again


# --- 8. passwords, cookies and files -------------------------------------------------------------


def test_the_admin_form_refuses_a_short_password(store):
    admin = _signed_in(_client(store), "ada")
    short = _post_form(admin, "/admin/annotators", name="cy", password="x")
    assert short.status_code == 422
    assert "password: is shorter than 8 characters; choose a longer one" in short.text
    assert store.get_annotator("cy") is None
    assert _post_form(admin, "/admin/annotators", name="cy", password="12345678").status_code == 303


def test_secure_cookie_marks_the_session_cookie_secure(store, monkeypatch, tmp_path):
    plain = _login(_client(store)).headers["set-cookie"].lower()
    assert "secure" not in plain
    app, _ = _serve(monkeypatch, tmp_path, "--secure_cookie")
    https = TestClient(app, base_url="https://testserver", follow_redirects=False)
    cookie = _login(https).headers["set-cookie"].lower()
    assert "; secure" in cookie and "httponly" in cookie


def test_serve_passes_access_log_and_no_proxy_trust_to_uvicorn(monkeypatch, tmp_path, capsys):
    _, options = _serve(monkeypatch, tmp_path)
    assert options == {
        "host": "127.0.0.1",
        "port": 8000,
        "proxy_headers": False,
        "access_log": True,
    }  # today's default: requests are logged
    _, options = _serve(monkeypatch, tmp_path, "--access_log", "false")
    assert options["access_log"] is False
    capsys.readouterr()
    assert main(["label", "serve", "--campaign", "c", "--trusted_proxies", "10.0.0.0/8,proxy"]) == 2
    assert (
        "trusted_proxies = '10.0.0.0/8,proxy': 'proxy' is not an IP address"
        in capsys.readouterr().err
    )
    assert main(["label", "serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--trusted_proxies", "--secure_cookie", "--access_log"))


def test_a_new_sqlite_database_is_readable_by_its_owner_only(tmp_path):
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "new" / "feedback.db"
        with open_store(path) as store:
            store.add_annotator("bob", HASHES["bob"])
            written = [path, *[Path(f"{path}{end}") for end in ("-wal", "-shm")]]
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in written if p.exists()}
        assert modes[path.name] == 0o600 and set(modes.values()) == {0o600}, modes
        kept = tmp_path / "kept.db"
        open_store(kept).close()
        kept.chmod(0o640)  # the owner's choice, e.g. a group of admins
        open_store(kept).close()
        assert stat.S_IMODE(kept.stat().st_mode) == 0o640
    finally:
        os.umask(old_umask)


def test_the_admin_password_goes_to_a_private_file_unless_output_is_a_terminal(
    monkeypatch, tmp_path, capsys
):
    _serve(monkeypatch, tmp_path)
    out = capsys.readouterr().out
    path = Path(out.split("with the password in ")[1].split()[0])
    assert path == Path("campaigns/c/admin-password.txt")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = path.read_text().strip()
    assert password not in out
    with open_store("campaigns/c/feedback.db") as store:
        assert verify_password(store.get_annotator("admin").password_hash, password)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    _serve(monkeypatch, tmp_path / "elsewhere")  # a new database: a new admin
    shown = terminal.getvalue().split("admin login: admin / ")[1].split()[0]
    assert not Path(tmp_path / "elsewhere/campaigns/c/admin-password.txt").exists()
    with open_store(tmp_path / "elsewhere/campaigns/c/feedback.db") as store:
        assert verify_password(store.get_annotator("admin").password_hash, shown)
