"""``label serve`` and ``label annotator``: the web app, and the people who sign in to it."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from rlhfkit.commands.label.options import CampaignOptions, open_campaign, state_dir
from rlhfkit.config import Problem, Range
from rlhfkit.errors import ConfigError

KEY_FILE = "web-secret.key"
ADMIN = "admin"
MIN_PASSWORD = 8


@dataclass(frozen=True)
class ServeConfig(CampaignOptions):
    """Run the labelling web app for a campaign."""

    host: str = "127.0.0.1"
    """Address to listen on; only this machine can connect unless you open it up."""
    port: Annotated[int, Range(1, 65535)] = 8000
    """Port to listen on."""
    allow_remote: bool = False
    """Allow a --host other than a loopback address, so others on the network can connect."""

    def check(self) -> Iterable[Problem]:
        yield from CampaignOptions.check(self)
        if not self.allow_remote and not _is_loopback(self.host):
            yield Problem("host", self.host, "opens the app to the network; add --allow_remote "
                          "to do so on purpose (use it behind HTTPS), or use 127.0.0.1")


@dataclass(frozen=True)
class AnnotatorConfig(CampaignOptions):
    """Add a person who labels (an admin also sees progress and agreement, and exports)."""

    name: str = ""
    """Their sign-in name (required)."""
    password: str = ""
    """Their password (at least 8 characters); empty = asked for without echo."""
    admin: bool = False
    """Make them an admin."""

    def check(self) -> Iterable[Problem]:
        yield from CampaignOptions.check(self)
        if not self.name or self.name != self.name.strip():
            yield Problem("name", self.name, "give a sign-in name without leading or trailing "
                          "spaces, e.g. --name ada")
        if self.password and len(self.password) < MIN_PASSWORD:
            yield Problem("password", "***", f"is shorter than {MIN_PASSWORD} characters; "
                          "choose a longer one")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        app = create_app(store, secret_key=_secret_key(state_dir(cfg)), campaign=cfg.campaign)
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        print(f"labelling campaign {cfg.campaign!r} at http://{host}:{cfg.port}/")
        if password:
            print(f"admin login: {ADMIN} / {password}  (shown only now: note it down)")
        else:
            print(f"admin login: {ADMIN}, with the password printed when it was created; add "
                  f"another admin with `rlhfkit label annotator --admin`")
        uvicorn.run(app, host=cfg.host, port=cfg.port)


def _secret_key(folder: Path) -> str:
    """The app's session-signing key (64 hex digits), kept in a file only its owner may read,
    so sign-ins survive a restart; made on first use."""
    path = folder / KEY_FILE
    if path.is_file():
        return path.read_text().strip()
    key = secrets.token_hex(32)
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{KEY_FILE}.{os.getpid()}.tmp"
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(key)
    os.replace(temp, path)
    return key


def annotator(cfg: AnnotatorConfig) -> None:
    from rlhfkit.feedback.store import ConflictError
    from rlhfkit.feedback.web.auth import hash_password

    with open_campaign(cfg) as store:
        if store.get_annotator(cfg.name) is not None:
            raise ConfigError(f"--name = {cfg.name!r}: already has an account in {store.url}; "
                              "pick another name")
        password = cfg.password or _ask_password(cfg.name)
        try:
            store.add_annotator(cfg.name, hash_password(password), is_admin=cfg.admin)
        except ConflictError as error:
            raise ConfigError(f"--name = {cfg.name!r}: {error}") from None
        url = store.url
    role = "admin" if cfg.admin else "annotator"
    print(f"added {role} {cfg.name!r} to {url}; they sign in at the address "
          f"`rlhfkit label serve --campaign {cfg.campaign}` prints")


def _ask_password(name: str) -> str:
    import getpass

    password = getpass.getpass(f"password for {name}: ")
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"password: shorter than {MIN_PASSWORD} characters; choose a longer one")
    if getpass.getpass("again: ") != password:
        raise ConfigError("password: the two entries differ; run the command again")
    return password
