"""Method-against-base tables for ``rlhfkit compare``: scores with 95% intervals, KL, length, time.

Every method of a task is evaluated on the same held-out prompts, once per training seed. The
unit of the interval is the prompt: each prompt's score is averaged over the seeds first, so a
prompt counts once however many seeds ran, and the seeds' disagreement enters through those
means. Over the n prompt means the interval is Student's t,

    mean ± t_{0.975, n-1} · s / √n       (s: the sample standard deviation of the prompt means)

and whether a method beats the base is read from the paired differences, prompt by prompt
(method's prompt mean - base's prompt mean), with the same t-interval: the method beats the
base when the whole interval of the difference lies above 0. Pairing removes what the prompts
share (an opening that is hard to make positive is hard for every method), so it is the
sharper and the right test for "better on these prompts"; it is not a claim about other seeds
of training, which the interval only sees through the seeds that ran.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean and its two-sided confidence interval over ``n`` values."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@cache
def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile (> 0.5) of Student's t with ``df`` degrees of freedom.

    The standard library has no t distribution, so this integrates its density,
    Γ((ν+1)/2) / (√(νπ) Γ(ν/2)) · (1 + x²/ν)^(-(ν+1)/2), from 0 by Simpson's rule and bisects
    for the point where the integral reaches ``probability - 0.5``: exact to about 1e-9.
    """
    if not 0.5 < probability < 1 or df < 1:
        raise ValueError(f"t_quantile({probability}, {df}): needs 0.5 < probability < 1, df >= 1")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    def mass(t: float, steps: int = 2000) -> float:  # ∫_0^t density, Simpson (steps even)
        h = t / steps
        inner = sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
        return h / 3 * (density(0.0) + inner + density(t))

    target = probability - 0.5
    low, high = 0.0, 1.0
    while mass(high) < target:
        low, high = high, high * 2
    while high - low > 1e-10 * max(1.0, high):
        middle = (low + high) / 2
        low, high = (middle, high) if mass(middle) < target else (low, middle)
    return (low + high) / 2


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Student's t confidence interval for the mean of ``values`` (at least 2 of them)."""
    n = len(values)
    if n < 2:
        raise ValueError(f"a confidence interval needs at least 2 values, got {n}")
    mean = statistics.fmean(values)
    half = t_quantile(0.5 + confidence / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


@dataclass(frozen=True)
class MethodResult:
    """One method, one seed: what ``compare`` stores per evaluation (lists in prompt order)."""

    method: str
    seed: int
    scores: list[float]
    kl: list[float]
    lengths: list[int]
    seconds: float | None  # training + the shared sampling stage it used; None for the base


@dataclass(frozen=True)
class Row:
    """One method's line in a task's table, pooled over its seeds."""

    method: str
    seeds: int
    score: Interval
    vs_base: Interval | None  # paired difference to the base, None for the base itself
    beats_base: bool | None
    kl: float  # nats per completion
    length: float  # tokens per completion
    seconds: float | None  # mean per seed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def prompt_means(results: Sequence[MethodResult]) -> list[float]:
    """Each held-out prompt's score averaged over the seeds' evaluations."""
    counts = {len(r.scores) for r in results}
    if len(counts) != 1:
        raise ValueError(f"{results[0].method}: seeds scored different numbers of prompts {counts}")
    return [statistics.fmean(column) for column in zip(*(r.scores for r in results), strict=True)]


def summarise(results: dict[str, Sequence[MethodResult]], base: str = "base") -> list[Row]:
    """A table row per method (in the order given); paired against ``base`` when it is there."""
    base_means = prompt_means(results[base]) if base in results else None
    rows = []
    for method, runs in results.items():
        means = prompt_means(runs)
        vs_base = None
        if base_means is not None and method != base:
            if len(means) != len(base_means):
                raise ValueError(f"{method} scored {len(means)} prompts, {base} {len(base_means)}")
            vs_base = t_interval([m - b for m, b in zip(means, base_means, strict=True)])
        seconds = [r.seconds for r in runs]
        kl = [value for r in runs for value in r.kl]
        lengths = [value for r in runs for value in r.lengths]
        rows.append(
            Row(
                method=method,
                seeds=len(runs),
                score=t_interval(means),
                vs_base=vs_base,
                beats_base=None if vs_base is None else vs_base.low > 0,
                kl=statistics.fmean(kl) if kl else 0.0,
                length=statistics.fmean(lengths),
                seconds=None if None in seconds else statistics.fmean(seconds),
            )
        )
    return rows


def render_markdown(title: str, rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    """A task's table as markdown: a heading, notes, then one line per method."""
    lines = [
        f"### {title}",
        "",
        *notes,
        *([""] if notes else []),
        "| method | held-out score (95% CI) | vs base (95% CI, paired) | beats base | "
        "KL to base (nats) | length (tokens) | wall time (s) | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        vs_base = "—" if row.vs_base is None else _interval(row.vs_base)
        beats = "—" if row.beats_base is None else ("yes" if row.beats_base else "no")
        seconds = (
            "—" if row.seconds is None else f"{row.seconds:.{0 if row.seconds >= 100 else 1}f}"
        )
        lines.append(
            f"| {row.method} | {_interval(row.score)} | {vs_base} | {beats} | "
            f"{row.kl:.2f} | {row.length:.1f} | {seconds} | {row.seeds} |"
        )
    return "\n".join(lines) + "\n"


def _interval(interval: Interval) -> str:
    return f"{interval.mean:+.3f} ± {interval.half_width:.3f}"
