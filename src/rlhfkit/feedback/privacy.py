"""Exports without the people in them: annotators under pseudonyms, and dates for times.

``pseudonymise(records, key)`` gives the same labels with every field that names or traces a
person replaced, so that ``export`` (and ``agreement``) run on them unchanged:

- ``annotator`` becomes ``ann-`` and the first 10 hex digits of
  HMAC-SHA256(key, campaign + NUL + sign-in name). The same person keeps one pseudonym
  throughout a campaign, in every export of it, so agreement statistics and the loaders'
  per-annotator merging work as on the plain export; the same person gets unrelated pseudonyms
  in two campaigns, so exports of different campaigns cannot be joined on them. Without the
  key a pseudonym cannot be reversed, not even by hashing a list of likely names. 40 bits make
  a collision between two people of one campaign about 1 in 2 million at 1,000 annotators; if one
  happens it is refused rather than silently merging the two people's labels.
- Every timestamp (the label's ``created_at`` and each output's) becomes its UTC date, so the
  export no longer shows when someone worked, to the second.
- A sign-in name written in a critique or correction ("agree with ada") becomes that person's
  pseudonym: whole words, any case, names of 3 characters or more (shorter ones would hit
  ordinary words, and say little about who is meant).

The key is the store's own secret (``Store.secret(PSEUDONYM_KEY)``, random, made on first use
and kept in the database), so the command line and the web app's download give the same
pseudonyms. Keeping it elsewhere would not protect more: an export's ``label_id`` finds the
label, and its annotator, in that database anyway. Anyone who holds the database can map
pseudonyms back to people; anyone who holds only the export cannot.

Left as they are: ids (task, label, output: they mean nothing without the database), model
paths (a path such as ``/home/NAME/runs/sft`` names whoever trained the model; keep models
outside home folders if that matters), prompts and model outputs (not written by annotators),
and other personal data in free text, which ``rlhfkit.feedback.pii`` scrubs on request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

from rlhfkit.errors import DataError
from rlhfkit.feedback.records import LabelRecord, OutputRecord

PSEUDONYM_KEY = "pseudonym_key"
"""The name of the store's secret that keys the pseudonyms."""
PSEUDONYM_PREFIX = "ann-"
PSEUDONYM_HEX = 10
MENTION_MIN_CHARS = 3


class Pseudonymised(NamedTuple):
    records: list[LabelRecord]
    mentions: int
    """Sign-in names found in critiques and corrections, and replaced by pseudonyms."""


def pseudonym(key: bytes, campaign: str, annotator: str) -> str:
    """The annotator's pseudonym in the campaign, e.g. ``ann-3f9c2a1b7d``.

    Campaign names cannot hold a NUL (``label`` checks them), so the message is unambiguous.
    """
    digest = hmac.new(key, f"{campaign}\0{annotator}".encode(), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX]


def day(timestamp: str) -> str:
    """An ISO 8601 time as its UTC date (``2026-12-07``); "" stays ""."""
    if not timestamp:
        return timestamp
    try:
        moment = datetime.fromisoformat(timestamp)
    except ValueError:
        raise DataError(f"timestamp {timestamp!r} is not ISO 8601; fix it in the store") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.date().isoformat()


def pseudonymise(
    records: Iterable[LabelRecord], key: bytes, known_names: Iterable[str] = ()
) -> Pseudonymised:
    """The labels under pseudonyms and with dates for times (module docstring).

    ``known_names`` are sign-in names to find in free text besides the labels' own annotators
    (everyone in the store: a critique may name someone who did not label this campaign).
    """
    records = list(records)
    names = set(known_names) | {label.annotator for label in records}
    campaigns = {label.campaign for label in records}
    pseudonyms = {campaign: _pseudonyms(key, campaign, names) for campaign in campaigns}
    mention = _mention_pattern(names)
    mentions = 0

    def hide(text: str | None, campaign: str) -> str | None:
        nonlocal mentions
        if text is None or mention is None:
            return text
        text, found = mention.subn(lambda match: _lookup(pseudonyms[campaign], match[0]), text)
        mentions += found
        return text

    hidden = [
        dataclasses.replace(
            label,
            annotator=pseudonyms[label.campaign][label.annotator],
            critique=hide(label.critique, label.campaign),
            correction=hide(label.correction, label.campaign),
            created_at=day(label.created_at),
            outputs=tuple(_dated(output) for output in label.outputs),
        )
        for label in records
    ]
    return Pseudonymised(hidden, mentions)


def campaign_records(store, campaign: str, *, pseudonymous: bool) -> Pseudonymised:
    """The campaign's labels from a ``Store``, pseudonymised with the store's key if asked (what
    ``label export --pseudonymise`` and the admin download share)."""
    records = store.label_records(campaign)
    if not pseudonymous:
        return Pseudonymised(records, 0)
    everyone = [person.annotator for person in store.progress(campaign).annotators]
    return pseudonymise(records, store.secret(PSEUDONYM_KEY), everyone)


def _pseudonyms(key: bytes, campaign: str, names: set[str]) -> dict[str, str]:
    by_name = {name: pseudonym(key, campaign, name) for name in sorted(names)}
    seen: dict[str, str] = {}
    for name, alias in by_name.items():
        if alias in seen:
            raise DataError(
                f"campaign {campaign!r}: annotators {seen[alias]!r} and {name!r} "
                f"share the pseudonym {alias}, which would merge their labels; "
                "export this campaign without --pseudonymise, or rename one of them"
            )
        seen[alias] = name
    return by_name


def _mention_pattern(names: set[str]) -> re.Pattern | None:
    """Any of the names as a whole word, any case; longest first so "ada lee" beats "ada"."""
    findable = sorted(
        (name for name in names if len(name) >= MENTION_MIN_CHARS),
        key=lambda name: (-len(name), name),
    )
    if not findable:
        return None
    return re.compile(
        r"(?<!\w)(?:" + "|".join(map(re.escape, findable)) + r")(?!\w)", re.IGNORECASE
    )


def _lookup(pseudonyms: dict[str, str], written: str) -> str:
    """The pseudonym of the name as written: exactly, else the first name equal but for case
    (a placeholder if the regular expression's idea of case differs from ``str.lower``'s)."""
    if written in pseudonyms:
        return pseudonyms[written]
    return next(
        (
            alias
            for name, alias in pseudonyms.items()
            if name.lower() == written.lower() or name.casefold() == written.casefold()
        ),
        "<ANNOTATOR>",
    )


def _dated(output: OutputRecord) -> OutputRecord:
    return dataclasses.replace(output, created_at=day(output.created_at))
