"""``rlhfkit eval``: a model on held-out prompts, alone or against a baseline, with 95% intervals.

Both models answer the same prompts with the same sampling seed. The figures (``eval.heldout``):
each reward's mean score, each judge's (2 P(good) - 1, as the ``judge:SPEC`` reward), the
completion length, distinct-1/2 and self-BLEU, pass@k with several samples per prompt
(``eval.pass_at_k``), and against the baseline the KL of the model's completions to it, the
paired difference of every figure, and the win rate: by each reward (a higher score wins, a tie
counts half) and by each judge asked pairwise, both orders averaged so that a judge's position
bias cancels. The JSON holds every figure and every prompt's pair of
completions with their scores, for a report to read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlhfkit.config import (
    GenCfg,
    ModelCfg,
    NonNegativeInt,
    PositiveInt,
    Problem,
    default,
    is_run_dir,
    model_problem,
)
from rlhfkit.errors import ConfigError, RlhfkitError

OUTPUT_NAME = "eval.json"
LOGLIK = "choice_loglik"  # the figure --loglik adds


@dataclass(frozen=True)
class Config:
    """Evaluate a model on held-out prompts against a baseline: scores, win rate, KL, diversity."""

    model: ModelCfg = default(ModelCfg)
    """The model evaluated (a run's model/ directory, any model directory, or an alias)."""
    baseline: str = ""
    """The model it is compared with (often the one training started from); empty: none."""
    prompts: str = "vader:movies"
    """Held-out prompts: a file (.jsonl/.csv/.parquet/.txt), a dataset saved by save_to_disk,
    or a built-in set (vader:movies, reasoning_gym:TASK ...), whose `split` is read."""
    prompt_field: str = "prompt"
    """Column holding the prompt in a prompt file."""
    split: Literal["test", "validation"] = "test"
    """The split of a built-in set (a file is read whole)."""
    size: NonNegativeInt = 64
    """Evaluate the first this many prompts (0 = all)."""
    reward: tuple[str, ...] = ("sentiment",)
    """Rewards scoring the completions (repeat the flag for several): registered names
    (sentiment, vader, length:N, judge:MODEL ...) or file.py:fn."""
    judge: tuple[str, ...] = ()
    """LLM judges (repeat for several): a local model (alias or directory) or
    MODEL@http://HOST/v1 (an OpenAI-compatible server, key in $OPENAI_API_KEY). Each scores
    every completion and, with a baseline, picks the better of each pair."""
    loglik: bool = False
    """Also score multiple-choice prompts (rows with `choices` and a gold `answer`, as mmlu:*)
    by log-likelihood: the most likely option is the model's answer, nothing generated; the
    figure choice_loglik is its accuracy."""
    seed: NonNegativeInt = 0
    """Sampling seed, the same for both models."""
    gen: GenCfg = field(
        default_factory=lambda: GenCfg(max_new_tokens=24, batch_size=16, chat_template="off")
    )
    """How both models sample."""
    output: str = ""
    """Where to write the JSON; empty: eval.json in the model's run directory when the model
    is a run's model/, else eval.json here."""
    overwrite: bool = False
    """Replace the output file if it exists."""
    samples: PositiveInt = 3
    """Sample pairs printed at the end (the JSON holds all of them)."""
    n_samples: PositiveInt = 1
    """Completions sampled per prompt: above 1, each figure is the mean over a prompt's samples
    (for a pass/fail reward such as code, pass@1) with intervals over prompts."""
    pass_at: tuple[PositiveInt, ...] = ()
    """k of pass@k (repeat the flag for several, each at most n_samples): the chance one of k
    samples passes (scores 1.0), by the unbiased estimator over n_samples per prompt."""

    def check(self) -> Iterable[Problem]:
        from rlhfkit.rewards import spec_problems

        if self.baseline and (message := model_problem(self.baseline)):
            yield Problem("baseline", self.baseline, message)
        if not self.reward and not self.judge:
            yield Problem("reward", "", "is empty and no --judge is given; name one of them")
        for spec in self.reward:
            for message in spec_problems(spec):
                yield Problem("reward", spec, message)
        if self.size == 1:
            yield Problem("size", 1, "gives no interval; evaluate 2 prompts or more")
        for k in self.pass_at:
            if k > self.n_samples:
                yield Problem("pass_at", k, f"exceeds n_samples ({self.n_samples}); raise it")
        if self.n_samples > 1 and self.gen.temperature == 0:
            yield Problem(
                "n_samples",
                self.n_samples,
                "with greedy decoding (gen.temperature 0) the samples are all alike; sample "
                "with a temperature above 0, e.g. --gen.temperature 0.8",
            )
        if problem := _output_problem(self):
            yield Problem("output", self.output, problem)


def output_path(cfg: Config) -> Path:
    if cfg.output:
        return Path(os.path.expanduser(cfg.output))
    model_dir = Path(os.path.expanduser(cfg.model.path))
    if model_dir.name == "model" and is_run_dir(model_dir.parent):
        return model_dir.parent / OUTPUT_NAME
    return Path(OUTPUT_NAME)


def _output_problem(cfg: Config) -> str | None:
    path = output_path(cfg)
    if path.is_dir():
        return f"{path} is a directory; give a file name such as eval.json"
    if path.exists() and not cfg.overwrite:
        return f"{path} already exists; pass --overwrite to replace it or choose another --output"
    return None


def held_out_rows(cfg: Config) -> list[dict[str, Any]]:
    from rlhfkit.data.builtin import is_builtin, load_builtin
    from rlhfkit.data.prompts import load_prompts

    path = Path(os.path.expanduser(cfg.prompts))
    if is_builtin(cfg.prompts) and not path.exists():
        rows = load_builtin(cfg.prompts, cfg.split)
    elif path.exists():  # a file, or a dataset saved by save_to_disk
        rows = load_prompts(path, cfg.prompt_field)
    else:
        raise ConfigError(
            f"prompts = {cfg.prompts!r}: no such file nor a built-in set; give a prompt file "
            "or a set such as vader:movies"
        )
    rows = rows[: cfg.size] if cfg.size else rows
    if len(rows) < 2:
        raise ConfigError(
            f"prompts = {cfg.prompts!r}: {len(rows)} prompt(s); an interval needs 2 or more"
        )
    return rows


def main(cfg: Config) -> None:
    from rlhfkit.conditioning import load_conditioning
    from rlhfkit.data.prompts import prompt_text
    from rlhfkit.eval import heldout
    from rlhfkit.eval.multiple_choice import loglik_correct
    from rlhfkit.eval.pass_at_k import fold, per_prompt
    from rlhfkit.eval.policy import evaluate_policy
    from rlhfkit.generation import get_backend
    from rlhfkit.models import load_causal_lm, resolve_model_dir
    from rlhfkit.models.ilql_heads import has_heads, steering
    from rlhfkit.rewards import load_reward
    from rlhfkit.rewards.judge import load_judge

    # 1. prompts, rewards and judges: a bad spec fails before a model loads
    held_out = held_out_rows(cfg)
    rows = [row for row in held_out for _ in range(cfg.n_samples)]  # n samples side by side
    prompts = [prompt_text(row["prompt"]) for row in rows]
    rewards = {spec: load_reward(spec) for spec in cfg.reward}
    judges = {f"judge:{spec}": load_judge(spec, device=cfg.model.device) for spec in cfg.judge}

    # 2. both models sample the same prompts with the same seed; the KL to the baseline needs
    # its tokens to mean the same, i.e. one vocabulary
    model, tokenizer = load_causal_lm(cfg.model)
    base = base_tokenizer = None
    if cfg.baseline:
        base, base_tokenizer = load_causal_lm(
            ModelCfg(path=cfg.baseline, device=cfg.model.device, dtype=cfg.model.dtype)
        )
    same_vocabulary = base is not None and tokenizer.get_vocab() == base_tokenizer.get_vocab()

    def sample(which: Any, its_tokenizer: Any, path: str, reference: Any) -> Any:
        directory = resolve_model_dir(path)
        backend = get_backend(cfg.gen.backend, which, its_tokenizer)
        # an ILQL run's policy is its model steered by its heads: evaluated as it decodes
        steer = steering(backend, which, directory) if has_heads(directory) else nullcontext()
        with steer as beta:
            if beta is not None:
                print(f"{path}: decoding steered by its ILQL heads (beta {beta:g})")
            result = evaluate_policy(
                which,
                its_tokenizer,
                rows,
                cfg.gen,
                rewards,
                cfg.seed,
                reference=reference,
                conditioning=load_conditioning(directory),
                backend=backend,
            )
        for name, judge in judges.items():  # as the judge:SPEC reward: 2 P(good) - 1
            result.scores[name] = [2 * p - 1 for p in judge.score(prompts, result.completions)]
        if cfg.loglik:
            result.scores[LOGLIK] = loglik_correct(which, its_tokenizer, rows, cfg.gen.batch_size)
        return result

    policy = sample(
        model, tokenizer, cfg.model.path, (lambda: nullcontext(base)) if same_vocabulary else None
    )
    figures = _figures(cfg, policy)
    report: dict[str, Any] = {
        "model": cfg.model.path,
        "baseline": cfg.baseline or None,
        "prompts": cfg.prompts,
        "split": cfg.split,
        "seed": cfg.seed,
        "n_samples": cfg.n_samples,
        "rewards": list(cfg.reward),
        "judges": list(judges),
        "gen": _plain(cfg.gen),
        "figures": heldout.table(figures),
        "kl_note": None,
    }
    samples = [
        {"prompt": prompt, "completion": completion}
        for prompt, completion in zip(prompts, policy.completions, strict=True)
    ]

    # 3. against the baseline: its figures, the paired differences, the win rates
    if base is not None:
        baseline = sample(base, base_tokenizer, cfg.baseline, None)
        base_figures = _figures(cfg, baseline)
        mine, theirs = fold(policy, cfg.n_samples), fold(baseline, cfg.n_samples)
        wins = {
            name: heldout.score_wins(mine.scores[name], theirs.scores[name]) for name in rewards
        }
        for name, judge in judges.items():
            preferred = judge.prefer_all(prompts, policy.completions, baseline.completions)
            wins[name] = [sum(group) / len(group) for group in per_prompt(preferred, cfg.n_samples)]
        report |= {
            "baseline_figures": heldout.table(base_figures),
            "difference": heldout.differences(figures, base_figures),
            "win_rate": {
                name: heldout.describe(heldout.mean_measure(values))
                for name, values in wins.items()
            },
        }
        if not same_vocabulary:
            report["kl_note"] = "no KL: the two models' tokenizers differ"
        for i, sample_row in enumerate(samples):
            sample_row["baseline"] = baseline.completions[i]
            sample_row["baseline_scores"] = {k: v[i] for k, v in baseline.scores.items()}
            sample_row["wins"] = {k: v[i // cfg.n_samples] for k, v in wins.items()}
    for i, sample_row in enumerate(samples):
        sample_row["scores"] = {k: v[i] for k, v in policy.scores.items()}
        sample_row["length"] = policy.lengths[i]
    report["samples"] = samples

    # 4. the JSON (atomically; the output may have appeared while we sampled), the table
    if problem := _output_problem(cfg):
        raise RlhfkitError(f"output: {problem}")
    path = output_path(cfg)
    heldout.write_json(path, report)
    print_report(cfg, report, len(held_out))
    print(f"written to {path}")


def _figures(cfg: Config, result: Any) -> dict[str, Any]:
    """The held-out figures, one value per prompt (``eval.pass_at_k.fold``), and pass@k."""
    from rlhfkit.eval import heldout
    from rlhfkit.eval.pass_at_k import fold, pass_measures

    figures = heldout.measures(fold(result, cfg.n_samples))
    return figures | pass_measures(result.scores, cfg.n_samples, cfg.pass_at)


def _plain(group: Any) -> dict[str, Any]:
    from rlhfkit import config_io

    return config_io.to_dict(group)


def print_report(cfg: Config, report: dict[str, Any], prompts: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from rlhfkit.eval.heldout import show

    console = Console()
    title = f"{cfg.model.path} on {prompts} held-out prompts of {cfg.prompts} (95% intervals)"
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("model", justify="right")
    has_base = report["baseline"] is not None
    if has_base:
        table.add_column("baseline", justify="right")
        table.add_column("difference (paired)", justify="right")
        table.add_column("win rate", justify="right")
    for name, value in report["figures"].items():
        cells = [name, show(value)]
        if has_base:
            cells += [
                show(report["baseline_figures"].get(name)),
                show(report["difference"].get(name)),
                show(report["win_rate"].get(name), signed=False),
            ]
        table.add_row(*cells)
    console.print(table)
    if report["kl_note"]:
        console.print(report["kl_note"])
    pairs = Table(title="samples", show_lines=True)
    pairs.add_column("prompt")
    pairs.add_column("model")
    if has_base:
        pairs.add_column("baseline")
    for sample in report["samples"][: cfg.samples]:
        pairs.add_row(
            sample["prompt"], sample["completion"], *([sample["baseline"]] if has_base else [])
        )
    console.print(pairs, markup=False)
