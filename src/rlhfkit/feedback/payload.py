"""What a label may say, per kind of task: checked in full before anything is written.

A label arrives as a payload (a form or JSON object) and leaves as typed columns. Each kind has
its own answer, and any kind may carry a free-text note (``critique``) and ``flags``:

    kind        outputs   answer (required)                     also allowed
    pairwise    2         choice: A | B | tie | both_bad        critique, flags
    ranking     2+        ranking: positions 0..n-1, best first critique, flags
    rating      1         rating: 1..7 and/or thumbs: bool     critique, flags
    critique    1         critique: text                        flags
    correction  1         correction: text                      critique, flags

A field outside its kind's list is refused rather than dropped: an answer that is silently
lost is worse than a form that has to be fixed. Texts are kept exactly as typed (whitespace
too); they must hold something besides whitespace, and no NUL character, which PostgreSQL's
``text`` cannot store (refused on SQLite too, so both stores accept the same labels), and be
valid Unicode: a lone surrogate (``"\ud800"``, which JSON can spell) has no UTF-8 form, so
neither database could store it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from rlhfkit.errors import RlhfkitError
from rlhfkit.feedback.records import CHOICES, FLAGS, KINDS, RATING_SCALE

ANSWER_FIELDS = {
    "pairwise": ("choice",),
    "ranking": ("ranking",),
    "rating": ("rating", "thumbs"),
    "critique": ("critique",),
    "correction": ("correction",),
}
"""Per kind, the fields that answer it; at least one must be given."""
NOTE_FIELDS = ("critique", "flags")
"""Fields any kind may carry besides its answer."""
GOLD_KINDS = ("pairwise", "ranking", "rating")
"""Kinds whose answer can be checked against a known one (``agreement.gold_accuracy``)."""
REQUEST_ID_MAX = 100
ID_MAX = 2**63 - 1
"""The largest row id: ids are signed 64-bit integers in SQLite and PostgreSQL alike."""


class PayloadError(RlhfkitError):
    """A label that does not fit its task: names the field, the value and what is allowed."""


@dataclass(frozen=True)
class LabelFields:
    """A checked label, one attribute per column of ``labels``."""

    choice: str | None = None
    ranking: tuple[int, ...] | None = None
    rating: float | None = None
    thumbs: bool | None = None
    critique: str | None = None
    correction: str | None = None
    flags: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The fields that are set, as JSON values (how a gold answer is stored)."""
        return {
            name: list(value) if isinstance(value, tuple) else value
            for name, value in asdict(self).items()
            if value not in (None, ())
        }


def outputs_allowed(kind: str, count: int) -> str:
    """Why ``count`` outputs cannot make a ``kind`` task, or "" when they can."""
    if kind not in KINDS:
        return f"kind {kind!r} is not one of {', '.join(KINDS)}"
    need, ok = {"pairwise": ("exactly 2", count == 2), "ranking": ("2 or more", count >= 2)}.get(
        kind, ("exactly 1", count == 1)
    )
    return "" if ok else f"a {kind} task shows {need} outputs, not {count}"


def check_label(kind: str, n_outputs: int, payload: Mapping[str, Any]) -> LabelFields:
    """The payload of a ``kind`` label over ``n_outputs`` outputs, checked and typed.

    Raises ``PayloadError`` naming the first field that is wrong and what it may be.
    """
    if not isinstance(payload, Mapping):
        raise PayloadError(f"a label is a mapping of field to value, not {type(payload).__name__}")
    answers = ANSWER_FIELDS[kind]
    allowed = answers + tuple(name for name in NOTE_FIELDS if name not in answers)
    for name in payload:
        if name not in allowed:
            raise PayloadError(
                f"label field {name!r} is not part of a {kind} label: use {', '.join(allowed)}"
            )
    given = {name: value for name, value in payload.items() if value is not None}
    if not any(name in given for name in answers):
        raise PayloadError(f"a {kind} label needs {' and/or '.join(answers)}")
    fields: dict[str, Any] = {}
    for name, value in given.items():
        fields[name] = _CHECKS[name](value, n_outputs)
    return LabelFields(**fields)


def check_gold(kind: str, n_outputs: int, answer: Mapping[str, Any]) -> LabelFields:
    """A gold task's known answer: a ``kind`` label holding its answer fields and nothing else
    (a note or a flag cannot be right or wrong), for a kind whose answers can be checked."""
    if kind not in GOLD_KINDS:
        raise PayloadError(
            f"a {kind} task cannot be gold: only {', '.join(GOLD_KINDS)} answers can be checked"
        )
    notes = (
        [name for name in answer if name not in ANSWER_FIELDS[kind]]
        if isinstance(answer, Mapping)
        else []
    )
    if notes:
        raise PayloadError(
            f"a gold answer holds only {' and/or '.join(ANSWER_FIELDS[kind])}, "
            f"not {', '.join(map(repr, notes))}: drop those fields"
        )
    return check_label(kind, n_outputs, answer)


def check_text(field: str, value: Any, *, blank_ok: bool = False) -> str:
    """``value`` as a text to store unchanged: a string with something besides whitespace,
    unless ``blank_ok`` (a model may well generate nothing, and that is worth judging)."""
    if not isinstance(value, str):
        raise PayloadError(f"{field} must be text, not {type(value).__name__}")
    if not value.strip() and not blank_ok:
        raise PayloadError(f"{field} is empty: write some text")
    if "\x00" in value:
        raise PayloadError(
            f"{field} holds a NUL character (\\x00), which the store cannot keep: remove it"
        )
    _check_unicode(field, value)
    return value


def check_request_id(request_id: Any) -> str:
    """A client's id for one submission: the key that makes a retried submission a no-op."""
    if not isinstance(request_id, str) or not 0 < len(request_id) <= REQUEST_ID_MAX:
        raise PayloadError(
            f"request_id {request_id!r} must be a string of 1 to "
            f"{REQUEST_ID_MAX} characters, new for each submission"
        )
    _check_unicode("request_id", request_id)
    return request_id


def _check_unicode(field: str, value: str) -> None:
    """Refuse text with no UTF-8 form (a lone surrogate), naming where it is."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise PayloadError(
            f"{field} holds {value[error.start]!r} at character {error.start}, "
            "half of a UTF-16 surrogate pair and not a character: send valid "
            "UTF-8 text"
        ) from None


def _choice(value: Any, n_outputs: int) -> str:
    if value not in CHOICES:
        raise PayloadError(f"label field 'choice': {value!r} is not one of {', '.join(CHOICES)}")
    return value


def _ranking(value: Any, n_outputs: int) -> tuple[int, ...]:
    positions = list(value) if isinstance(value, (list, tuple)) else None
    if (
        positions is None
        or any(type(p) is not int for p in positions)
        or sorted(positions) != list(range(n_outputs))
    ):
        raise PayloadError(
            f"label field 'ranking': {value!r} is not an order of the {n_outputs} "
            f"outputs: give each position 0..{n_outputs - 1} once, best first"
        )
    return tuple(positions)


def _rating(value: Any, n_outputs: int) -> float:
    low, high = RATING_SCALE
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise PayloadError(
            f"label field 'rating': {value!r} is not on the scale: give a number "
            f"from {low:g} to {high:g}"
        )
    return float(value)


def _thumbs(value: Any, n_outputs: int) -> bool:
    if not isinstance(value, bool):
        raise PayloadError(f"label field 'thumbs': {value!r} is not true (up) or false (down)")
    return value


def _flags(value: Any, n_outputs: int) -> tuple[str, ...]:
    flags = list(value) if isinstance(value, (list, tuple)) else None
    if flags is None or any(flag not in FLAGS for flag in flags):
        raise PayloadError(
            f"label field 'flags': {value!r} is not a list drawn from {', '.join(FLAGS)}"
        )
    return tuple(flag for flag in FLAGS if flag in flags)  # one order, no repeats


_CHECKS = {
    "choice": _choice,
    "ranking": _ranking,
    "rating": _rating,
    "thumbs": _thumbs,
    "flags": _flags,
    "critique": lambda value, _: check_text("label field 'critique'", value),
    "correction": lambda value, _: check_text("label field 'correction'", value),
}
