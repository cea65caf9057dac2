"""Held-out figures of a policy with 95% intervals, paired differences, and their JSON.

A ``Measure`` is one figure of one model on n held-out prompts: its estimate and a value per
prompt. For a mean (a reward, the length, the KL) the values are the prompts' own and the
estimate their mean; for a statistic of the whole set (distinct-n) they are its jackknife
pseudo-values (``eval.diversity``). Either way the 95% interval is

    estimate ± t_{0.975, n-1} · s / √n        (s: the standard deviation of the values)

and two models on the same prompts (or one model before and after training) compare by the
paired difference: the estimates' difference ± the same half-width over the prompt-by-prompt
differences of the values (``eval.comparison``'s reasoning: pairing removes what the prompts
share). A win rate is a mean too: of each prompt's P(the policy's completion is better).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlhfkit.eval.comparison import CONFIDENCE, t_quantile
from rlhfkit.eval.diversity import distinct_n, distinct_n_pseudo_values, self_bleu
from rlhfkit.eval.policy import PolicyEval

DISTINCT_ORDERS = (1, 2)
FORMAT = "rlhfkit.eval/1"
"""The ``format`` field of every evaluation JSON, so a reader knows which layout it holds."""


@dataclass(frozen=True)
class Measure:
    """One figure of one model: its estimate and one value per held-out prompt."""

    estimate: float
    values: list[float]


def mean_measure(values: Sequence[float]) -> Measure:
    return Measure(statistics.fmean(values), list(values))


def interval(estimate: float, values: Sequence[float]) -> dict[str, Any]:
    """``estimate`` with the 95% half-width of ``values``' mean: {mean, low, high, n}."""
    n = len(values)
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {n}")
    half = t_quantile(0.5 + CONFIDENCE / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return {"mean": estimate, "low": estimate - half, "high": estimate + half, "n": n}


def describe(measure: Measure) -> dict[str, Any]:
    return interval(measure.estimate, measure.values)


def paired(measure: Measure, base: Measure) -> dict[str, Any]:
    """``measure - base`` on the same prompts, with its paired 95% interval."""
    differences = [a - b for a, b in zip(measure.values, base.values, strict=True)]
    return interval(measure.estimate - base.estimate, differences)


def measures(result: PolicyEval) -> dict[str, Measure]:
    """Every figure of one evaluation: each score, the length, the KL (when measured), and the
    diversity of the completions."""
    figures = {name: mean_measure(values) for name, values in result.scores.items()}
    figures["length"] = mean_measure([float(n) for n in result.lengths])
    if result.kl:
        figures["kl"] = mean_measure(result.kl)
    for n in DISTINCT_ORDERS:
        figures[f"distinct_{n}"] = Measure(
            distinct_n(result.completions, n), distinct_n_pseudo_values(result.completions, n)
        )
    figures["self_bleu"] = mean_measure(self_bleu(result.completions))
    return figures


def score_wins(mine: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """Per prompt: 1 when ``mine`` scores higher, 1/2 on a tie, 0 when lower."""
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(mine, theirs, strict=True)]


def table(figures: dict[str, Measure]) -> dict[str, dict[str, Any]]:
    return {name: describe(measure) for name, measure in figures.items()}


def differences(figures: dict[str, Measure], base: dict[str, Measure]) -> dict[str, dict[str, Any]]:
    """Paired differences of the figures both hold, but the KL (already a comparison)."""
    return {
        name: paired(measure, base[name])
        for name, measure in figures.items()
        if name in base and name != "kl"
    }


def rounded(values: Sequence[float]) -> list[float]:
    """6 significant digits are plenty for the per-prompt values a reader recomputes from."""
    return [float(f"{v:.6g}") for v in values]


def write_json(path: Any, data: dict[str, Any]) -> None:
    """Write an evaluation's JSON in one step (readers see the old file or the new one)."""
    import json

    from rlhfkit.data.files import atomic_file

    with atomic_file(path) as f:
        f.write(json.dumps({"format": FORMAT, **data}, indent=1) + "\n")


def show(value: dict[str, Any] | None, signed: bool = True) -> str:
    """An interval as ``+0.123 ± 0.045`` (``—`` when there is none)."""
    if value is None:
        return "—"
    half = (value["high"] - value["low"]) / 2
    return f"{value['mean']:{'+' if signed else ''}.3f} ± {half:.3f}"
