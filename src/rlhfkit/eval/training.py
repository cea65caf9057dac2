"""Held-out evaluation inside a training run: before the first step, every ``eval.every`` steps
and at the end, on the same prompts with the same sampling seed each time.

Each evaluation samples the policy once per held-out prompt, scores the samples with the
training reward (``reward``) and the independent judge when one is set (``judge``), and measures
the length, the KL to the starting model (when the loop keeps one) and the diversity
(``eval.heldout.measures``). Its means go to the run's metrics as ``eval/<figure>``; every
evaluation, with its 95% intervals, its per-prompt values, its completions and its paired change
since the first, goes to ``heldout.json`` in the run directory, rewritten atomically after each
one. The summary holds the first and the last with intervals, and the paired change between them.

Under torchrun every rank samples an equal share of the prompts (the sampling forwards are
collectives, so the shares must be equal: the prompts are cut to a multiple of the world size),
the shares are gathered in rank order, and rank 0 writes the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from rlhfkit import distributed
from rlhfkit.config import GenCfg
from rlhfkit.data.prompts import prompt_text
from rlhfkit.errors import ConfigError
from rlhfkit.eval.heldout import Measure, differences, measures, rounded, table, write_json
from rlhfkit.eval.policy import PolicyEval, evaluate_policy

HELD_OUT_FILE = "heldout.json"
SEED_OFFSET = 17
"""Held-out sampling draws from its own seed (the run's + this), never from a training step's."""


class TrainingEval:
    """The held-out evaluations of one run; ``evaluate`` on every rank when ``due``."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        gen: GenCfg,
        rewards: dict[str, Any],
        seed: int,
        every: int,
        total_steps: int,
        run_dir: Path,
        reference: Callable[[], AbstractContextManager[Any]] | None = None,
        conditioning: Any = None,
        backend: Any = None,
    ):
        ranks = distributed.world_size()
        rows = rows[: len(rows) - len(rows) % ranks]
        if len(rows) < 2:
            raise ConfigError(
                f"data.eval_size: {len(rows)} held-out prompt(s) over {ranks} rank(s) give no "
                "interval; evaluate 2 or more (a multiple of the ranks), or 0 for none"
            )
        self.rows, self.gen, self.rewards = rows, gen, rewards
        self.seed = (seed + SEED_OFFSET) * 1_000_003 + distributed.rank()
        self.every, self.total_steps = every, total_steps
        self.path = run_dir / HELD_OUT_FILE
        self.reference, self.conditioning, self.backend = reference, conditioning, backend
        self.evaluations: list[dict[str, Any]] = []
        self.first: dict[str, Measure] | None = None

    def due(self, step: int) -> bool:
        """At the end, and every ``every`` steps (0: only at the end; the start is the loop's)."""
        return step == self.total_steps or bool(self.every and step % self.every == 0)

    def evaluate(self, model: Any, tokenizer: Any, step: int) -> dict[str, float]:
        """Evaluate ``model`` as it is at ``step``: its metrics (``eval/<figure>``: the means)."""
        share = self.rows[distributed.share(len(self.rows))]
        mine = evaluate_policy(
            model,
            tokenizer,
            share,
            self.gen,
            self.rewards,
            self.seed,
            self.reference,
            self.conditioning,
            self.backend,
        )
        result = _joined(distributed.gather_objects(mine))
        figures = measures(result)
        if self.first is None:
            self.first = figures
        self.evaluations = [e for e in self.evaluations if e["step"] < step]
        self.evaluations.append(
            {
                "step": step,
                "figures": table(figures),
                "change": differences(figures, self.first) if self.evaluations else {},
                "values": {name: rounded(m.values) for name, m in figures.items()},
                "completions": result.completions,
            }
        )
        if distributed.is_main():
            write_json(self.path, self.document())
        return {f"eval/{name}": measure.estimate for name, measure in figures.items()}

    def document(self) -> dict[str, Any]:
        return {
            "prompts": [prompt_text(row["prompt"]) for row in self.rows],
            "scores": {name: getattr(fn, "name", name) for name, fn in self.rewards.items()},
            "every": self.every,
            "evaluations": self.evaluations,
        }

    def resume(self, step: int) -> None:
        """Take back the evaluations up to ``step`` (the resumed checkpoint's) from the file."""
        if not self.path.is_file():
            return
        kept = json.loads(self.path.read_text(encoding="utf-8"))["evaluations"]
        self.evaluations = [e for e in kept if e["step"] <= step]
        if self.evaluations:
            first = self.evaluations[0]
            self.first = {
                name: Measure(value["mean"], first["values"][name])
                for name, value in first["figures"].items()
            }

    def summary(self) -> dict[str, Any]:
        """The first evaluation and the last, with 95% intervals, and the paired change."""
        if not self.evaluations:
            return {}
        first, last = self.evaluations[0], self.evaluations[-1]
        return {
            "prompts": len(self.rows),
            "steps": [first["step"], last["step"]],
            "before": first["figures"],
            "after": last["figures"],
            "change": last["change"],
        }


def _joined(parts: list[PolicyEval]) -> PolicyEval:
    """The ranks' shares, in rank order: the whole held-out set as one process would see it."""
    if len(parts) == 1:
        return parts[0]
    return PolicyEval(
        completions=[c for part in parts for c in part.completions],
        scores={name: [s for part in parts for s in part.scores[name]] for name in parts[0].scores},
        lengths=[n for part in parts for n in part.lengths],
        kl=[k for part in parts for k in part.kl],
    )
