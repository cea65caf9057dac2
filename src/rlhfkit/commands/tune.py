"""``rlhfkit tune RECIPE``: search a training method's settings, scored on the validation split.

Optuna's TPE sampler proposes each trial's settings from the trials finished before it (through
Ray Tune's ``OptunaSearch``); each trial is a Ray Tune trial that runs the method's command with
those settings, once per seed, through compare's machinery (``compare.run_method``: train, then
score ``<output_dir>/model`` on the task's held-out prompts, validation split). While it trains,
an online trainer's own held-out evaluations (``eval/reward`` every ``--eval.every`` steps, also
on the validation split) are reported to Ray Tune, whose median stopping rule stops a trial that
trails the others at the same evaluation (``prune``). The test split is never read.

The search directory:
  recipe.toml, search.json              the recipe as last run; what the search was started with
  search/                               Ray Tune's experiment: its state is what resumes
  <task>/seed-<s>/...                   compare's layout: each trial-<id>/ run, results/<trial>.json
  leaderboard.md, leaderboard.json      every finished trial against the base, with 95% intervals
  best.toml                             the best trial's config: rlhfkit <command> --config best.toml

Running the same recipe again resumes: Ray Tune restores the experiment, reruns the trials that
were interrupted or failed, and never the finished ones (compare's result files would skip their
training anyway). The base row and a sampling stage are computed once, in this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
from pathlib import Path
from typing import Any

from rlhfkit.commands import compare
from rlhfkit.commands.compare_recipe import BASE, SAMPLED, placeholders
from rlhfkit.commands.tune_recipe import RECIPE_HELP, SCORE, Config, Recipe, load_recipe
from rlhfkit.errors import ConfigError, RlhfkitError

__all__ = ["Config", "load_recipe", "main", "run"]

INTERMEDIATE = "eval/reward"  # what an online trainer logs at each held-out evaluation
_BASES: dict[str, tuple[Any, Any]] = {}  # a Ray worker's base model, loaded once for its trials


def run(args: list[str]) -> int:
    """``rlhfkit tune RECIPE [--KEY VALUE ...]`` (or ``--config RECIPE``)."""
    from rlhfkit import config_io

    if "-h" in args or "--help" in args:
        print(config_io.render_help(Config, "tune RECIPE") + RECIPE_HELP, end="")
        return 0
    if args and not args[0].startswith("-"):
        args = ["--config", *args]
    _, _, recipe = config_io.parse_overrides(Config, args)
    if recipe is None:
        raise ConfigError("tune: no recipe; usage is `rlhfkit tune RECIPE [--KEY VALUE ...]`")
    main(load_recipe(recipe, args))
    return 0


def main(recipe: Recipe) -> dict[str, Any]:
    """Run (or resume) the search; the leaderboard as data."""
    from rlhfkit.data.prompts import prompt_rows
    from rlhfkit.models import load_causal_lm
    from rlhfkit.rewards import load_reward

    out = _prepare(recipe)
    comparison = recipe.comparison()
    task = comparison.tasks[0]
    base = load_causal_lm(recipe.settings.model)
    reward = load_reward(recipe.task.reward)
    held_out = prompt_rows(recipe.task.data, "validation")
    base_results = []
    for seed in range(recipe.settings.seeds):
        if placeholders(recipe.method.command) & SAMPLED:  # shared by every trial of the seed
            stage_dir = compare.seed_directory(comparison, task, seed) / "sampled"
            compare.sampling_stage(stage_dir, recipe.task, base, reward, seed)
        base_results.append(
            compare.run_method(comparison, task, task.methods[0], seed, base, held_out, reward, 0)
        )
    grid = _search(recipe)
    board = leaderboard(recipe, grid, base_results)
    _write(out, recipe, board)
    print("\n" + board["markdown"], end="")
    print(f"\nleaderboard: {out / 'leaderboard.md'}; best config: {out / 'best.toml'}")
    unfinished = board["unfinished"]
    if unfinished:
        raise RlhfkitError(
            f"tune: {len(unfinished)} of {recipe.settings.trials} trials did not finish "
            f"({', '.join(unfinished)}); run the same command again to resume them"
        )
    return board


def _prepare(recipe: Recipe) -> Path:
    """The search directory, new, replaced (``overwrite``) or resumed with the same search."""
    from rlhfkit.train.runs import write_text_atomic

    out = recipe.output_dir
    if out.exists() and any(out.iterdir()) and not (out / "search.json").is_file():
        raise RlhfkitError(
            f"output_dir {str(out)!r} holds files but no search; choose an empty or new directory"
        )
    if recipe.settings.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    record = json.loads(json.dumps(_search_record(recipe)))
    file = out / "search.json"
    if file.is_file() and json.loads(file.read_text(encoding="utf-8")) != record:
        raise RlhfkitError(
            f"{file}: the search in {out} was started with other settings (trials, space, "
            "method or seeds); resume it with the same recipe, or use --overwrite or another "
            "output_dir"
        )
    write_text_atomic(file, json.dumps(record, indent=2) + "\n")
    write_text_atomic(out / "recipe.toml", recipe.path.read_text(encoding="utf-8"))
    compare._check_settings(out / recipe.task.name, recipe.task, recipe.comparison().settings)
    return out


def _search_record(recipe: Recipe) -> dict[str, Any]:
    s = recipe.settings
    return {
        "trials": s.trials,
        "seeds": s.seeds,
        "seed": s.seed,
        "prune": s.prune,
        "grace": s.grace,
        "method": list(recipe.method.command),
        "space": [vars(d) | {"choices": list(d.choices)} for d in recipe.space],
    }


# --- the search on Ray Tune ----------------------------------------------------------------------


def _search(recipe: Recipe) -> Any:
    """Ray Tune's results of the search (started here, or restored from its state)."""
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # the recipe's relative paths hold
    try:
        import optuna
        import ray
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise RlhfkitError("tune: needs Optuna and Ray Tune; pip install 'rlhfkit[tune]'") from None
    settings = recipe.settings
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=settings.ray.address or None,
            num_cpus=None
            if settings.ray.address
            else settings.parallel * settings.ray.cpus_per_trial,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=True,
        )
    trainable = tune.with_resources(
        tune.with_parameters(_trial, recipe=recipe),
        {"cpu": settings.ray.cpus_per_trial, "gpu": settings.ray.gpus_per_trial},
    )
    experiment = recipe.output_dir / "search"
    try:
        if tune.Tuner.can_restore(str(experiment)):
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_errored=True)
        else:
            sampler = optuna.samplers.TPESampler(
                seed=settings.seed, n_startup_trials=min(10, max(2, settings.trials // 3))
            )
            scheduler = (
                tune.schedulers.MedianStoppingRule(
                    time_attr="evaluation",
                    metric=SCORE,
                    mode="max",
                    grace_period=settings.grace,
                    min_samples_required=2,
                )
                if settings.prune
                else None
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=OptunaSearch(_space(recipe), SCORE, "max", sampler=sampler),
                    scheduler=scheduler,
                    num_samples=settings.trials,
                    max_concurrent_trials=settings.parallel,
                    reuse_actors=True,
                ),
                run_config=tune.RunConfig(
                    storage_path=str(recipe.output_dir), name="search", verbose=1
                ),
            )
        return tuner.fit()
    finally:
        if started:
            ray.shutdown()


def _space(recipe: Recipe) -> dict[str, Any]:
    """The searched keys as Optuna distributions."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    space: dict[str, Any] = {}
    for d in recipe.space:
        if d.choices:
            space[d.key] = CategoricalDistribution(d.choices)
        elif isinstance(d.low, int) and isinstance(d.high, int):
            space[d.key] = IntDistribution(d.low, d.high, log=d.log)
        else:
            space[d.key] = FloatDistribution(float(d.low or 0), float(d.high or 0), log=d.log)
    return space


def _trial(params: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """One Ray Tune trial: the method with ``params``, once per seed, scored on validation.

    The trainer's held-out evaluations are reported as they come (a stopped trial ends in one
    of them); the last report is the trial's score over the seeds."""
    from ray import tune

    from rlhfkit.data.prompts import prompt_rows
    from rlhfkit.eval.comparison import prompt_means
    from rlhfkit.models import load_causal_lm
    from rlhfkit.rewards import load_reward
    from rlhfkit.train.runs import observe

    name = trial_name(tune.get_context().get_trial_id())
    comparison = recipe.comparison((recipe.trial(name, params),))
    task, method = comparison.tasks[0], comparison.tasks[0].methods[1]
    model = recipe.settings.model
    if model.path not in _BASES:
        _BASES.clear()
        _BASES[model.path] = load_causal_lm(model)
    base = _BASES[model.path]
    reward = load_reward(recipe.task.reward)
    held_out = prompt_rows(recipe.task.data, "validation")
    evaluations = 0

    def report(run_dir: Path, step: int, metrics: dict[str, Any]) -> None:
        nonlocal evaluations
        if step > 0 and INTERMEDIATE in metrics and run_dir.name == name:
            evaluations += 1
            tune.report({SCORE: metrics[INTERMEDIATE], "evaluation": evaluations, "step": step})

    results = []
    for seed in range(recipe.settings.seeds):
        with observe(report) if seed == 0 else contextlib.nullcontext():  # prunes on seed 0
            results.append(
                compare.run_method(comparison, task, method, seed, base, held_out, reward, 0)
            )
    return {
        SCORE: statistics.fmean(prompt_means(results)),
        "evaluation": evaluations + 1,
        "final": True,
    }


def trial_name(trial_id: str) -> str:
    """A trial's directory and row name from Ray Tune's trial id."""
    return f"trial-{trial_id}"


# --- the leaderboard -------------------------------------------------------------------------------


def leaderboard(recipe: Recipe, grid: Any, base_results: list[Any]) -> dict[str, Any]:
    """Every finished trial against the base, best first; the pruned and the unfinished."""
    from rlhfkit.eval.comparison import MethodResult, render_markdown, summarise

    comparison = recipe.comparison()
    task = comparison.tasks[0]
    finished: dict[str, list[Any]] = {}
    params: dict[str, dict[str, Any]] = {}
    pruned, unfinished = [], []
    # Ray Tune's state says how many trials ended (finished, or stopped by the median rule),
    # not which: with every trial ended, each one without a final score was stopped
    ended = len(grid) == recipe.settings.trials and grid.num_terminated + grid.num_errors == len(
        grid
    )
    for result in grid:
        if "trial_id" not in result.metrics:  # failed or interrupted before its first report
            unfinished.append(Path(result.path).name)
            continue
        name = trial_name(result.metrics["trial_id"])
        params[name] = dict(result.config)
        files = [
            compare.seed_directory(comparison, task, seed) / "results" / f"{name}.json"
            for seed in range(recipe.settings.seeds)
        ]
        if result.metrics.get("final") and all(f.is_file() for f in files):
            finished[name] = [
                MethodResult(
                    **{
                        k: v
                        for k, v in json.loads(f.read_text(encoding="utf-8")).items()
                        if k in ("method", "seed", "scores", "kl", "lengths", "seconds")
                    }
                )
                for f in files
            ]
        elif ended and result.error is None:
            pruned.append({"trial": name, "params": params[name], **_last(result)})
        else:
            unfinished.append(name)
    unfinished += ["(not started)"] * max(0, recipe.settings.trials - len(grid))
    rows = summarise({BASE: base_results, **finished})
    order = sorted(rows[1:], key=lambda r: r.score.mean, reverse=True)
    notes = [
        f"Search of {recipe.method.command[0]} ({recipe.method.name}) over "
        + ", ".join(d.key for d in recipe.space)
        + f": {len(finished)} finished, {len(pruned)} stopped early, {len(unfinished)} "
        f"unfinished of {recipe.settings.trials} trials. Scored on {len(base_results[0].scores)} "
        f"held-out prompts of {recipe.task.data.prompts}'s validation split x "
        f"{recipe.settings.seeds} seed(s); the reward is {recipe.task.reward}.",
    ]
    table = render_markdown(f"tune {recipe.path.name}", [rows[0], *order], notes)
    settings = _params_table(recipe, [r.method for r in order], params)
    return {
        "recipe": str(recipe.path),
        "split": "validation",
        "rows": [r.to_json() | {"params": params.get(r.method, {})} for r in [rows[0], *order]],
        "best": order[0].method if order else None,
        "best_params": params[order[0].method] if order else None,
        "pruned": pruned,
        "unfinished": unfinished,
        "markdown": table + "\n" + settings,
    }


def _last(result: Any) -> dict[str, Any]:
    return {k: result.metrics.get(k) for k in (SCORE, "evaluation", "step")}


def _params_table(recipe: Recipe, names: list[str], params: dict[str, dict[str, Any]]) -> str:
    keys = [d.key for d in recipe.space]
    lines = [
        "| trial | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
        *(
            f"| {name} | " + " | ".join(_show(params[name][k]) for k in keys) + " |"
            for name in names
        ),
    ]
    return "\n".join(lines) + "\n"


def _show(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _write(out: Path, recipe: Recipe, board: dict[str, Any]) -> None:
    from rlhfkit.train.runs import write_text_atomic

    write_text_atomic(
        out / "leaderboard.md", f"# rlhfkit tune {recipe.path.name}\n\n" + board["markdown"]
    )
    data = {k: v for k, v in board.items() if k != "markdown"}
    write_text_atomic(out / "leaderboard.json", json.dumps(data, indent=2) + "\n")
    if board["best"] is not None:
        write_text_atomic(out / "best.toml", best_recipe(recipe, board))


def best_recipe(recipe: Recipe, board: dict[str, Any]) -> str:
    """The best trial's effective config (its seed-0 run's config.toml) as a recipe for its
    command: the search's own settings taken out (run directory, seed, validation split)."""
    from dataclasses import replace

    from rlhfkit import config_io
    from rlhfkit.commands import command_module

    comparison = recipe.comparison()
    name, command = board["best"], recipe.method.command[0]
    saved = compare.seed_directory(comparison, comparison.tasks[0], 0) / name / "config.toml"
    problems: list[str] = []  # read as saved: its run directory exists, which load refuses
    cfg = config_io.build(
        command_module(command).Config, config_io.read_file(str(saved)), set(), "", problems
    )
    if problems:
        raise RlhfkitError(f"{saved}: " + "; ".join(problems))
    run = replace(cfg.run, output_dir="", seed=0, resume=False, overwrite=False)
    changes: dict[str, Any] = {"run": run}
    if hasattr(cfg, "eval"):
        changes["eval"] = replace(cfg.eval, split="test")
    cfg = replace(cfg, **changes)
    best = next(r for r in board["rows"] if r["method"] == name)
    header = (
        f"# The best of rlhfkit tune {recipe.path.name}: {name}, held-out score "
        f"{best['score']['mean']:+.3f} on the validation split\n"
        f"# ({', '.join(f'{k} = {_show(v)}' for k, v in board['best_params'].items())}).\n"
        f"# rlhfkit {command} --config best.toml\n"
    )
    return header + config_io.to_toml(cfg)
