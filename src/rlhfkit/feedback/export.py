"""Datasets from a campaign's labels, in the forms the training commands read directly.

``export(records, as_)`` turns labels into rows of one of five forms; ``write_export`` writes
them as a JSONL file that ``rlhfkit.data.feedback`` loads as it is:

=========  ======================================  =========================================
as_        columns                                 read by
=========  ======================================  =========================================
pairs      prompt, chosen, rejected                ``load_pairs``: reward, dpo
ratings    prompt, completion, rating, annotator   ``load_ratings``: reward --rm.objective
                                                   ratings (or pairs made from the ratings)
binary     prompt, completion, label               ``load_labeled``: dpo --algo.loss kto
critiques  prompt, completion, critique            ``load_demonstrations`` (critique in meta);
                                                   the hindsight methods
sft        prompt, completion                      ``load_demonstrations``: sft
=========  ======================================  =========================================

Where rows come from:

- pairs: a pairwise choice of A or B gives one pair; "tie" and "both_bad" prefer neither, so
  they give none (counted). A ranking of n outputs gives all n(n-1)/2 pairs, each higher-ranked
  output chosen over each lower-ranked one.
- ratings: one row per rating label, i.e. per (annotator, output); the loader merges several
  annotators' rows of one text into their mean, keeping each score and annotator.
- binary: thumbs up desirable, down undesirable; and (``binary_from_choices``) a pairwise
  choice's chosen output desirable and rejected undesirable, the same conversion the loader
  makes from a pair file, and both outputs of "both_bad" undesirable.
- critiques: one row per critique of a single output (a critique left as a note on a pairwise
  or ranking label is about several outputs: counted, not exported).
- sft: a correction's text as the completion (what the annotator would have the model write);
  with ``sft_from_chosen`` also the chosen output of each pairwise choice and the top of each
  ranking.

Each label gives its own rows: annotators who agree give the same pair once each and those who
disagree give opposite pairs, so training weighs each preference by the people who hold it.

Gold tasks are left out unless ``include_gold``: they are the campaign's quality check, often
duplicated across annotators, not fresh data. Flags belong to a label, not to one of its
outputs (``rlhfkit.feedback.records``), so an output shown by a flagged label is never made a
chosen, desirable or sft example unless ``include_flagged``: such a label gives no pair, and
gives its rejected and thumbs-down rows only. A correction is kept even when flagged: it is the
annotator's repair of the flagged output. Ratings and critiques of flagged outputs are kept too:
they describe the flaw. Rows that the loader would refuse are left out and counted: an empty
text, or a pair of two identical texts.

Every row carries its provenance in columns the loaders keep in ``meta``: ``campaign``,
``task_id``, ``label_id``, ``annotator``, ``kind``, ``flags``, ``is_gold``, ``created_at`` (the
label's), and per output shown (``chosen`` / ``rejected`` in pairs, ``output`` elsewhere):
``<role>_id``, ``<role>_model``, ``<role>_model_hash``, ``<role>_seed``, ``<role>_generation``,
``<role>_created_at``. An sft row also says its ``source`` ("correction" or "chosen"), and a
correction row keeps the text it corrected as ``output_text``. To export without the people in
them, pass the labels through ``rlhfkit.feedback.privacy.pseudonymise`` (annotators as
pseudonyms, dates for times) and ``rlhfkit.feedback.pii.scrub_records`` first.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from rlhfkit.data.files import write_jsonl
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.feedback.records import LabelRecord, OutputRecord

EXPORTS = ("pairs", "ratings", "binary", "critiques", "sft")
SUFFIXES = (".jsonl", ".json")

Row = dict[str, Any]


class Export(NamedTuple):
    """The rows of an export and why labels that could have given rows gave none."""

    rows: list[Row]
    skipped: dict[str, int]
    """Reason ("tie", "gold", "flagged", "empty text" ...) -> how many labels, or rows a label
    would have given, were left out for it."""


@dataclass(frozen=True)
class _Options:
    include_flagged: bool
    binary_from_choices: bool
    sft_from_chosen: bool


def export(
    records: Iterable[LabelRecord],
    as_: str,
    *,
    include_gold: bool = False,
    include_flagged: bool = False,
    binary_from_choices: bool = True,
    sft_from_chosen: bool = False,
) -> Export:
    """Rows of one export form (``EXPORTS``) from labels, in label order, with what was skipped.

    The options are the rules of the module docstring. Labels that hold nothing the form uses
    (a rating, for pairs) are not part of it and not counted; those that could have given rows
    but did not are counted by reason.
    """
    if as_ not in EXPORTS:
        raise ConfigError(f"export as {as_!r}: choose one of {', '.join(EXPORTS)}")
    options = _Options(include_flagged, binary_from_choices, sft_from_chosen)
    rows: list[Row] = []
    skipped: Counter = Counter()
    for label in records:
        if not _uses(label, as_, options):
            continue
        if label.is_gold and not include_gold:
            skipped["gold"] += 1
            continue
        rows.extend(_MAKERS[as_](label, options, skipped))
    return Export(rows, dict(skipped))


def export_rows(records: Iterable[LabelRecord], as_: str, **options: bool) -> list[Row]:
    """Just the rows of ``export(records, as_, **options)``."""
    return export(records, as_, **options).rows


def write_export(path: str | os.PathLike, rows: Iterable[Row]) -> None:
    """Write rows as a JSONL file in one step: a crash leaves the old file (or none)."""
    if Path(path).suffix.lower() not in SUFFIXES:
        raise DataError(f"{path}: exports are JSONL; give a path ending in .jsonl")
    write_jsonl(path, rows)


def _uses(label: LabelRecord, as_: str, options: _Options) -> bool:
    """Whether the label holds an answer this export form is made from."""
    ranked = label.choice is not None or label.ranking is not None
    return {
        "pairs": ranked,
        "ratings": label.rating is not None,
        "binary": label.thumbs is not None
        or (options.binary_from_choices and label.choice is not None),
        "critiques": label.critique is not None,
        "sft": label.correction is not None or (options.sft_from_chosen and ranked),
    }[as_]


# --- rows of each form ---------------------------------------------------------------------------


def _pairs(label: LabelRecord, options: _Options, skipped: Counter) -> list[Row]:
    if label.flags and not options.include_flagged:
        skipped["flagged"] += 1
        return []
    if label.choice in ("tie", "both_bad"):
        skipped[label.choice] += 1
        return []
    rows = []
    for chosen, rejected in itertools.combinations(_best_first(label), 2):
        if not (_is_text(chosen.text) and _is_text(rejected.text)):
            skipped["empty text"] += 1
            continue
        if chosen.text == rejected.text:
            skipped["identical outputs"] += 1
            continue
        rows.append(
            _row(
                label,
                {"prompt": label.prompt, "chosen": chosen.text, "rejected": rejected.text},
                chosen=chosen,
                rejected=rejected,
            )
        )
    return rows


def _ratings(label: LabelRecord, options: _Options, skipped: Counter) -> list[Row]:
    output = _single(label, skipped)
    if output is None:
        return []
    return [
        _row(
            label,
            {
                "prompt": label.prompt,
                "completion": output.text,
                "rating": label.rating,
                "annotator": label.annotator,
            },
            output=output,
        )
    ]


def _binary(label: LabelRecord, options: _Options, skipped: Counter) -> list[Row]:
    judged: list[tuple[OutputRecord, bool]] = []
    if label.thumbs is not None:
        output = _single(label, skipped)
        judged += [] if output is None else [(output, label.thumbs)]
    if options.binary_from_choices and label.choice == "tie":
        skipped["tie"] += 1
    elif options.binary_from_choices and label.choice == "both_bad":
        judged += [(shown, False) for shown in label.outputs]
    elif options.binary_from_choices and label.choice is not None:
        chosen, rejected = _best_first(label)
        judged += [(chosen, True), (rejected, False)]
    rows = []
    for output, desirable in judged:
        if desirable and label.flags and not options.include_flagged:
            skipped["flagged"] += 1
        elif not _is_text(output.text):
            skipped["empty text"] += 1
        else:
            rows.append(
                _row(
                    label,
                    {"prompt": label.prompt, "completion": output.text, "label": desirable},
                    output=output,
                )
            )
    return rows


def _critiques(label: LabelRecord, options: _Options, skipped: Counter) -> list[Row]:
    output = _single(label, skipped)
    if output is None:
        return []
    if not _is_text(label.critique):
        skipped["empty critique"] += 1
        return []
    return [
        _row(
            label,
            {"prompt": label.prompt, "completion": output.text, "critique": label.critique},
            output=output,
        )
    ]


def _sft(label: LabelRecord, options: _Options, skipped: Counter) -> list[Row]:
    rows = []
    corrected = None if label.correction is None else _single(label, skipped, check_text=False)
    if corrected is not None and not _is_text(label.correction):
        skipped["empty correction"] += 1
    elif corrected is not None:
        rows.append(
            _row(
                label,
                {
                    "prompt": label.prompt,
                    "completion": label.correction,
                    "source": "correction",
                    "output_text": corrected.text,
                },
                output=corrected,
            )
        )
    if not options.sft_from_chosen or label.choice is None and label.ranking is None:
        return rows
    chosen = None if label.choice in ("tie", "both_bad") else _best_first(label)[0]
    if chosen is None:
        skipped[label.choice] += 1
    elif label.flags and not options.include_flagged:
        skipped["flagged"] += 1
    elif not _is_text(chosen.text):
        skipped["empty text"] += 1
    else:
        rows.append(
            _row(
                label,
                {"prompt": label.prompt, "completion": chosen.text, "source": "chosen"},
                output=chosen,
            )
        )
    return rows


_MAKERS = {
    "pairs": _pairs,
    "ratings": _ratings,
    "binary": _binary,
    "critiques": _critiques,
    "sft": _sft,
}


# --- helpers -------------------------------------------------------------------------------------


def _best_first(label: LabelRecord) -> Sequence[OutputRecord]:
    """The outputs of a choice of A or B, or of a ranking, best first."""
    if label.choice in ("A", "B"):
        return label.outputs if label.choice == "A" else label.outputs[::-1]
    return [label.outputs[position] for position in label.ranking]


def _single(label: LabelRecord, skipped: Counter, check_text: bool = True) -> OutputRecord | None:
    """The one output a rating, thumbs, critique or correction is about; None (counted) when
    the label shows several, or (``check_text``) when the output is empty."""
    if len(label.outputs) != 1:
        skipped["about several outputs"] += 1
        return None
    if check_text and not _is_text(label.outputs[0].text):
        skipped["empty text"] += 1
        return None
    return label.outputs[0]


def _is_text(text: str | None) -> bool:
    """Whether the loaders accept it as a completion: not empty, not only whitespace."""
    return bool(text and text.strip())


def _row(label: LabelRecord, columns: Row, **outputs: OutputRecord) -> Row:
    """The form's columns, then the label's provenance and each output's, by its role."""
    row = {
        **columns,
        "campaign": label.campaign,
        "task_id": label.task_id,
        "label_id": label.label_id,
        "annotator": label.annotator,
        "kind": label.kind,
        "flags": list(label.flags),
        "is_gold": label.is_gold,
        "created_at": label.created_at,
    }
    for role, output in outputs.items():
        row.update(
            {
                f"{role}_id": output.output_id,
                f"{role}_model": output.model,
                f"{role}_model_hash": output.model_hash,
                f"{role}_seed": output.seed,
                f"{role}_generation": output.generation,
                f"{role}_created_at": output.created_at,
            }
        )
    return row
