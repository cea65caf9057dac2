"""From a posted task form to a label payload for ``Store.submit_label``.

The form's fields are turned into the payload's types and nothing more: the store checks the
payload against the task's kind (``rlhfkit.feedback.payload``), so a field the kind does not
take, or a missing answer, is refused there with its message. The form fields:

    choice            A | B | tie | both_bad          (pairwise radio buttons)
    rank_0..rank_N-1  each output's place, 1 = best   (ranking menus)
    rating            1..7                            (rating radio buttons)
    thumbs            up | down
    critique          text (on other kinds an optional note); left out when blank
    correction        text
    flags             any of unsafe, factually_wrong, off_topic (checkboxes)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.datastructures import FormData

from rlhfkit.feedback.payload import PayloadError

THUMBS = {"up": True, "down": False}


def label_payload(form: FormData) -> dict[str, Any]:
    """The label a task form answers, in the store's payload form."""
    payload: dict[str, Any] = {}
    if "choice" in form:
        payload["choice"] = form["choice"]
    if any(name.startswith("rank_") for name in form):
        payload["ranking"] = _ranking(form)
    if form.get("rating"):
        rating = str(form["rating"])
        # ASCII digits only: isdigit() also takes "²" (int() fails) and "١" (int() reads 1)
        number = rating.isascii() and rating.isdigit() and len(rating) < 4
        payload["rating"] = int(rating) if number else rating  # anything else is refused
    if form.get("thumbs"):
        payload["thumbs"] = THUMBS.get(str(form["thumbs"]), form["thumbs"])
    if "correction" in form:
        payload["correction"] = _typed_text(form["correction"])
    critique = _typed_text(form.get("critique", ""))
    if critique.strip():
        payload["critique"] = critique
    flags = form.getlist("flags")
    if flags:
        payload["flags"] = flags
    return payload


def _ranking(form: Mapping[str, Any]) -> list[int]:
    """Output positions best first, from each output's place (``rank_<position>`` = 1..n)."""
    places = {name: str(value) for name, value in form.items() if name.startswith("rank_")}
    count = len(places)
    expected = {f"rank_{position}" for position in range(count)}
    wanted = {str(place) for place in range(1, count + 1)}
    if set(places) != expected or set(places.values()) != wanted:
        raise PayloadError(
            f"ranking: give each of the {count} outputs a different place from 1 (best) to {count}"
        )
    return sorted(range(count), key=lambda position: int(places[f"rank_{position}"]))


def _typed_text(value: Any) -> str:
    """A text box's text with the browser's line ends undone: forms send every newline as
    CRLF (HTML spec), while model outputs, and so corrections of them, use LF."""
    return str(value).replace("\r\n", "\n")
