"""``rlhfkit generate``: sample completions for a file of prompts and write them as JSONL.

Each output row holds the prompt, the completion, token counts, whether the completion ended on
its own (EOS or a stop string) and the per-token logprobs under the sampling policy, plus the
input row's other columns (a column named like a generated field is replaced), so the file can
feed labelling, reward scoring or offline RL. A model directory with a ``conditioning.json``
(a hindsight-trained model) is asked the way it was trained; the rows keep the original prompt.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config import (
    GenCfg,
    InputFile,
    ModelCfg,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    Problem,
    default,
)
from rlhfkit.errors import RlhfkitError


@dataclass(frozen=True)
class Config:
    """Sample completions for a file of prompts and write them as JSONL."""

    prompts: InputFile = ""
    """Prompt file: .jsonl, .json, .csv, .parquet, or .txt with one prompt a line (required)."""
    prompt_field: str = "prompt"
    """Column holding each prompt: a string, or a chat (a list of role/content messages)."""
    output: str = "completions.jsonl"
    """Where to write the completions, one JSON object a line."""
    overwrite: bool = False
    """Replace the output file if it exists (otherwise an existing file is an error)."""
    limit: NonNegativeInt = 0
    """Use only the first this many prompts (0 = all)."""
    samples_per_prompt: PositiveInt = 1
    """Completions sampled for each prompt (rows carry a "sample" index when above 1)."""
    seed: NonNegativeInt = 0
    """Seed for sampling: the same seed, prompts and settings give the same completions."""
    ilql: bool = False
    """Steer decoding by beta x (Q - V) from the ILQL heads an `rlhfkit ilql` run saved in the
    model directory, with that run's --algo.beta (hf backend)."""
    ilql_beta: NonNegativeFloat = 0.0
    """With --ilql: use this beta instead of the run's (0 = the run's)."""
    model: ModelCfg = default(ModelCfg)
    """The model that writes the completions."""
    gen: GenCfg = default(GenCfg)
    """How completions are sampled."""

    def check(self) -> Iterable[Problem]:
        if not self.prompts:
            yield Problem("prompts", "", "is required; pass --prompts FILE")
        problem = _output_problem(self)
        if problem:
            yield Problem("output", self.output, problem)


def _output_problem(cfg: Config) -> str | None:
    path = Path(os.path.expanduser(cfg.output))
    if path.is_dir():
        return "is a directory; give a file name such as completions.jsonl"
    if path.exists() and not cfg.overwrite:
        return "already exists; pass --overwrite to replace it or choose another --output"
    return None


def main(cfg: Config) -> None:
    from rlhfkit.conditioning import load_conditioning
    from rlhfkit.data.files import write_jsonl
    from rlhfkit.data.prompts import load_prompts
    from rlhfkit.generation import describe_conditioning, generate_conditioned, get_backend
    from rlhfkit.models import load_causal_lm, resolve_model_dir

    # 1. read the prompts: a bad file fails before the model loads
    rows = load_prompts(os.path.expanduser(cfg.prompts), cfg.prompt_field)
    if cfg.limit:
        rows = rows[: cfg.limit]
    rows = [row for row in rows for _ in range(cfg.samples_per_prompt)]

    # 2. sample, asking a hindsight-trained model with the words it was trained on
    model, tokenizer = load_causal_lm(cfg.model)
    conditioning = load_conditioning(resolve_model_dir(cfg.model.path))
    if conditioning is not None:
        print(describe_conditioning(conditioning))
    backend = get_backend(cfg.gen.backend, model, tokenizer)
    started = time.perf_counter()
    with steered(backend, model, cfg):
        rollout = generate_conditioned(
            backend, [row["prompt"] for row in rows], cfg.gen, cfg.seed, conditioning
        )
    seconds = time.perf_counter() - started

    # 3. write every row at once, atomically; the output may have appeared while we sampled
    problem = _output_problem(cfg)
    if problem:
        raise RlhfkitError(f"output {cfg.output!r} {problem}")
    prompt_tokens = rollout.prompt_mask.sum(dim=1).tolist()
    completion_tokens = rollout.response_lengths.tolist()
    finished = rollout.finished.tolist()
    logprobs = rollout.logprobs.tolist()
    records = []
    for i, row in enumerate(rows):
        record = {
            **row,
            "completion": rollout.completions[i],
            "prompt_tokens": prompt_tokens[i],
            "completion_tokens": completion_tokens[i],
            "finished": finished[i],
            "model": cfg.model.path,
            # 6 decimals: float32 holds about 7 significant digits
            "logprobs": [round(x, 6) for x in logprobs[i][: completion_tokens[i]]],
        }
        if cfg.samples_per_prompt > 1:
            record["sample"] = i % cfg.samples_per_prompt
        records.append(record)
    write_jsonl(os.path.expanduser(cfg.output), records)

    total = sum(completion_tokens)
    print(
        f"wrote {len(records)} completions to {cfg.output}: {total} tokens in {seconds:.1f} s "
        f"({total / seconds:.1f} tokens/s), {sum(finished)} of {len(records)} ended on their own"
    )


@contextlib.contextmanager
def steered(backend: Any, model: Any, cfg: Config) -> Iterator[None]:
    """Decode with ILQL's advantage steering when ``--ilql`` asks for it (hf backend only)."""
    if not cfg.ilql:
        yield
        return
    from rlhfkit.models import resolve_model_dir
    from rlhfkit.models.ilql_heads import steering

    with steering(backend, model, resolve_model_dir(cfg.model.path), cfg.ilql_beta):
        yield
