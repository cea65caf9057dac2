"""What every ``rlhfkit label`` verb shares: which campaign, in which database, opened how.

A campaign lives in a feedback store (``rlhfkit.feedback.store``): by default
``campaigns/NAME/feedback.db`` (SQLite), or any database ``--db`` names (a path or a
``postgresql://`` URL).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import Problem
from rlhfkit.errors import ConfigError

CAMPAIGNS_DIR = "campaigns"
DB_NAME = "feedback.db"  # feedback.engine.DEFAULT_DB_NAME
_CAMPAIGN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class CampaignOptions:
    """Which campaign, in which database."""

    campaign: str = ""
    """Campaign name: letters, digits, dot, dash, underscore (required)."""
    db: str = ""
    """Feedback database: an SQLite file or directory, or postgresql://USER:PASSWORD@HOST/DB
    (empty = campaigns/CAMPAIGN/feedback.db)."""

    def check(self) -> Iterable[Problem]:
        if not self.campaign:
            yield Problem("campaign", "", "is required; pass --campaign NAME")
        elif not _CAMPAIGN_NAME.fullmatch(self.campaign):
            yield Problem(
                "campaign",
                self.campaign,
                "use letters, digits, '.', '-' and '_' "
                "(up to 100, starting with a letter or digit), e.g. round-1",
            )


def db_target(opts: CampaignOptions) -> str:
    return opts.db or str(Path(CAMPAIGNS_DIR) / opts.campaign / DB_NAME)


def open_campaign(opts: CampaignOptions, *, new: bool = False):
    """The campaign's store. Except for a new campaign, the database and the campaign must
    exist: a typo fails here instead of creating an empty database."""
    from rlhfkit.feedback.engine import resolve_url
    from rlhfkit.feedback.store import open_store

    target = db_target(opts)
    url = resolve_url(target)
    if not new and url.get_backend_name() == "sqlite" and not Path(url.database).is_file():
        raise ConfigError(
            f"--campaign = {opts.campaign!r}: no feedback database at "
            f"{url.database}; create the campaign with `rlhfkit label init "
            f"--campaign {opts.campaign} ...`, or pass --db where it lives"
        )
    store = open_store(target)
    if not new:
        require_campaign(store, opts.campaign)
    return store


def require_campaign(store, campaign: str):
    from rlhfkit.feedback.store import NotFoundError

    try:
        return store.campaign_settings(campaign)
    except NotFoundError as error:
        raise ConfigError(f"--campaign = {campaign!r}: {error}") from None


def state_dir(opts: CampaignOptions) -> Path:
    """Where files beside the database go: the SQLite file's folder, else the campaign's."""
    from rlhfkit.feedback.engine import resolve_url

    url = resolve_url(db_target(opts))
    if url.get_backend_name() == "sqlite":
        return Path(url.database).parent
    return Path(CAMPAIGNS_DIR) / opts.campaign


def db_flag(opts: CampaignOptions) -> str:
    return f" --db {opts.db}" if opts.db else ""
