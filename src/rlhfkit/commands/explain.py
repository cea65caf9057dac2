"""``rlhfkit explain``: which words or tokens moved a reward, as a highlighted page and JSON.

A reward model (``rm:DIR``) is explained with integrated gradients over its input embeddings;
any other reward (a rule, a verifier, a judge, the sentiment head) by leaving each word out in
turn (``rlhfkit.eval.attribution`` has the equations). The output directory gets
``attributions.json`` (every span and its value, the scores, the method) and
``attributions.html`` (the texts shaded by attribution), each written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit.config import InputFile, PositiveInt, Problem
from rlhfkit.errors import ConfigError, DataError, RlhfkitError

JSON_FILE, HTML_FILE = "attributions.json", "attributions.html"


@dataclass(frozen=True)
class Config:
    """Show which words or tokens of completions moved a reward (integrated gradients or
    leave-one-out)."""

    input: InputFile = ""
    """JSONL (or CSV, Parquet) file of rows with a completion and usually a prompt, e.g. from
    `rlhfkit generate` (required)."""
    reward: str = "sentiment"
    """Reward spec to explain: rm:DIR (a reward model), or any registered reward or
    path/to/file.py:fn."""
    method: Literal["auto", "integrated-gradients", "leave-one-out"] = "auto"
    """auto: integrated gradients for a reward model (rm:DIR), leave-one-out otherwise.
    integrated-gradients needs rm:DIR; leave-one-out takes any reward."""
    part: Literal["completion", "both"] = "completion"
    """Explain the completion's words or tokens (the prompt held fixed), or the prompt's too."""
    steps: PositiveInt = 32
    """Integrated gradients: points on the path from the baseline to the input (more: a
    smaller convergence delta, slower)."""
    max_rows: PositiveInt = 20
    """Explain the first this many rows of the input."""
    prompt_field: str = "prompt"
    """Column holding each prompt; empty if the file has none."""
    completion_field: str = "completion"
    """Column holding each completion."""
    output_dir: str = "explain"
    """Directory for attributions.json and attributions.html."""
    overwrite: bool = False
    """Replace attributions already in output_dir."""

    def check(self) -> Iterable[Problem]:
        from rlhfkit.rewards import spec_problems

        if not self.input:
            yield Problem("input", "", "is required; pass --input FILE.jsonl")
        if not self.completion_field:
            yield Problem("completion_field", "", "is empty; give a column name")
        if self.method == "integrated-gradients" and not self.reward.startswith("rm:"):
            yield Problem(
                "method",
                self.method,
                f"needs a differentiable reward model, and --reward {self.reward!r} is not "
                "rm:DIR; use --method leave-one-out (any reward) or --reward rm:DIR",
            )
        out = Path(os.path.expanduser(self.output_dir))
        if out.is_file():
            yield Problem("output_dir", self.output_dir, "is a file; give a directory")
        elif not self.overwrite and any((out / name).exists() for name in (JSON_FILE, HTML_FILE)):
            yield Problem(
                "output_dir",
                self.output_dir,
                "holds attributions already; pass --overwrite to replace them or choose "
                "another --output_dir",
            )
        for message in spec_problems(self.reward):
            yield Problem("reward", self.reward, message)


def main(cfg: Config) -> None:
    from rlhfkit.data.files import atomic_file, prompts_and_completions, read_rows
    from rlhfkit.eval import attribution
    from rlhfkit.progress import progress
    from rlhfkit.rewards import load_reward

    try:
        import captum  # noqa: F401
    except ImportError as e:
        raise RlhfkitError(f"explain needs Captum ({e}); pip install 'rlhfkit[explain]'") from None

    # 1. the rows and their columns, checked before a model loads
    rows = read_rows(os.path.expanduser(cfg.input))[: cfg.max_rows]
    if not rows:
        raise DataError(f"{cfg.input}: no rows to explain")
    prompts, completions = prompts_and_completions(
        rows, cfg.input, cfg.prompt_field, cfg.completion_field
    )

    # 2. the method, and what it explains
    gradients = cfg.method == "integrated-gradients" or (
        cfg.method == "auto" and cfg.reward.startswith("rm:")
    )
    if gradients:
        from rlhfkit.models.reward_model import load_reward_model

        model = load_reward_model(cfg.reward.removeprefix("rm:"))
        if not model.tokenizer.is_fast:
            raise ConfigError(
                f"reward = {cfg.reward!r}: its tokenizer has no character offsets (not a fast "
                "tokenizer), which integrated gradients needs; use --method leave-one-out"
            )

        def explain(row: dict, prompt: str, completion: str) -> attribution.Explanation:
            return attribution.integrated_gradients(model, prompt, completion, cfg.part, cfg.steps)
    else:
        reward = load_reward(cfg.reward)
        skip = {cfg.prompt_field, cfg.completion_field}

        def explain(row: dict, prompt: str, completion: str) -> attribution.Explanation:
            meta = {key: value for key, value in row.items() if key not in skip}
            return attribution.leave_one_out(reward, prompt, completion, meta, cfg.part)

    # 3. explain each row, then write both files at once
    explanations = []
    with progress(f"explaining {cfg.reward}", len(rows)) as (bar, task):
        for row, prompt, completion in zip(rows, prompts, completions, strict=True):
            explanations.append(explain(row, prompt, completion))
            bar.advance(task)
    out = Path(os.path.expanduser(cfg.output_dir))
    with atomic_file(out / JSON_FILE) as f:
        json.dump(
            {"reward": cfg.reward, "rows": [e.row() for e in explanations]},
            f,
            indent=1,
            ensure_ascii=False,
        )
    with atomic_file(out / HTML_FILE) as f:
        f.write(attribution.html_page(explanations, f"What moved {cfg.reward}"))
    print(f"explained {len(explanations)} rows -> {out / HTML_FILE}, {out / JSON_FILE}")
