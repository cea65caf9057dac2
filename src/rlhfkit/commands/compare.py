"""``rlhfkit compare RECIPE``: training methods side by side, on one sample budget and seed set.

For each task of the recipe, for each seed:
  1. the shared sampling stage, when a method uses it: the base model writes K completions per
     training prompt, the task's reward scores them -> samples.jsonl, best.jsonl, pairs.jsonl
     (``rlhfkit.train.sampled``); rejection-sampling fine-tuning, DPO, CoH ... all learn from it
  2. each method: its command line, placeholders filled, runs as ``rlhfkit ...`` would; then
     ``<its output_dir>/model`` is sampled on the held-out prompts (asked the way its
     ``conditioning.json`` says) and scored, with the KL of each completion to the base model
  3. the task's table (``rlhfkit.eval.comparison``), printed and written as results.md/.json

The comparison directory:
  recipe.toml                        the recipe as last run
  results.md, results.json           one table per task (rewritten after each task)
  <task>/settings.json               the task's settings: a rerun with other ones is refused
  <task>/seed-<s>/sampled/           samples.jsonl, best.jsonl, pairs.jsonl, stage.json
  <task>/seed-<s>/<method>/          the method's own run directory, its {output_dir}
  <task>/seed-<s>/results/<method>.train.json   the command line it ran and its wall time
  <task>/seed-<s>/results/<method>.json         its held-out evaluation

Running the same recipe again continues where it stopped: a finished sampling stage is reused;
a method whose model and result are both there is not run again (one whose model is there but
not its result is only evaluated); a run that stopped half way starts again from scratch.

Methods run in this process, through ``rlhfkit.commands.dispatch``, not in a subprocess: every
command seeds all its generators when it starts and keeps no state between calls (the reward
registry only gains names), so nothing leaks from one method into the next; and the wall time
then measures the method, not a fresh interpreter importing torch, which would swamp the short
methods. An error stops the comparison with the method named; the finished ones are kept.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rlhfkit.commands import dispatch
from rlhfkit.commands.compare_recipe import (
    EMPTY,
    PLACEHOLDERS,
    RECIPE_HELP,
    SAMPLED,
    Config,
    MethodCfg,
    Recipe,
    Task,
    TaskCfg,
    fill,
    load_recipe,
    placeholders,
)
from rlhfkit.conditioning import Conditioning
from rlhfkit.config import GenCfg, ModelCfg
from rlhfkit.errors import ConfigError, RlhfkitError

__all__ = ["PLACEHOLDERS", "Config", "fill", "load_recipe", "main", "placeholders", "run"]


# --- running it ------------------------------------------------------------------------------------


def run(args: list[str]) -> int:
    """``rlhfkit compare RECIPE [--KEY VALUE ...]`` (or ``--config RECIPE``)."""
    from rlhfkit import config_io

    if "-h" in args or "--help" in args:
        print(config_io.render_help(Config, "compare RECIPE") + RECIPE_HELP, end="")
        return 0
    if args and not args[0].startswith("-"):
        args = ["--config", *args]  # the recipe named first, as `rlhfkit compare RECIPE`
    _, _, recipe = config_io.parse_overrides(Config, args)
    if recipe is None:
        raise ConfigError("compare: no recipe; usage is `rlhfkit compare RECIPE [--KEY VALUE ...]`")
    main(load_recipe(recipe, args))  # the flags in args override the recipe's top level
    return 0


def main(recipe: Recipe) -> None:
    from rlhfkit.models import load_causal_lm
    from rlhfkit.train.runs import write_text_atomic

    out = recipe.output_dir
    if out.exists() and any(out.iterdir()) and not (out / "recipe.toml").is_file():
        raise RlhfkitError(
            f"output_dir {str(out)!r} holds files but no comparison; choose an "
            "empty or new directory"
        )
    if recipe.settings.overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "recipe.toml", recipe.path.read_text(encoding="utf-8"))
    for task in recipe.tasks:  # before any model loads
        _check_settings(out / task.cfg.name, task.cfg, recipe.settings)
    base = load_causal_lm(recipe.settings.model)
    tables: list[dict[str, Any]] = []
    for task in recipe.tasks:
        tables.append(compare_task(recipe, task, base))
        _write_tables(out, recipe, tables)
    for table in tables:
        print("\n" + table["markdown"], end="")
    print(f"\ntables written to {out / 'results.md'} and {out / 'results.json'}")


def compare_task(recipe: Recipe, task: Task, base: tuple[Any, Any]) -> dict[str, Any]:
    """Run (or reuse) every method of ``task`` for every seed; its table as data and markdown."""
    from rlhfkit.data.prompts import prompt_rows
    from rlhfkit.eval.comparison import render_markdown, summarise
    from rlhfkit.rewards import load_reward

    cfg = task.cfg
    held_out = prompt_rows(cfg.data, recipe.settings.held_out)
    if len(held_out) < 2:
        raise ConfigError(
            f"tasks.{cfg.name}: data.eval_prompts gives {len(held_out)} held-out "
            "prompts; name a file of at least 2 (a prompt file has no test split)"
        )
    reward = load_reward(cfg.reward)
    uses_samples = {m.name: bool(placeholders(m.command) & SAMPLED) for m in task.methods}
    results: dict[str, list[Any]] = {m.name: [] for m in task.methods}
    stages: list[dict[str, Any]] = []
    for seed in range(recipe.settings.seeds):
        stage_seconds = 0.0
        if any(uses_samples.values()):
            stages.append(
                sampling_stage(
                    seed_directory(recipe, task, seed) / "sampled", cfg, base, reward, seed
                )
            )
            stage_seconds = stages[-1]["seconds"]
        for method in task.methods:
            extra = stage_seconds if uses_samples[method.name] else 0.0
            results[method.name].append(
                run_method(recipe, task, method, seed, base, held_out, reward, extra)
            )
    rows = summarise(results)
    notes = _notes(cfg, len(held_out), recipe.settings.held_out, recipe.settings.seeds, stages)
    return {
        "name": cfg.name,
        "prompts": cfg.data.prompts,
        "reward": cfg.reward,
        "held_out_prompts": len(held_out),
        "seeds": recipe.settings.seeds,
        "sampling": stages,
        "rows": [row.to_json() for row in rows],
        "markdown": render_markdown(cfg.name, rows, notes),
    }


def _notes(
    cfg: TaskCfg, held_out: int, split: str, seeds: int, stages: list[dict[str, Any]]
) -> list[str]:
    """What a reader needs beside a table: the data, the budget, what each column means."""
    notes = [
        f"Prompts {cfg.data.prompts}, reward {cfg.reward}; {held_out} held-out prompts "
        f"({split} split) x {seeds} seed(s), sampled at temperature "
        f"{cfg.gen.temperature:g}, at most {cfg.gen.max_new_tokens} tokens."
    ]
    if stages:
        best = "/".join(str(stage["best"]) for stage in stages)  # one count per seed
        pairs = "/".join(str(stage["pairs"]) for stage in stages)
        notes.append(
            f"Shared sample budget per seed: {stages[0]['prompts']} training prompts x "
            f"{cfg.samples_per_prompt} = {stages[0]['samples']} scored samples, giving "
            f"{best} best completions and {pairs} pairs with margin >= "
            f"{cfg.min_margin:g} (per seed)."
        )
    notes.append(
        "Score: the mean held-out reward with a 95% Student-t interval over prompts "
        "(each prompt's score averaged over the seeds). vs base: the paired per-prompt "
        "difference and its 95% t-interval; beats base = that interval lies above 0. "
        "KL: Σ_t log π - log π_base over each sampled completion, averaged. Wall time: "
        "training per seed, plus the shared sampling stage for the methods that learn "
        "from it."
    )
    return notes


def _check_settings(task_dir: Path, cfg: TaskCfg, settings: Config) -> None:
    """Refuse to mix results made under other task settings (or another base model)."""
    from rlhfkit.train.runs import write_text_atomic

    current = _settings_record(cfg, settings.model, settings.eval_seed, settings.held_out)
    file = task_dir / "settings.json"
    if file.is_file():
        if _with_defaults(json.loads(file.read_text(encoding="utf-8"))) != current:
            raise RlhfkitError(
                f"{file}: task {cfg.name!r} ran with other settings than the recipe "
                "now gives; its results would not compare. Use another output_dir, "
                "or --overwrite to start afresh"
            )
        return
    write_text_atomic(file, json.dumps(current, indent=2) + "\n")


def _settings_record(
    cfg: TaskCfg, model: ModelCfg, eval_seed: Any, held_out: Any
) -> dict[str, Any]:
    """What settings.json holds for a task, as it reads back from JSON."""
    from rlhfkit import config_io

    return json.loads(
        json.dumps(
            {
                "task": config_io.to_dict(cfg),
                "model": config_io.to_dict(model),
                "eval_seed": eval_seed,
                "held_out": held_out,
            }
        )
    )


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any] | None:
    """Saved settings with the defaults of options added since filled in (a newer rlhfkit's
    option at its default changes nothing), or None when they no longer read as settings."""
    from rlhfkit import config_io

    problems: list[str] = []
    task = config_io.build(TaskCfg, saved.get("task", {}), set(), "", problems)
    model = config_io.build(ModelCfg, saved.get("model", {}), set(), "", problems)
    if problems:
        return None
    return _settings_record(
        task, model, saved.get("eval_seed"), saved.get("held_out", Config.held_out)
    )


def sampling_stage(
    directory: Path, cfg: TaskCfg, base: tuple[Any, Any], reward: Any, seed: int
) -> dict[str, Any]:
    """This seed's shared samples (drawn now, or reused when complete): counts and seconds."""
    from rlhfkit.data.prompts import prompt_rows
    from rlhfkit.train.sampled import run_stage

    print(
        f"[{cfg.name} seed {seed}] shared sampling stage: {cfg.samples_per_prompt} completions "
        "per training prompt from the base model (reused when already done)"
    )
    return run_stage(
        directory,
        *base,
        prompt_rows(cfg.data, "train"),
        cfg.gen,
        reward,
        cfg.samples_per_prompt,
        seed,
        cfg.min_margin,
        cfg.min_best_score,
    )


def seed_directory(recipe: Recipe, task: Task, seed: int) -> Path:
    return recipe.output_dir / task.cfg.name / f"seed-{seed}"


def command_line(recipe: Recipe, task: Task, method: MethodCfg, seed: int) -> list[str]:
    """The arguments ``method`` runs with for ``seed``: its command, placeholders filled."""
    directory, model = seed_directory(recipe, task, seed), recipe.settings.model
    values = {
        "output_dir": directory / method.name,
        "seed": seed,
        "base": model.path,
        "device": model.device,
        "prompts": task.cfg.data.prompts,
        "max_prompts": task.cfg.data.max_prompts,
        "reward": task.cfg.reward,
        **{key: directory / "sampled" / f"{key}.jsonl" for key in SAMPLED},
    }
    return fill(method.command, values)


def run_method(
    recipe: Recipe,
    task: Task,
    method: MethodCfg,
    seed: int,
    base: tuple[Any, Any],
    held_out: list[dict[str, Any]],
    reward: Any,
    extra_seconds: float,
) -> Any:
    """One method, one seed: train unless its model is there, evaluate unless its result is."""
    from rlhfkit.eval.comparison import MethodResult
    from rlhfkit.train.runs import write_text_atomic

    where = f"task {task.cfg.name}, seed {seed}, method {method.name}"
    results = seed_directory(recipe, task, seed) / "results"
    result_file = results / f"{method.name}.json"
    model_dir = None
    seconds = None
    if method.trains:
        run_dir = seed_directory(recipe, task, seed) / method.name
        model_dir = run_dir / "model"
        argv = command_line(recipe, task, method, seed)
        train_file = results / f"{method.name}.train.json"
        if train_file.is_file() and (model_dir / "config.json").is_file():
            recorded = json.loads(train_file.read_text(encoding="utf-8"))
            if recorded["command"] != argv:
                raise RlhfkitError(
                    f"{where}: its command changed since it ran ({train_file} "
                    f"holds the old one); delete {run_dir} to run it again"
                )
            seconds = recorded["seconds"]
        else:
            result_file.unlink(missing_ok=True)
            for key in sorted(placeholders(method.command) & EMPTY.keys()):
                file = seed_directory(recipe, task, seed) / "sampled" / f"{key}.jsonl"
                if file.stat().st_size == 0:
                    raise RlhfkitError(f"{where}: {file} is empty: {EMPTY[key]}")
            if run_dir.exists():
                shutil.rmtree(run_dir)  # a run that stopped half way: start it again
            seconds = _train(argv, where)
            if not (model_dir / "config.json").is_file():
                raise RlhfkitError(
                    f"{where}: `rlhfkit {' '.join(argv)}` finished without a model "
                    f"in {model_dir}; pass its run directory as {{output_dir}}"
                )
            write_text_atomic(
                train_file, json.dumps({"command": argv, "seconds": seconds}, indent=2) + "\n"
            )
            # only an unfinished run resumes from its checkpoints: a finished one's model is
            # all compare reads, and a comparison's checkpoints run to tens of gigabytes
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        seconds = round(seconds + extra_seconds, 2)
    if result_file.is_file():
        saved = json.loads(result_file.read_text(encoding="utf-8"))
    else:
        print(f"[{where}] evaluating on {len(held_out)} held-out prompts")
        asked = Conditioning("prompt", method.instruction) if method.instruction else None
        evaluation, conditioning = evaluate(
            model_dir,
            base,
            recipe.settings.model,
            held_out,
            task.cfg.gen,
            reward,
            recipe.settings.eval_seed + seed,
            asked,
        )
        saved = {
            "method": method.name,
            "seed": seed,
            "model": str(model_dir or recipe.settings.model.path),
            "conditioning": conditioning,
            "seconds": seconds,
            "scores": evaluation.scores["score"],
            "kl": evaluation.kl,
            "lengths": evaluation.lengths,
            "completions": evaluation.completions,
        }
        write_text_atomic(result_file, json.dumps(saved, indent=1) + "\n")
    return MethodResult(
        method=method.name,
        seed=seed,
        scores=saved["scores"],
        kl=saved["kl"],
        lengths=saved["lengths"],
        seconds=saved["seconds"],
    )


def _train(argv: list[str], where: str) -> float:
    """Run ``rlhfkit <argv>`` in this process; its wall time in seconds."""
    print(f"[{where}] rlhfkit {' '.join(argv)}")
    started = time.perf_counter()
    try:
        code = dispatch(argv)
    except (RlhfkitError, KeyboardInterrupt):
        print(
            f"rlhfkit compare: {where} stopped; fix it and run the same compare again (the "
            "finished methods are kept)",
            file=sys.stderr,
        )
        raise
    if code != 0:
        raise RlhfkitError(f"{where}: `rlhfkit {' '.join(argv)}` exited with {code}")
    return time.perf_counter() - started


def evaluate(
    model_dir: Path | None,
    base: tuple[Any, Any],
    model_cfg: ModelCfg,
    held_out: list[dict[str, Any]],
    gen: GenCfg,
    reward: Any,
    seed: int,
    asked: Conditioning | None = None,
) -> tuple[Any, dict[str, str] | None]:
    """Held-out completions of the model in ``model_dir`` (None: the base, ``asked`` through an
    instruction or not), scored, with KL to the base; and the conditioning it was asked with."""
    from rlhfkit.conditioning import load_conditioning
    from rlhfkit.eval.policy import evaluate_policy
    from rlhfkit.generation import get_backend
    from rlhfkit.models import load_causal_lm
    from rlhfkit.models.ilql_heads import has_heads, steering

    if model_dir is None:  # the base itself: KL 0
        evaluation = evaluate_policy(
            *base, held_out, gen, {"score": reward}, seed, conditioning=asked
        )
        return evaluation, None if asked is None else asdict(asked)
    model, tokenizer = load_causal_lm(replace(model_cfg, path=str(model_dir)))
    conditioning = load_conditioning(model_dir)
    backend = get_backend(gen.backend, model, tokenizer)
    # an ILQL run's policy is its model steered by its heads: evaluated (and its KL taken) so
    steer = steering(backend, model, model_dir) if has_heads(model_dir) else nullcontext()
    with steer:
        evaluation = evaluate_policy(
            model,
            tokenizer,
            held_out,
            gen,
            {"score": reward},
            seed,
            reference=lambda: nullcontext(base[0]),
            conditioning=conditioning,
            backend=backend,
        )
    return evaluation, None if conditioning is None else asdict(conditioning)


def _write_tables(out: Path, recipe: Recipe, tables: list[dict[str, Any]]) -> None:
    from rlhfkit.train.runs import write_text_atomic

    title = f"# rlhfkit compare {recipe.path.name}\n"
    write_text_atomic(out / "results.md", title + "".join("\n" + t["markdown"] for t in tables))
    data = {
        "recipe": str(recipe.path),
        "tasks": [{k: v for k, v in t.items() if k != "markdown"} for t in tables],
    }
    write_text_atomic(out / "results.json", json.dumps(data, indent=2) + "\n")
