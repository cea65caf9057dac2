"""A shared sample budget: K scored completions per prompt, and what offline methods learn from them.

Comparing a method that samples while it trains (GRPO) with methods that learn from a fixed set
(rejection-sampling fine-tuning, DPO, Chain of Hindsight) is only fair when they see the same
number of samples. So the offline methods share one sampling stage: the starting model writes
K completions for each training prompt (seeded), the task's reward scores them, and three files
come out of it:

  samples.jsonl  every completion: prompt, completion, finished (false: cut off by
                 max_new_tokens), score, sample (its index among the K), prompt_index, and the
                 prompt row's other columns (what the reward read)
  best.jsonl     the best-scoring completion of each prompt (optionally only when it scores at
                 least ``min_best_score``, e.g. a correct answer): {prompt, completion, finished, score};
                 SFT on it is rejection-sampling fine-tuning (RAFT, Dong et al. 2023; the
                 best-of-K step of Llama 2's rejection sampling, Touvron et al. 2023)
  pairs.jsonl    the best against the worst completion of each prompt when their scores differ
                 by at least ``min_margin``: {prompt, chosen, rejected, margin, chosen_finished,
                 rejected_finished}, for DPO and CoH

A prompt whose K scores all tie gives no pair: there is no preference to learn from.
``run_stage`` does all of it once per directory: a finished stage (its ``stage.json`` written
last) is reused, so a stopped comparison does not sample again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.data.files import atomic_file, write_jsonl
from rlhfkit.errors import DataError

SAMPLES, BEST, PAIRS, STAGE = "samples.jsonl", "best.jsonl", "pairs.jsonl", "stage.json"


@dataclass(frozen=True)
class SampledFiles:
    """Where one sampling stage wrote its three files."""

    samples: Path
    best: Path
    pairs: Path

    @classmethod
    def in_directory(cls, directory: str | os.PathLike) -> SampledFiles:
        directory = Path(directory)
        return cls(directory / SAMPLES, directory / BEST, directory / PAIRS)

    def exist(self) -> bool:
        return self.samples.is_file() and self.best.is_file() and self.pairs.is_file()


def sample_and_score(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    gen: Any,
    reward: Any,
    samples_per_prompt: int,
    seed: int,
) -> list[dict[str, Any]]:
    """``samples_per_prompt`` completions of every prompt row, each with the reward's score.

    Rows are ``{"prompt": ..., **meta}`` as ``data.prompts.prompt_rows`` gives them; the meta
    columns reach the reward (a verifier's item) and are kept in each sample.
    """
    from rlhfkit.data.prompts import meta_columns, prompt_text
    from rlhfkit.generation import get_backend
    from rlhfkit.rewards import compute_rewards

    if not rows:
        raise DataError("no prompts to sample from; check the task's prompts")
    repeated = [
        (index, k, row) for index, row in enumerate(rows) for k in range(samples_per_prompt)
    ]
    prompts = [row["prompt"] for _, _, row in repeated]
    was_training, cache = model.training, model.config.use_cache
    model.eval()
    model.config.use_cache = True
    try:
        rollout = get_backend(gen.backend, model, tokenizer).generate(prompts, gen, seed=seed)
    finally:
        model.config.use_cache = cache
        model.train(was_training)
    expanded = [row for _, _, row in repeated]
    scores = compute_rewards(
        reward, [prompt_text(p) for p in prompts], rollout.completions, **meta_columns(expanded)
    )
    return [
        {
            **row,
            "completion": completion,
            "finished": ended,
            "score": score,
            "sample": k,
            "prompt_index": index,
        }
        for (index, k, row), completion, ended, score in zip(
            repeated, rollout.completions, rollout.finished.tolist(), scores, strict=True
        )
    ]


def _by_prompt(samples: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[int, list[dict[str, Any]]] = {}
    for sample in samples:
        groups.setdefault(sample["prompt_index"], []).append(sample)
    return [sorted(group, key=lambda s: s["sample"]) for _, group in sorted(groups.items())]


def best_per_prompt(
    samples: Sequence[dict[str, Any]], min_score: float | None = None
) -> list[dict[str, Any]]:
    """The highest-scoring completion of each prompt (the first sample wins a tie).

    With ``min_score``, a prompt whose best falls short gives nothing: with a verifier, the
    best of K wrong answers is still wrong, and fine-tuning on it would teach the mistake
    (rejection sampling keeps correct answers only, as in STaR, Zelikman et al. 2022).
    """
    best = []
    for group in _by_prompt(samples):
        top = max(group, key=lambda s: s["score"])  # max keeps the first of equal scores
        if min_score is None or top["score"] >= min_score:
            best.append(
                {
                    "prompt": top["prompt"],
                    "completion": top["completion"],
                    "finished": top.get("finished", True),
                    "score": top["score"],
                }
            )
    return best


def pairs_per_prompt(samples: Sequence[dict[str, Any]], min_margin: float) -> list[dict[str, Any]]:
    """Best against worst completion of each prompt whose scores differ by ``min_margin`` or more.

    One pair per prompt, the widest: more pairs from the same K samples would repeat the same
    completions and weigh prompts by how spread their scores are. ``margin`` is the score gap.
    """
    if min_margin < 0:
        raise DataError(f"min_margin = {min_margin}: must be >= 0; the gap between a pair's scores")
    pairs = []
    for group in _by_prompt(samples):
        top = max(group, key=lambda s: s["score"])
        bottom = min(group, key=lambda s: s["score"])
        margin = top["score"] - bottom["score"]
        if margin > 0 and margin >= min_margin:
            pairs.append(
                {
                    "prompt": top["prompt"],
                    "chosen": top["completion"],
                    "rejected": bottom["completion"],
                    "margin": margin,
                    "chosen_finished": top.get("finished", True),
                    "rejected_finished": bottom.get("finished", True),
                }
            )
    return pairs


def write_sampled(
    directory: str | os.PathLike,
    samples: Sequence[dict[str, Any]],
    min_margin: float,
    min_best_score: float | None = None,
) -> SampledFiles:
    """Write samples.jsonl, best.jsonl and pairs.jsonl into ``directory``, each atomically.

    samples.jsonl is written last: its presence marks a complete stage (``SampledFiles.exist``
    checks all three anyway).
    """
    files = SampledFiles.in_directory(directory)
    write_jsonl(files.best, best_per_prompt(samples, min_best_score))
    write_jsonl(files.pairs, pairs_per_prompt(samples, min_margin))
    write_jsonl(files.samples, samples)
    return files


def run_stage(
    directory: str | os.PathLike,
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    gen: Any,
    reward: Any,
    samples_per_prompt: int,
    seed: int,
    min_margin: float = 0.0,
    min_best_score: float | None = None,
) -> dict[str, Any]:
    """Sample, score and write the three files into ``directory``, or reuse a finished stage.

    Returns what ``stage.json`` records: prompts, samples, best and pair counts, seed, seconds.
    """
    record = Path(directory) / STAGE
    if record.is_file() and SampledFiles.in_directory(directory).exist():
        return json.loads(record.read_text(encoding="utf-8"))
    started = time.perf_counter()
    samples = sample_and_score(model, tokenizer, rows, gen, reward, samples_per_prompt, seed)
    files = write_sampled(directory, samples, min_margin, min_best_score)
    stage = {
        "prompts": len(rows),
        "samples": len(samples),
        "best": _count_lines(files.best),
        "pairs": _count_lines(files.pairs),
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 2),
    }
    with atomic_file(record) as f:
        f.write(json.dumps(stage, indent=2) + "\n")
    return stage


def _count_lines(path: Path) -> int:
    with path.open(encoding="utf-8") as f:
        return sum(1 for _ in f)
