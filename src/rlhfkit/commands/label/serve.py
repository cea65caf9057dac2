"""``label serve`` and ``label annotator``: the web app, and the people who sign in to it."""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from rlhfkit.commands.label.options import CampaignOptions, open_campaign, state_dir
from rlhfkit.config import Bounds, Problem
from rlhfkit.errors import ConfigError

KEY_FILE = "web-secret.key"
ADMIN_PASSWORD_FILE = "admin-password.txt"
ADMIN = "admin"
STUDIO_INSTALL = "pip install 'rlhfkit[studio]'"


@dataclass(frozen=True)
class ServeConfig(CampaignOptions):
    """Run the labelling web app for a campaign."""

    host: str = "127.0.0.1"
    """Address to listen on; only this machine can connect unless you open it up."""
    port: Annotated[int, Bounds(ge=1, le=65535)] = 8000
    """Port to listen on."""
    allow_remote: bool = False
    """Allow a --host other than a loopback address, so others on the network can connect."""
    trusted_proxies: str = ""
    """Addresses of your reverse proxies, comma-separated (e.g. 127.0.0.1 or 10.0.0.0/8): only
    requests from them may name the client in X-Forwarded-For / X-Forwarded-Proto. Empty = trust
    no proxy headers, so nobody can fake their address to dodge the sign-in limit."""
    secure_cookie: bool = False
    """Mark the session cookie Secure, so browsers send it over HTTPS only: use it when the app
    is reached through an HTTPS proxy (as --allow_remote should be); over plain http://
    nobody can then stay signed in."""
    access_log: bool = True
    """Log every request, with the client's address, to the console; false keeps addresses out
    of the logs (errors are still logged)."""
    max_body_bytes: Annotated[int, Bounds(ge=1024, le=2**30)] = (
        1024 * 1024
    )  # web.limits.MAX_BODY_BYTES
    """Largest request body the app takes, in bytes; a larger one is refused (413)."""
    max_text_chars: Annotated[int, Bounds(ge=1, le=10_000_000)] = (
        50_000  # web.limits.MAX_TEXT_CHARS
    )
    """Longest critique or correction a label may hold, in characters (422 above it)."""

    def check(self) -> Iterable[Problem]:
        require_studio("serve")
        yield from CampaignOptions.check(self)
        if not self.allow_remote and not is_loopback(self.host):
            yield Problem(
                "host",
                self.host,
                "opens the app to the network; add --allow_remote "
                "to do so on purpose (use it behind HTTPS), or use 127.0.0.1",
            )
        for proxy in _proxies(self.trusted_proxies):
            if not _is_network(proxy):
                yield Problem(
                    "trusted_proxies",
                    self.trusted_proxies,
                    f"{proxy!r} is not an IP address or network; give the proxies' "
                    "addresses, comma-separated, e.g. 127.0.0.1,10.0.0.0/8",
                )


@dataclass(frozen=True)
class AnnotatorConfig(CampaignOptions):
    """Add a person who labels (an admin also sees progress and agreement, and exports)."""

    name: str = ""
    """Their sign-in name (required)."""
    password: str = ""
    """Their password (at least 8 characters); empty = asked for without echo."""
    admin: bool = False
    """Make them an admin."""
    reset_password: bool = False
    """Give an existing account a new password instead, which signs it out everywhere."""

    def check(self) -> Iterable[Problem]:
        require_studio("annotator")
        from rlhfkit.feedback.web.auth import password_problem

        yield from CampaignOptions.check(self)
        if not self.name or self.name != self.name.strip():
            yield Problem(
                "name",
                self.name,
                "give a sign-in name without leading or trailing spaces, e.g. --name ada",
            )
        problem = password_problem(self.password) if self.password else None
        if problem:
            yield Problem("password", "***", problem)
        if self.admin and self.reset_password:
            yield Problem(
                "admin", True, "sets the role of a new account; leave it out with --reset_password"
            )


def require_studio(verb: str) -> None:
    """Fail in one line, before anything runs, when the studio's web packages (the optional
    extra 'studio') are not installed: ``label serve`` runs the app, ``label annotator``
    hashes passwords with the app's argon2."""
    try:
        import uvicorn  # noqa: F401

        import rlhfkit.feedback.web  # noqa: F401
    except ModuleNotFoundError as missing:
        if (missing.name or "").startswith("rlhfkit"):
            raise  # a bug of ours, not a missing extra
        raise ConfigError(
            f"label {verb} needs the studio's web packages, the optional extra "
            f"'studio' ({missing.name} is not installed): {STUDIO_INSTALL}"
        ) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _proxies(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _is_network(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def uvicorn_options(cfg: ServeConfig) -> dict[str, Any]:
    """How uvicorn runs the app, beyond host and port. Its own defaults would trust
    X-Forwarded-For from 127.0.0.1, where anyone on the machine can send it."""
    proxies = _proxies(cfg.trusted_proxies)
    options: dict[str, Any] = {"proxy_headers": bool(proxies), "access_log": cfg.access_log}
    if proxies:
        options["forwarded_allow_ips"] = proxies
    return options


def serve(cfg: ServeConfig) -> None:
    import uvicorn

    from rlhfkit.feedback.web import create_app
    from rlhfkit.feedback.web.auth import hash_password

    store = open_campaign(cfg)
    with store:
        password = None
        if store.get_annotator(ADMIN) is None:
            password = secrets.token_urlsafe(12)
            store.add_annotator(ADMIN, hash_password(password), is_admin=True)
        app = create_app(
            store,
            secret_key=_secret_key(state_dir(cfg)),
            campaign=cfg.campaign,
            secure_cookie=cfg.secure_cookie,
            max_body_bytes=cfg.max_body_bytes,
            max_text_chars=cfg.max_text_chars,
        )
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        print(f"labelling campaign {cfg.campaign!r} at http://{host}:{cfg.port}/")
        if password is None:
            print(
                f"admin login: {ADMIN}, with the password given when it was created; add "
                f"another admin with `rlhfkit label annotator --admin`"
            )
        elif sys.stdout.isatty():
            print(f"admin login: {ADMIN} / {password}  (shown only now: note it down)")
        else:
            # Output that is not a terminal tends to end up in log files: keep it out of them.
            path = _write_private(state_dir(cfg) / ADMIN_PASSWORD_FILE, password + "\n")
            print(
                f"admin login: {ADMIN}, with the password in {path} (readable by you only; "
                "delete it once noted)"
            )
        if cfg.allow_remote and not cfg.secure_cookie:
            print(
                "note: --allow_remote without --secure_cookie: serve the app behind HTTPS and "
                "add --secure_cookie, or passwords and sessions cross the network in clear",
                file=sys.stderr,
            )
        uvicorn.run(app, host=cfg.host, port=cfg.port, **uvicorn_options(cfg))


def _secret_key(folder: Path) -> str:
    """The app's session-signing key (64 hex digits), kept in a file only its owner may read,
    so sign-ins survive a restart; made on first use."""
    path = folder / KEY_FILE
    if path.is_file():
        return path.read_text().strip()
    key = secrets.token_hex(32)
    _write_private(path, key)
    return key


def _write_private(path: Path, text: str) -> Path:
    """Writes ``text`` to ``path`` whole (via a temporary file) with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    os.replace(temp, path)
    return path


def annotator(cfg: AnnotatorConfig) -> None:
    from rlhfkit.feedback.store import ConflictError
    from rlhfkit.feedback.web.auth import hash_password

    with open_campaign(cfg) as store:
        exists = store.get_annotator(cfg.name) is not None
        if exists and not cfg.reset_password:
            raise ConfigError(
                f"--name = {cfg.name!r}: already has an account in {store.url}; "
                "pick another name, or add --reset_password to give it a new "
                "password"
            )
        if cfg.reset_password and not exists:
            raise ConfigError(
                f"--name = {cfg.name!r}: no such account in {store.url}; leave "
                "out --reset_password to add it"
            )
        password = cfg.password or _ask_password(cfg.name)
        if cfg.reset_password:
            store.set_password(cfg.name, hash_password(password))
        else:
            try:
                store.add_annotator(cfg.name, hash_password(password), is_admin=cfg.admin)
            except ConflictError as error:
                raise ConfigError(f"--name = {cfg.name!r}: {error}") from None
        url = store.url
    if cfg.reset_password:
        print(
            f"new password for {cfg.name!r} in {url}; their sessions have ended, so they sign "
            "in again"
        )
        return
    role = "admin" if cfg.admin else "annotator"
    print(
        f"added {role} {cfg.name!r} to {url}; they sign in at the address "
        f"`rlhfkit label serve --campaign {cfg.campaign}` prints"
    )


def _ask_password(name: str) -> str:
    import getpass

    from rlhfkit.feedback.web.auth import password_problem

    password = getpass.getpass(f"password for {name}: ")
    problem = password_problem(password)
    if problem:
        raise ConfigError(f"password: {problem}")
    if getpass.getpass("again: ") != password:
        raise ConfigError("password: the two entries differ; run the command again")
    return password
