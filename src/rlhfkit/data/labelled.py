"""Labelled texts for a classifier (``rlhfkit classify``): a user's file or ``wiki_topics``.

A file has a text column and a label column (``--data.text_field``, ``--data.label_field``);
its held-out rows come from ``eval_path``, or else a hash of each text picks
``eval_fraction`` of them (the same text always lands in the same split, so duplicates
never straddle train and eval). Bad rows stop the load naming the file and row, or are
skipped and counted (``on_bad_row``), as every feedback file is read
(``rlhfkit.data.feedback_source``).

``wiki_topics``: the Wikipedia leads of ``rlhfkit.data.wiki`` labelled by their topic
("Uncategorized" left out), with the fixed title-hash splits: eval reads validation, test
reads test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rlhfkit.data import feedback_source as source
from rlhfkit.data.feedback import balance_classes
from rlhfkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    from rlhfkit.config import ClassifyDataCfg

SPLITS = ("train", "eval", "test")
WIKI_SPLITS = {"train": "train", "eval": "validation", "test": "test"}


@dataclass(frozen=True)
class LabelledText:
    """A text and its class; ``weight`` is what it counts for in the loss (class balance)."""

    text: str
    label: str
    weight: float = 1.0


def load_labelled(cfg: ClassifyDataCfg, split: str) -> list[LabelledText]:
    """The labelled texts of one split; the train split is cut to ``max_rows`` and weighed by
    ``balance`` (``inverse-frequency``: every class the same total weight, mean weight 1).

    A user's file has no test split: asking for one gives no rows (its eval split is the
    held-out report).
    """
    if split not in SPLITS:
        raise ConfigError(f"split {split!r}: choose one of {', '.join(SPLITS)}")
    name = cfg.eval_path if split == "eval" and cfg.eval_path else cfg.path
    if name == "wiki_topics":
        rows = _wiki_topics(WIKI_SPLITS[split])
    elif split == "test":
        return []
    else:
        numbered = _held_out_rows(name, split, cfg)
        rows = source.parse_rows(name, split, numbered, cfg, _labelled)  # type: ignore[arg-type]
    if split != "train":
        return rows
    rows = rows[: cfg.max_rows] if cfg.max_rows else rows
    return balance_classes(rows, cfg.balance, lambda row: row.label)


def _wiki_topics(split: str) -> list[LabelledText]:
    from rlhfkit.data.wiki import UNCATEGORIZED, load_articles

    return [
        LabelledText(a.extract, a.topic) for a in load_articles(split) if a.topic != UNCATEGORIZED
    ]


def _held_out_rows(name: str, split: str, cfg: ClassifyDataCfg) -> list[tuple[int, source.Row]]:
    """A file's rows of one split with their 1-based row numbers: all of eval_path, or the
    rows whose text hashes into (eval) or out of (train) the held-out fraction."""
    from rlhfkit.data.files import read_rows

    numbered = list(enumerate(read_rows(name), start=1))
    if cfg.eval_path:
        return numbered
    return [
        (number, row)
        for number, row in numbered
        if source.is_held_out(str(row.get(cfg.text_field)), cfg.eval_fraction) == (split == "eval")
    ]


def _labelled(row: source.Row, cfg: ClassifyDataCfg) -> LabelledText:
    text = source.text(row, cfg, "text_field")  # type: ignore[arg-type]
    label = source.column(row, cfg, "label_field")  # type: ignore[arg-type]
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise source.BadRow(
            f"{cfg.label_field!r} not a class name",
            "give a string or a whole number",
            f" ({label!r})",
        )
    if isinstance(label, str) and not label.strip():
        raise source.BadRow(f"empty {cfg.label_field!r}", "fill it in or remove the row")
    return LabelledText(text, str(label).strip())


def class_names(train: list[LabelledText], held_out: list[LabelledText], where: str) -> list[str]:
    """The classes, sorted: those of the training rows. A held-out class never trained on is a
    DataError: the head would have no output for it."""
    names = sorted({row.label for row in train})
    if len(names) < 2:
        raise DataError(
            f"{where}: the training rows have {len(names)} class(es) ({', '.join(names)}); "
            "a classifier needs 2 or more: check --data.label_field"
        )
    unseen = sorted({row.label for row in held_out} - set(names))
    if unseen:
        raise DataError(
            f"{where}: held-out classes {', '.join(unseen)} never occur in the training rows; "
            "add training rows of them or drop them from the held-out data"
        )
    return names
