"""``rlhfkit compare RECIPE``: training methods side by side, on one sample budget and seed set.

For each task of the recipe, for each seed:
  1. the shared sampling stage, when a method uses it: the base model writes K completions per
     training prompt, the task's reward scores them -> samples.jsonl, best.jsonl, pairs.jsonl
     (``rlhfkit.data.sampled``); rejection-sampling fine-tuning, DPO, CoH ... all learn from it
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

Methods run in this process, through ``rlhfkit.cli.dispatch``, not in a subprocess: every
command seeds all its generators when it starts and keeps no state between calls (the reward
registry only gains names), so nothing leaks from one method into the next; and the wall time
then measures the method, not a fresh interpreter importing torch, which would swamp the short
methods. An error stops the comparison with the method named; the finished ones are kept.
"""

from __future__ import annotations

import json
import re
import shutil
import string
import sys
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rlhfkit.config import (
    GenCfg,
    ModelCfg,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    Problem,
    PromptDataCfg,
    default,
)
from rlhfkit.errors import ConfigError, RlhfkitError

BASE = "base"
PLACEHOLDERS = {
    "output_dir": "the method's run directory: its trained model must be <output_dir>/model",
    "seed": "the training seed",
    "base": "the base model (model.path)",
    "device": "the device (model.device)",
    "prompts": "the task's training prompts (data.prompts)",
    "max_prompts": "how many of them the sampling stage uses (data.max_prompts)",
    "reward": "the task's reward",
    "samples": "samples.jsonl of this seed's sampling stage (every scored completion)",
    "best": "best.jsonl of this seed's sampling stage (the best completion per prompt)",
    "pairs": "pairs.jsonl of this seed's sampling stage (best vs worst per prompt)",
}
SAMPLED = frozenset({"samples", "best", "pairs"})
EMPTY = {"best": "no prompt's best sample reached min_best_score; lower it, or raise "
                 "samples_per_prompt or data.max_prompts",
         "pairs": "no prompt's samples differed by min_margin; lower it, or raise "
                  "samples_per_prompt or data.max_prompts"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RECIPE_HELP = """
A recipe (TOML) holds the options above at its top level, then one [[tasks]] table per task,
each with its own [[tasks.methods]]:

  [[tasks]]                 name, reward, samples_per_prompt, min_margin, [tasks.data], [tasks.gen]
  [[tasks.methods]]         name = "base" (the starting model, no command), or a name and
                            command = ["sft", "--data", "{best}", "--run.output_dir", "{output_dir}", ...]

Placeholders in a command:
""" + "".join(f"  {{{name}}}{' ' * (14 - len(name))}{doc}\n" for name, doc in PLACEHOLDERS.items())


@dataclass(frozen=True)
class Config:
    """Compare training methods on one sample budget and seed set: a table per task."""

    output_dir: str = ""
    """Where the comparison lives; empty means runs/compare-<recipe name>."""
    seeds: PositiveInt = 1
    """Training seeds 0 .. seeds-1: every method trains once per seed, on that seed's samples."""
    eval_seed: NonNegativeInt = 1000
    """Sampling seed of the held-out evaluation (plus the training seed), the same for every method."""
    overwrite: bool = False
    """Delete an earlier comparison in output_dir and start afresh (otherwise it continues)."""
    model: ModelCfg = default(ModelCfg)
    """The base model every method starts from ({base}), evaluated as the base row."""


@dataclass(frozen=True)
class TaskCfg:
    """One task: prompts, reward, the shared sample budget and the held-out evaluation."""

    name: str = ""
    """The task's name: its table's title and its directory (required)."""
    reward: str = ""
    """The reward that scores samples and held-out completions (required), as in grpo --reward."""
    samples_per_prompt: PositiveInt = 8
    """K: completions the sampling stage draws per training prompt (budget = prompts x K)."""
    min_margin: NonNegativeFloat = 0.0
    """pairs.jsonl keeps a prompt's best-vs-worst pair only when their scores differ this much."""
    min_best_score: float | None = None
    """best.jsonl keeps a prompt only when its best sample scores this much (1 with a verifier:
    a correct answer); unset keeps every prompt's best."""
    data: PromptDataCfg = default(PromptDataCfg)
    """Training prompts (max_prompts of them are sampled) and held-out ones (eval_size, test split)."""
    gen: GenCfg = default(GenCfg)
    """How the sampling stage and the held-out evaluation sample."""

    def check(self) -> Iterable[Problem]:
        if not NAME.fullmatch(self.name):
            yield Problem("name", self.name, "is required: letters, digits, '.', '_' or '-'")
        if not self.reward:
            yield Problem("reward", self.reward, "is required; name the task's reward, e.g. sentiment")
        if self.data.eval_size < 2:
            yield Problem("data.eval_size", self.data.eval_size,
                          "must be at least 2: a confidence interval needs 2 held-out prompts")


@dataclass(frozen=True)
class MethodCfg:
    """One method: its row name and the rlhfkit command line that trains it."""

    name: str = ""
    """Its row in the table and its directory; "base" is the starting model, run as is."""
    command: tuple[str, ...] = ()
    """The arguments of an `rlhfkit ...` call, with placeholders such as {output_dir} {seed}."""


@dataclass(frozen=True)
class Task:
    """A task's settings and its methods, in table order."""

    cfg: TaskCfg
    methods: tuple[MethodCfg, ...]


@dataclass(frozen=True)
class Recipe:
    """A checked recipe: where it came from, its top-level options, its tasks."""

    path: Path
    settings: Config
    tasks: tuple[Task, ...]

    @property
    def output_dir(self) -> Path:
        return Path(self.settings.output_dir or f"runs/compare-{self.path.stem}").expanduser()


# --- the recipe ------------------------------------------------------------------------------------


def placeholders(command: Sequence[str]) -> set[str]:
    """The placeholder names in a command line (``{{`` and ``}}`` are literal braces)."""
    return {name for arg in command for _, name, _, _ in string.Formatter().parse(arg)
            if name is not None}


def fill(command: Sequence[str], values: dict[str, Any]) -> list[str]:
    """The command line with every placeholder replaced by its value."""
    return [arg.format_map(values) for arg in command]


def _command_problems(method: MethodCfg) -> Iterable[Problem]:
    if method.name == BASE:
        if method.command:
            yield Problem("command", " ".join(method.command),
                          "base is the starting model, evaluated as is; remove its command")
        return
    if not method.command:
        yield Problem("command", "", 'is required: the rlhfkit arguments that train the method, '
                      'e.g. ["sft", "--data", "{best}", "--run.output_dir", "{output_dir}"]')
        return
    from rlhfkit import cli

    if method.command[0] not in {*cli.COMMANDS, *cli.TOOLS} - {"compare"}:
        yield Problem("command", " ".join(method.command),
                      f"starts with {method.command[0]!r}, not an rlhfkit training command")
    names: set[str] = set()
    for arg in method.command:  # each wrong argument named on its own
        try:
            found = placeholders([arg])
        except ValueError as e:  # a lone brace
            yield Problem("command", arg, f"{e}; write a literal brace as {{{{ or }}}}")
            continue
        for name in sorted(found - PLACEHOLDERS.keys()):
            yield Problem("command", arg, f"unknown placeholder {{{name}}}; use one of "
                          + ", ".join(f"{{{known}}}" for known in PLACEHOLDERS))
        names |= found
    for needed in ("output_dir", "seed"):
        if needed not in names:
            yield Problem("command", " ".join(method.command),
                          f"never uses {{{needed}}}; pass it (e.g. --run.{needed} {{{needed}}}) so "
                          "the run lands where compare evaluates it, once per seed")


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """The checked recipe: its top-level options (``overrides`` win), its tasks and methods.

    Every problem in the file is reported at once, before any model loads.
    """
    from rlhfkit import config_io

    data = config_io.read_file(str(path))
    tables = data.pop("tasks", None)
    cli_data, cli_keys, _ = config_io.parse_overrides(Config, list(overrides))
    problems: list[str] = []
    # config_io builds a command's config from a file and flags; a recipe's [[tasks]] are tables
    # it has no type for, so each table is built on its own with the same coercion and checks
    settings = config_io.build(Config, config_io.deep_merge(data, cli_data), cli_keys, "",
                                problems)
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        problems.append("tasks: missing; add a [[tasks]] table per task (see rlhfkit compare --help)")
        tables = []
    tasks = []
    for i, table in enumerate(tables):
        where = f"tasks[{i}]."
        table = dict(table)
        method_tables = table.pop("methods", None)
        cfg = config_io.build(TaskCfg, table, set(), where, problems)
        if not isinstance(method_tables, list) or not method_tables:
            problems.append(f"{where}methods: missing; add [[tasks.methods]] tables, one per method")
            method_tables = []
        methods = tuple(config_io.build(MethodCfg, m if isinstance(m, dict) else {}, set(),
                                         f"{where}methods[{j}].", problems)
                        for j, m in enumerate(method_tables))
        tasks.append(Task(cfg, methods))
    if problems:
        raise ConfigError(problems)
    problems = config_io.validate(settings)
    for i, task in enumerate(tasks):
        problems += config_io.validate(task.cfg, f"tasks[{i}].")
        seen: set[str] = set()
        for j, method in enumerate(task.methods):
            where = f"tasks[{i}].methods[{j}]."
            if not NAME.fullmatch(method.name):
                problems.append(f"{where}name = {method.name!r}: is required: letters, digits, "
                                "'.', '_' or '-'")
            elif method.name in seen:
                problems.append(f"{where}name = {method.name!r}: appears twice in task "
                                f"{task.cfg.name!r}; give each method its own name")
            seen.add(method.name)
            problems += [f"{where}{p.field} = {p.value!r}: {p.message}"
                         for p in _command_problems(method)]
        if BASE not in seen:
            problems.append(f'tasks[{i}].methods: no "base"; add [[tasks.methods]] name = "base", '
                            "the starting model every method is measured against")
    names = [task.cfg.name for task in tasks]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"tasks: name {name!r} appears twice; give each task its own name")
    if problems:
        raise ConfigError(problems)
    return Recipe(Path(path), settings, tuple(tasks))


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
    from rlhfkit.runs import write_text_atomic

    out = recipe.output_dir
    if out.exists() and any(out.iterdir()) and not (out / "recipe.toml").is_file():
        raise RlhfkitError(f"output_dir {str(out)!r} holds files but no comparison; choose an "
                           "empty or new directory")
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
    from rlhfkit.eval.comparison import render_markdown, summarise
    from rlhfkit.rewards import load_reward
    from rlhfkit.train.online import prompt_rows

    cfg = task.cfg
    held_out = prompt_rows(cfg.data, "test")
    if len(held_out) < 2:
        raise ConfigError(f"tasks.{cfg.name}: data.eval_prompts gives {len(held_out)} held-out "
                          "prompts; name a file of at least 2 (a prompt file has no test split)")
    reward = load_reward(cfg.reward)
    uses_samples = {m.name: bool(placeholders(m.command) & SAMPLED) for m in task.methods}
    results: dict[str, list[Any]] = {m.name: [] for m in task.methods}
    stages: list[dict[str, Any]] = []
    for seed in range(recipe.settings.seeds):
        stage_seconds = 0.0
        if any(uses_samples.values()):
            stages.append(sampling_stage(seed_directory(recipe, task, seed) / "sampled", cfg,
                                         base, reward, seed))
            stage_seconds = stages[-1]["seconds"]
        for method in task.methods:
            extra = stage_seconds if uses_samples[method.name] else 0.0
            results[method.name].append(run_method(recipe, task, method, seed, base, held_out,
                                                   reward, extra))
    rows = summarise(results)
    notes = _notes(cfg, len(held_out), recipe.settings.seeds, stages)
    return {"name": cfg.name, "prompts": cfg.data.prompts, "reward": cfg.reward,
            "held_out_prompts": len(held_out), "seeds": recipe.settings.seeds,
            "sampling": stages, "rows": [row.to_json() for row in rows],
            "markdown": render_markdown(cfg.name, rows, notes)}


def _notes(cfg: TaskCfg, held_out: int, seeds: int, stages: list[dict[str, Any]]) -> list[str]:
    """What a reader needs beside a table: the data, the budget, what each column means."""
    notes = [f"Prompts {cfg.data.prompts}, reward {cfg.reward}; {held_out} held-out prompts x "
             f"{seeds} seed(s), sampled at temperature {cfg.gen.temperature:g}, at most "
             f"{cfg.gen.max_new_tokens} tokens."]
    if stages:
        best = "/".join(str(stage["best"]) for stage in stages)  # one count per seed
        pairs = "/".join(str(stage["pairs"]) for stage in stages)
        notes.append(f"Shared sample budget per seed: {stages[0]['prompts']} training prompts x "
                     f"{cfg.samples_per_prompt} = {stages[0]['samples']} scored samples, giving "
                     f"{best} best completions and {pairs} pairs with margin >= "
                     f"{cfg.min_margin:g} (per seed).")
    notes.append("Score: the mean held-out reward with a 95% Student-t interval over prompts "
                 "(each prompt's score averaged over the seeds). vs base: the paired per-prompt "
                 "difference and its 95% t-interval; beats base = that interval lies above 0. "
                 "KL: Σ_t log π - log π_base over each sampled completion, averaged. Wall time: "
                 "training per seed, plus the shared sampling stage for the methods that learn "
                 "from it.")
    return notes


def _check_settings(task_dir: Path, cfg: TaskCfg, settings: Config) -> None:
    """Refuse to mix results made under other task settings (or another base model)."""
    from rlhfkit import config_io
    from rlhfkit.runs import write_text_atomic

    current = {"task": config_io.to_dict(cfg), "model": config_io.to_dict(settings.model),
               "eval_seed": settings.eval_seed}
    file = task_dir / "settings.json"
    if file.is_file():
        saved = json.loads(file.read_text(encoding="utf-8"))
        if saved != json.loads(json.dumps(current)):
            raise RlhfkitError(f"{file}: task {cfg.name!r} ran with other settings than the recipe "
                               "now gives; its results would not compare. Use another output_dir, "
                               "or --overwrite to start afresh")
        return
    write_text_atomic(file, json.dumps(current, indent=2) + "\n")


def sampling_stage(directory: Path, cfg: TaskCfg, base: tuple[Any, Any], reward: Any,
                   seed: int) -> dict[str, Any]:
    """This seed's shared samples (drawn now, or reused when complete): counts and seconds."""
    from rlhfkit.data.sampled import run_stage
    from rlhfkit.train.online import prompt_rows

    print(f"[{cfg.name} seed {seed}] shared sampling stage: {cfg.samples_per_prompt} completions "
          "per training prompt from the base model (reused when already done)")
    return run_stage(directory, *base, prompt_rows(cfg.data, "train"), cfg.gen, reward,
                     cfg.samples_per_prompt, seed, cfg.min_margin, cfg.min_best_score)


def seed_directory(recipe: Recipe, task: Task, seed: int) -> Path:
    return recipe.output_dir / task.cfg.name / f"seed-{seed}"


def command_line(recipe: Recipe, task: Task, method: MethodCfg, seed: int) -> list[str]:
    """The arguments ``method`` runs with for ``seed``: its command, placeholders filled."""
    directory, model = seed_directory(recipe, task, seed), recipe.settings.model
    values = {"output_dir": directory / method.name, "seed": seed, "base": model.path,
              "device": model.device, "prompts": task.cfg.data.prompts,
              "max_prompts": task.cfg.data.max_prompts, "reward": task.cfg.reward,
              **{key: directory / "sampled" / f"{key}.jsonl" for key in SAMPLED}}
    return fill(method.command, values)


def run_method(recipe: Recipe, task: Task, method: MethodCfg, seed: int, base: tuple[Any, Any],
               held_out: list[dict[str, Any]], reward: Any, extra_seconds: float) -> Any:
    """One method, one seed: train unless its model is there, evaluate unless its result is."""
    from rlhfkit.eval.comparison import MethodResult
    from rlhfkit.runs import write_text_atomic

    where = f"task {task.cfg.name}, seed {seed}, method {method.name}"
    results = seed_directory(recipe, task, seed) / "results"
    result_file = results / f"{method.name}.json"
    model_dir = None
    seconds = None
    if method.name != BASE:
        run_dir = seed_directory(recipe, task, seed) / method.name
        model_dir = run_dir / "model"
        argv = command_line(recipe, task, method, seed)
        train_file = results / f"{method.name}.train.json"
        if train_file.is_file() and (model_dir / "config.json").is_file():
            recorded = json.loads(train_file.read_text(encoding="utf-8"))
            if recorded["command"] != argv:
                raise RlhfkitError(f"{where}: its command changed since it ran ({train_file} "
                                   f"holds the old one); delete {run_dir} to run it again")
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
                raise RlhfkitError(f"{where}: `rlhfkit {' '.join(argv)}` finished without a model "
                                   f"in {model_dir}; pass its run directory as {{output_dir}}")
            write_text_atomic(train_file, json.dumps({"command": argv, "seconds": seconds},
                                                     indent=2) + "\n")
            # only an unfinished run resumes from its checkpoints: a finished one's model is
            # all compare reads, and a comparison's checkpoints run to tens of gigabytes
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        seconds = round(seconds + extra_seconds, 2)
    if result_file.is_file():
        saved = json.loads(result_file.read_text(encoding="utf-8"))
    else:
        print(f"[{where}] evaluating on {len(held_out)} held-out prompts")
        evaluation, conditioning = evaluate(model_dir, base, recipe.settings.model, held_out,
                                            task.cfg.gen, reward, recipe.settings.eval_seed + seed)
        saved = {"method": method.name, "seed": seed,
                 "model": str(model_dir or recipe.settings.model.path),
                 "conditioning": conditioning, "seconds": seconds,
                 "scores": evaluation.scores["score"], "kl": evaluation.kl,
                 "lengths": evaluation.lengths, "completions": evaluation.completions}
        write_text_atomic(result_file, json.dumps(saved, indent=1) + "\n")
    return MethodResult(method=method.name, seed=seed, scores=saved["scores"], kl=saved["kl"],
                        lengths=saved["lengths"], seconds=saved["seconds"])


def _train(argv: list[str], where: str) -> float:
    """Run ``rlhfkit <argv>`` in this process; its wall time in seconds."""
    from rlhfkit import cli

    print(f"[{where}] rlhfkit {' '.join(argv)}")
    started = time.perf_counter()
    try:
        code = cli.dispatch(argv)
    except (RlhfkitError, KeyboardInterrupt):
        print(f"rlhfkit compare: {where} stopped; fix it and run the same compare again (the "
              "finished methods are kept)", file=sys.stderr)
        raise
    if code != 0:
        raise RlhfkitError(f"{where}: `rlhfkit {' '.join(argv)}` exited with {code}")
    return time.perf_counter() - started


def evaluate(model_dir: Path | None, base: tuple[Any, Any], model_cfg: ModelCfg,
             held_out: list[dict[str, Any]], gen: GenCfg, reward: Any,
             seed: int) -> tuple[Any, dict[str, str] | None]:
    """Held-out completions of the model in ``model_dir`` (None: the base), scored, with KL to
    the base; and the conditioning it was asked with, if it recorded one."""
    from dataclasses import asdict

    from rlhfkit.conditioning import load_conditioning
    from rlhfkit.eval.policy import evaluate_policy
    from rlhfkit.models import load_causal_lm

    if model_dir is None:
        return evaluate_policy(*base, held_out, gen, {"score": reward}, seed), None
    model, tokenizer = load_causal_lm(replace(model_cfg, path=str(model_dir)))
    conditioning = load_conditioning(model_dir)
    evaluation = evaluate_policy(model, tokenizer, held_out, gen, {"score": reward}, seed,
                                 reference=lambda: nullcontext(base[0]), conditioning=conditioning)
    return evaluation, None if conditioning is None else asdict(conditioning)


def _write_tables(out: Path, recipe: Recipe, tables: list[dict[str, Any]]) -> None:
    from rlhfkit.runs import write_text_atomic

    title = f"# rlhfkit compare {recipe.path.name}\n"
    write_text_atomic(out / "results.md", title + "".join("\n" + t["markdown"] for t in tables))
    data = {"recipe": str(recipe.path), "tasks": [{k: v for k, v in t.items() if k != "markdown"}
                                                  for t in tables]}
    write_text_atomic(out / "results.json", json.dumps(data, indent=2) + "\n")
