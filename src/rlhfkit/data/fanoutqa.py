"""Closed-book QA: the single-hop questions of FanOutQA's dev set, human-written with answers.

Zhu et al., "FanOutQA: A Multi-Hop, Multi-Document Question Answering Benchmark for Large
Language Models", ACL 2024 (CC BY-SA 4.0). ``fanoutqa==1.1.1`` ships
``fanoutqa/data/fanout-final-dev.json``: 310 multi-hop questions, each decomposed by its
writers into sub-questions with answers from Wikipedia. The leaves of each ``decomposition``
tree are single-hop questions ("What is the population of Bahrain?" -> 1463000): 2,142 of them,
2,109 distinct. ``build_qa`` (the ``fanoutqa`` entry of ``rlhfkit.assets``) writes them to
``rows.jsonl`` as ``{"id", "question", "answers"}``, where ``answers`` are the gold answers as
text (any one counts as right):

- a text answer is itself; a whole number also in thousands form (1463000, "1,463,000"); a
  decimal as written (64.4); true/false as "yes"/"no" (the questions are yes/no questions);
- a list answer ("the first 5 picks") is one answer, its items joined by ", ": exact match then
  asks for every item in order, and token F1 gives credit for each one named;
- 14 leaves answer with a table (a dict of item -> value) or nothing: left out, counted in
  the manifest.

A question asked twice (with the same answers or not) is kept once, its answers merged. Splits
are by a hash of the question (``vader.split_of``): 80% train, 10% validation, 10% test.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from rlhfkit import assets
from rlhfkit.data import task_sources
from rlhfkit.data.vader import split_of
from rlhfkit.errors import AssetError

SOURCE = "data/fanout-final-dev.json"  # inside the fanoutqa package
PROMPT = "Answer with a few words only.\nQuestion: {question}\nAnswer:"


def build_qa(asset: assets.Asset, out: Path) -> dict[str, Any]:
    """Read the single-hop Q/A pairs out of the fanoutqa package into rows.jsonl."""
    rows, skipped = task_sources.convert_file(asset, out, "fanoutqa", SOURCE, read_pairs)
    return task_sources.manifest_details(
        rows,
        split_of_row,
        "single-hop Q/A pairs",
        file=f"fanoutqa/{SOURCE}",
        pairs=len(rows),
        skipped=skipped,
    )


def read_pairs(source: Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The leaf Q/A pairs of a FanOutQA file, deduplicated by question, and what was skipped."""
    try:
        questions = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AssetError(f"{source}: not FanOutQA JSON ({e}); reinstall the package") from None
    if not isinstance(questions, list):
        raise AssetError(
            f"{source}: expected a list of questions, found {type(questions).__name__}"
        )
    merged: dict[str, dict[str, Any]] = {}
    skipped: Counter[str] = Counter()
    for number, question in enumerate(questions, start=1):
        if not isinstance(question, dict) or not isinstance(question.get("decomposition"), list):
            raise AssetError(f"{source}: question {number} has no 'decomposition' list")
        for leaf in _leaves(question["decomposition"]):
            answers = answer_texts(leaf.get("answer"))
            text = task_sources.clean_text(str(leaf.get("question", "")))
            if not text or not answers:
                skipped["table or empty answer"] += 1
                continue
            if text in merged:
                skipped["repeated question"] += 1
                row = merged[text]
                row["answers"] += [a for a in answers if a not in row["answers"]]
            else:
                merged[text] = {"id": leaf.get("id", ""), "question": text, "answers": answers}
    return list(merged.values()), dict(skipped)


def _leaves(nodes: list[Any]) -> list[dict[str, Any]]:
    found = []
    for node in nodes:
        if isinstance(node, dict) and node.get("decomposition"):
            found += _leaves(node["decomposition"])
        elif isinstance(node, dict):
            found.append(node)
    return found


def answer_texts(answer: Any) -> list[str]:
    """A FanOutQA answer as the gold texts that count as right (empty for a table).

    >>> answer_texts(1463000), answer_texts(True), answer_texts(["Macau", "Bahrain"])
    (['1463000', '1,463,000'], ['yes'], ['Macau, Bahrain'])
    """
    if isinstance(answer, bool):
        return ["yes" if answer else "no"]
    if isinstance(answer, int):
        return list(dict.fromkeys([str(answer), f"{answer:,}"]))
    if isinstance(answer, float):
        return [repr(answer)]
    if isinstance(answer, str):
        return [task_sources.clean_text(answer)] if answer.strip() else []
    if isinstance(answer, list) and answer:
        return [", ".join(answer_texts(item)[0] for item in answer if answer_texts(item))]
    return []


def split_of_row(row: dict[str, Any]) -> str:
    return split_of("fanoutqa", row["question"])


def load_qa(split: str | None = None) -> list[dict[str, Any]]:
    """The Q/A pairs ``{"id", "question", "answers"}`` of one split (or all)."""
    task_sources.check_split(split, "fanoutqa")
    rows = task_sources.read_checked("fanoutqa", {"question": str, "answers": list})
    return [row for row in rows if split is None or split_of_row(row) == split]


def prompt_rows(split: str) -> list[dict[str, Any]]:
    """The built-in prompt set ``qa:fanoutqa``: prompt, the gold ``answers`` (what the
    exact_match and token_f1 rewards read) and ``completion`` (the first answer, for sft)."""
    return [
        {
            "prompt": PROMPT.format(question=row["question"]),
            "id": row["id"],
            "answers": row["answers"],
            "completion": row["answers"][0],
        }
        for row in load_qa(split)
    ]
