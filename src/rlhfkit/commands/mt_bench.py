"""``rlhfkit mt-bench``: MT-Bench's two-turn questions, graded 1-10 by a judge, with win rates.

The model answers both turns of each question (the second with its own first answer in
context) and a judge grades each turn with MT-Bench's prompts (``rlhfkit.eval.mtbench``); with
``--baseline`` the baseline answers too, is graded the same way, and each pair is compared in
both orders. ``--baseline gpt-4`` takes GPT-4's reference answers (the 30 math, reasoning and
coding questions) as the baseline: a judge that cannot prefer them is no judge to trust.

Written into ``--output``: ``answers.jsonl`` (and ``baseline_answers.jsonl``) as soon as they
are generated, ``judgments.jsonl`` (every reply of the judge and what was read from it) and
``mt_bench.json`` (the figures), each file atomically.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.config import (
    GenCfg,
    ModelCfg,
    NonNegativeInt,
    PositiveInt,
    Problem,
    default,
    model_problem,
)
from rlhfkit.data.mtbench import CATEGORIES
from rlhfkit.errors import ConfigError

REFERENCE_BASELINE = "gpt-4"
FILES = ("answers.jsonl", "baseline_answers.jsonl", "judgments.jsonl", "mt_bench.json")


@dataclass(frozen=True)
class Config:
    """MT-Bench: two-turn answers graded 1-10 by a judge, and the win rate against a baseline."""

    model: ModelCfg = default(ModelCfg)
    """The model evaluated (a run's model/ directory, any model directory, or an alias)."""
    baseline: str = ""
    """The model it is compared with pairwise, or gpt-4 (GPT-4's reference answers, on the
    math, reasoning and coding questions only); empty: none."""
    judge: str = "smollm2"
    """The judge: a local model (alias or directory; writes only its verdict) or
    MODEL@http://HOST/v1, an OpenAI-compatible server (key in $OPENAI_API_KEY) that gets
    MT-Bench's prompts as they are."""
    categories: tuple[str, ...] = ()
    """Only these categories (repeat the flag): writing, roleplay, reasoning, math, coding,
    extraction, stem, humanities; empty: all 8."""
    per_category: PositiveInt = 10
    """The first this many questions of each category (MT-Bench has 10 per category)."""
    category_temperatures: bool = True
    """Sample each category at MT-Bench's temperature (writing, roleplay 0.7; stem, humanities
    0.1; the others greedy); off: gen.temperature for every question."""
    seed: NonNegativeInt = 0
    """Sampling seed, the same for both models."""
    gen: GenCfg = field(
        default_factory=lambda: GenCfg(max_new_tokens=256, batch_size=8, chat_template="on")
    )
    """How both models answer (MT-Bench itself allows 1024 new tokens per turn)."""
    answers: str = ""
    """Grade the answers in this answers.jsonl of an earlier run (with another judge or
    baseline) instead of generating them; only its questions are graded."""
    judge_max_tokens: PositiveInt = 2048
    """Most tokens an endpoint judge writes per reply, its explanation and verdict together."""
    output: str = "mt-bench"
    """The directory the answers, judgments and figures are written into."""
    overwrite: bool = False
    """Replace the files of an earlier run in --output."""

    def check(self) -> Iterable[Problem]:
        if self.baseline not in ("", REFERENCE_BASELINE) and (
            message := model_problem(self.baseline)
        ):
            yield Problem("baseline", self.baseline, f"{message}, or give gpt-4")
        for category in self.categories:
            if category not in CATEGORIES:
                yield Problem("categories", category, f"is none of {', '.join(CATEGORIES)}")
        if self.per_category > 10:
            yield Problem("per_category", self.per_category, "exceeds MT-Bench's 10; give 1-10")
        if self.answers and not Path(os.path.expanduser(self.answers)).is_file():
            yield Problem(
                "answers", self.answers, "is no file; give an earlier run's answers.jsonl"
            )
        if problem := _output_problem(self):
            yield Problem("output", self.output, problem)


def _output_problem(cfg: Config) -> str | None:
    directory = Path(os.path.expanduser(cfg.output))
    if directory.exists() and not directory.is_dir():
        return "is a file; give a directory"
    if not cfg.overwrite and any((directory / name).exists() for name in FILES):
        return "holds an earlier run; pass --overwrite to replace it or choose another --output"
    return None


def main(cfg: Config) -> None:
    from rlhfkit.conditioning import load_conditioning
    from rlhfkit.data.files import write_jsonl
    from rlhfkit.data.mtbench import load_judge_prompts, load_questions
    from rlhfkit.eval import heldout
    from rlhfkit.eval import mtbench as bench
    from rlhfkit.generation import get_backend
    from rlhfkit.models import load_causal_lm, resolve_model_dir
    from rlhfkit.rewards.judge import load_judge

    # 1. questions and prompts; a bad judge spec fails before any model loads
    questions = select(load_questions(), cfg)
    prompts = load_judge_prompts()
    judge = load_judge(cfg.judge, device=cfg.model.device)
    out = Path(os.path.expanduser(cfg.output))

    # 2. two-turn answers of the model (and the baseline), saved before any grading
    def answer(path: str) -> list[bench.Answer]:
        model, tokenizer = load_causal_lm(dataclasses.replace(cfg.model, path=path))
        backend = get_backend(cfg.gen.backend, model, tokenizer)
        conditioning = load_conditioning(resolve_model_dir(path))
        return bench.generate_answers(
            backend, questions, cfg.gen, cfg.seed, conditioning, cfg.category_temperatures
        )

    if cfg.answers:
        given = bench.read_answers(Path(os.path.expanduser(cfg.answers)))
        questions = [q for q in questions if q.question_id in given]
        if not questions:
            raise ConfigError(f"answers = {cfg.answers!r}: answers none of the questions chosen")
        answers = [given[q.question_id] for q in questions]
    else:
        answers = answer(cfg.model.path)
    write_jsonl(out / "answers.jsonl", (dataclasses.asdict(a) for a in answers))
    baseline = None
    if cfg.baseline == REFERENCE_BASELINE:
        baseline = [bench.Answer(q.question_id, q.category, q.reference) for q in questions]
    elif cfg.baseline:
        baseline = answer(cfg.baseline)
    if baseline is not None:
        write_jsonl(out / "baseline_answers.jsonl", (dataclasses.asdict(a) for a in baseline))

    # 3. grading: each turn 1-10; against the baseline, each pair in both orders
    replier = bench.judge_replier(judge, cfg.judge_max_tokens, cfg.seed)
    graded = bench.grade(replier, prompts, questions, answers)
    report: dict[str, Any] = {
        "model": cfg.model.path,
        "answers": cfg.answers or None,
        "baseline": cfg.baseline or None,
        "judge": judge.name,
        "questions": [q.question_id for q in questions],
        "gen": _plain(cfg.gen),
        "category_temperatures": cfg.category_temperatures,
        "score": bench.summarise(graded, "rating"),
    }
    judgments = [{"model": "model", **r} for r in graded]
    if baseline is not None:
        base_graded = bench.grade(replier, prompts, questions, baseline)
        pairs = bench.compare(replier, prompts, questions, answers, baseline)
        report["baseline_score"] = bench.summarise(base_graded, "rating")
        report["win_rate"] = bench.summarise(pairs, "score")
        report["position_consistency"] = bench.position_consistency(pairs)
        judgments += [{"model": "baseline", **r} for r in base_graded]
        judgments += [{"model": "pair", **r} for r in pairs]

    # 4. the files (each atomically) and the table
    write_jsonl(out / "judgments.jsonl", judgments)
    heldout.write_json(out / "mt_bench.json", report)
    print_report(report)
    print(f"written to {out}")


def select(questions: list[Any], cfg: Config) -> list[Any]:
    """The questions asked: the chosen categories' first ``per_category`` each, and with the
    gpt-4 baseline only those that have its reference answers."""
    taken: dict[str, int] = {}
    chosen = []
    for question in questions:
        if cfg.categories and question.category not in cfg.categories:
            continue
        if cfg.baseline == REFERENCE_BASELINE and not question.reference:
            continue
        if taken.get(question.category, 0) < cfg.per_category:
            taken[question.category] = taken.get(question.category, 0) + 1
            chosen.append(question)
    if not chosen:
        raise ConfigError(
            f"categories = {list(cfg.categories)}: no question to ask with baseline "
            f"{cfg.baseline!r}; gpt-4 answers only math, reasoning and coding"
        )
    return chosen


def _plain(group: Any) -> dict[str, Any]:
    from rlhfkit import config_io

    return config_io.to_dict(group)


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from rlhfkit.eval.heldout import show

    def cell(value: dict[str, Any] | None) -> str:
        if value is None:
            return "—"
        return show(value, signed=False) if "low" in value else f"{value['mean']:.3f} (n=1)"

    columns = [("score", "model 1-10")]
    if report["baseline"]:
        columns += [("baseline_score", "baseline 1-10"), ("win_rate", "win rate")]
    table = Table(title=f"MT-Bench: {report['model']}, judged by {report['judge']} (95% intervals)")
    table.add_column("")
    for _, title in columns:
        table.add_column(title, justify="right")
    rows = [("overall", lambda s: s["overall"])]
    rows += [(f"turn {t}", lambda s, t=t: s["turns"][t]) for t in ("1", "2")]
    rows += [(c, lambda s, c=c: s["categories"][c]) for c in report["score"]["categories"]]
    for name, pick in rows:
        table.add_row(name, *(cell(pick(report[key])) for key, _ in columns))
    table.add_row(
        "unparseable", *(f"{report[k]['unparseable']} of {report[k]['judged']}" for k, _ in columns)
    )
    console = Console()
    console.print(table)
    if report.get("position_consistency"):
        console.print(
            "the judge's verdicts agree across both orders in "
            f"{cell(report['position_consistency'])} of pairs"
        )
