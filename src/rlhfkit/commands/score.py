"""``rlhfkit score``: score the completions in a file with any reward and write the scores back.

Every column of a row other than the prompt and completion goes to the reward as per-item meta
(a reasoning-gym verifier reads its ``entry`` from there). All rows are scored before anything
is written, and the file is then replaced in one atomic step: a reward that fails on row 900
leaves the input exactly as it was.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config import InputFile, PositiveInt, Problem
from rlhfkit.errors import DataError, RewardError


@dataclass(frozen=True)
class Config:
    """Score completions in a file with a registered reward and write the scores back."""

    input: InputFile = ""
    """JSONL file of rows with a completion (and usually a prompt) each, e.g. from
    `rlhfkit generate` (required)."""
    reward: str = "sentiment"
    """Reward spec: a registered name (sentiment, vader, length:N, format:REGEX,
    reasoning_gym:TASK), path/to/file.py:fn or package.module:fn."""
    output: str = ""
    """Where to write the scored rows as JSONL; empty rewrites the input file (atomically)."""
    prompt_field: str = "prompt"
    """Column holding each prompt; empty if the file has none (the reward then sees empty
    prompts)."""
    completion_field: str = "completion"
    """Column holding each completion to score."""
    score_field: str = "reward"
    """Column the scores are written to (replaced if the rows already have it)."""
    batch_size: PositiveInt = 64
    """Completions passed to the reward in one call."""

    def check(self) -> Iterable[Problem]:
        from rlhfkit.rewards import spec_problems

        if not self.input:
            yield Problem("input", "", "is required; pass --input FILE.jsonl")
        elif not self.output and not _is_jsonl(self.input):
            yield Problem(
                "output",
                "",
                f"is empty, so the input would be rewritten, but "
                f"{self.input} is not JSONL; pass --output FILE.jsonl",
            )
        if self.output and not _is_jsonl(self.output):
            yield Problem("output", self.output, "scores are written as JSONL; give a .jsonl path")
        if self.output and Path(os.path.expanduser(self.output)).is_dir():
            yield Problem("output", self.output, "is a directory; give a file name")
        for name in ("completion_field", "score_field"):
            if not getattr(self, name):
                yield Problem(name, "", "is empty; give a column name")
        if self.score_field in (self.prompt_field, self.completion_field):
            yield Problem(
                "score_field",
                self.score_field,
                "would overwrite the prompt or completion column; choose another name",
            )
        for message in spec_problems(self.reward):
            yield Problem("reward", self.reward, message)


def _is_jsonl(path: str) -> bool:
    return Path(path).suffix.lower() == ".jsonl"


def main(cfg: Config) -> None:
    from rlhfkit.data.files import prompts_and_completions, read_rows, write_jsonl
    from rlhfkit.progress import progress
    from rlhfkit.rewards import RewardItemError, compute_rewards, load_reward

    # 1. read every row and check the columns before the reward (maybe a model) loads
    source = os.path.expanduser(cfg.input)
    rows = read_rows(source)
    if not rows:
        raise DataError(f"{cfg.input}: no rows to score")
    prompts, completions = prompts_and_completions(
        rows, cfg.input, cfg.prompt_field, cfg.completion_field
    )
    meta = _meta_columns(rows, exclude={cfg.prompt_field, cfg.completion_field, cfg.score_field})

    # 2. score in batches; compute_rewards names the row that breaks a reward
    reward = load_reward(cfg.reward)
    scores: list[float] = []
    with progress(f"scoring with {reward.name}", len(rows)) as (bar, task):
        for start in range(0, len(rows), cfg.batch_size):
            end = start + cfg.batch_size
            batch_meta = {key: values[start:end] for key, values in meta.items()}
            try:
                scores += compute_rewards(
                    reward, prompts[start:end], completions[start:end], **batch_meta
                )
            except RewardItemError as e:  # name the row of the file, not the item of the batch
                raise RewardError(e.describe(f"row {start + e.item + 1} of {cfg.input}")) from e
            bar.advance(task, len(scores) - start)

    # 3. write all rows at once, atomically (the input itself unless --output is given)
    output = os.path.expanduser(cfg.output) if cfg.output else source
    write_jsonl(
        output, ({**row, cfg.score_field: score} for row, score in zip(rows, scores, strict=True))
    )
    print(
        f"scored {len(scores)} completions with {reward.name} -> {output} "
        f"(column {cfg.score_field!r}): mean {statistics.fmean(scores):.4f}, "
        f"min {min(scores):.4f}, max {max(scores):.4f}"
    )


def _meta_columns(rows: list[dict[str, Any]], exclude: set[str]) -> dict[str, list[Any]]:
    """Every other column as a per-row list; a row without a column gives None there."""
    names = dict.fromkeys(key for row in rows for key in row if key not in exclude)
    return {name: [row.get(name) for row in rows] for name in names}
