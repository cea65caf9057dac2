"""The recipe of ``rlhfkit tune``: a compare recipe with one task, one method, and the ranges
of its settings to search.

A tune recipe (TOML) holds ``Config``'s options at its top level, then ``[task]`` (compare's
``TaskCfg``: prompts, reward, held-out size, sampling), ``[method]`` (compare's ``MethodCfg``:
the command line that trains it, with compare's placeholders) and ``[search]``: one entry per
config key of that command, its range or choices. Each trial runs the command with
``--KEY VALUE`` for every searched key, and is trained and scored by compare's own machinery
on the validation split. ``load_recipe`` reports every problem at once, before Ray starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rlhfkit.commands import compare_recipe
from rlhfkit.commands.compare_recipe import BASE, MethodCfg, TaskCfg
from rlhfkit.config import ModelCfg, NonNegativeFloat, NonNegativeInt, PositiveInt, default
from rlhfkit.errors import ConfigError

SCORE = "score"
"""The metric every trial reports: the mean held-out reward on the validation split."""
RECIPE_HELP = """
A recipe (TOML) holds the options above at its top level, then:

  [task]       as a compare [[tasks]] table: name, reward, [task.data] (a built-in prompt set:
               trials are scored on its validation split), [task.gen]
  [method]     name and command = ["grpo", "--model", "{base}", "--run.output_dir",
               "{output_dir}", "--run.seed", "{seed}", ...] with compare's placeholders
  [search]     one entry per config key of the command:
               "optim.lr" = { low = 1e-6, high = 1e-4, log = true }
               "algo.group_size" = { choices = [4, 8] }
               "train.epochs" = { low = 1, high = 3 }       (integers when both bounds are)
"""


@dataclass(frozen=True)
class RayCfg:
    """Where the trials run: Ray Tune on a Ray started here, or on a cluster."""

    address: str = ""
    """Empty: start a local Ray with the CPUs the trials need; "auto" or ray://HOST:10001: join
    a running cluster (every node must see the recipe's paths and output_dir)."""
    cpus_per_trial: PositiveInt = 1
    """CPUs Ray reserves for each trial (its torch threads)."""
    gpus_per_trial: NonNegativeFloat = 0.0
    """GPUs Ray reserves for each trial (a fraction shares one GPU between trials)."""


@dataclass(frozen=True)
class Config:
    """Search a training method's settings with Optuna on Ray Tune, scored on the validation split."""

    output_dir: str = ""
    """Where the search lives; empty means runs/tune-<recipe name>."""
    trials: PositiveInt = 8
    """Settings to try (Optuna's TPE sampler picks each from the ones finished before it)."""
    parallel: PositiveInt = 2
    """Trials at once, each a Ray Tune trial."""
    seeds: PositiveInt = 1
    """Training seeds per trial; its score averages them, prompt by prompt."""
    seed: NonNegativeInt = 0
    """The sampler's seed: the same recipe and seed propose the same first settings."""
    eval_seed: NonNegativeInt = 1000
    """Sampling seed of the held-out evaluation (plus the training seed), the same for all trials."""
    prune: bool = True
    """Stop a trial whose held-out score, evaluated while it trains (eval/reward, each
    --eval.every steps of the online trainers), trails the median of the others at that point."""
    grace: PositiveInt = 1
    """Held-out evaluations a trial completes before it may be stopped."""
    overwrite: bool = False
    """Delete an earlier search in output_dir and start afresh (otherwise it resumes)."""
    model: ModelCfg = default(ModelCfg)
    """The base model every trial starts from ({base}), evaluated as the base row."""
    ray: RayCfg = default(RayCfg)
    """Where the trials run."""


@dataclass(frozen=True)
class Dimension:
    """One searched key: a float or integer range (``log``: sampled on a log scale), or choices."""

    key: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def flag(self, value: Any) -> list[str]:
        """The command-line flag that sets ``value``."""
        text = str(value).lower() if isinstance(value, bool) else str(value)
        return [f"--{self.key}", text]


@dataclass(frozen=True)
class Recipe:
    """A checked tune recipe, and the comparison its trials are run and scored by."""

    path: Path
    settings: Config
    task: TaskCfg
    method: MethodCfg
    space: tuple[Dimension, ...]

    @property
    def output_dir(self) -> Path:
        out = self.settings.output_dir or f"runs/tune-{self.path.stem}"
        return Path(out).expanduser().resolve()  # trials may run in other processes

    def comparison(self, trials: Sequence[MethodCfg] = ()) -> compare_recipe.Recipe:
        """The compare recipe of this search: the base and the given trials, on validation."""
        settings = compare_recipe.Config(
            output_dir=str(self.output_dir),
            seeds=self.settings.seeds,
            eval_seed=self.settings.eval_seed,
            held_out="validation",
            model=self.settings.model,
        )
        methods = (MethodCfg(name=BASE), *trials)
        return compare_recipe.Recipe(
            self.path, settings, (compare_recipe.Task(self.task, methods),)
        )

    def trial(self, name: str, params: dict[str, Any]) -> MethodCfg:
        """Trial ``name``: the method's command with the searched keys set to ``params``, and
        the trainer's own held-out evaluation on the validation split."""
        flags = [arg for d in self.space for arg in d.flag(params[d.key])]
        validation = ["--eval.split", "validation"] if _has_eval_split(self.method) else []
        return replace(self.method, name=name, command=(*self.method.command, *flags, *validation))


def _has_eval_split(method: MethodCfg) -> bool:
    """Whether the method's command evaluates held out while it trains (the online trainers)."""
    from rlhfkit import config_io
    from rlhfkit.commands import command_module

    try:
        config_io.parse_overrides(
            command_module(method.command[0]).Config, ["--eval.split", "test"]
        )
    except ConfigError:
        return False
    return True


def _dimension(key: str, spec: Any) -> tuple[Dimension | None, list[str]]:
    """A ``[search]`` entry as a ``Dimension``, or the problems with it."""
    where = f"search.{key}"
    if not isinstance(spec, dict):
        return None, [
            f"{where} = {spec!r}: give {{ low = ..., high = ... }} or {{ choices = [...] }}"
        ]
    unknown = sorted(set(spec) - {"low", "high", "log", "choices"})
    if unknown:
        return None, [
            f"{where}: unknown field(s) {', '.join(unknown)}; use low, high, log or choices"
        ]
    if "choices" in spec:
        choices = spec["choices"]
        if set(spec) != {"choices"} or not isinstance(choices, list) or len(choices) < 2:
            return None, [
                f"{where}.choices = {choices!r}: give a list of at least 2 values, and no range beside it"
            ]
        return Dimension(key, choices=tuple(choices)), []
    low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not math.isfinite(low) or not math.isfinite(high) or low >= high:
        return None, [f"{where}: low = {low!r}, high = {high!r}: give two numbers, low below high"]
    if not isinstance(log, bool) or (log and low <= 0):
        return None, [f"{where}.log = {log!r}: true or false; a log range needs low above 0"]
    integers = isinstance(low, int) and isinstance(high, int)
    return Dimension(
        key, low if integers else float(low), high if integers else float(high), log
    ), []


def _key_problems(method: MethodCfg, space: Sequence[Dimension]) -> list[str]:
    """Each searched key must be an option of the method's command, settable to its range's
    values, and not already fixed in the command (which of the two would hold is unclear)."""
    from rlhfkit import config_io
    from rlhfkit.commands import COMMANDS, command_module

    if not method.command or method.command[0] not in COMMANDS:
        return []  # compare's checks name the command's problem
    cls = command_module(method.command[0]).Config
    problems = []
    for dimension in space:
        flag = f"--{dimension.key}"
        if any(arg == flag or arg.startswith(flag + "=") for arg in method.command):
            problems.append(
                f"search.{dimension.key}: the method's command sets {flag} too; remove it there"
            )
            continue
        for value in dimension.choices or (dimension.low, dimension.high):
            try:
                data, keys, _ = config_io.parse_overrides(cls, dimension.flag(value))
            except ConfigError as e:
                problems.append(f"search.{dimension.key}: {e}")
                break
            found: list[str] = []  # a value of the wrong type, or out of the key's bounds
            built = config_io.build(cls, data, keys, "", found)
            found += [p for p in config_io.validate(built) if p.startswith(f"{dimension.key} = ")]
            if found:
                problems.append(f"search.{dimension.key}: {found[0]}")
                break
    return problems


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """The checked recipe: its top-level options (``overrides`` win), task, method and space."""
    from rlhfkit import config_io

    data = config_io.read_file(str(path))
    task_table, method_table = data.pop("task", None), data.pop("method", None)
    search = data.pop("search", None)
    cli_data, cli_keys, _ = config_io.parse_overrides(Config, list(overrides))
    problems: list[str] = []
    settings = config_io.build(Config, config_io.deep_merge(data, cli_data), cli_keys, "", problems)
    if not isinstance(task_table, dict):
        problems.append("task: missing; add a [task] table (see rlhfkit tune --help)")
        task_table = {}
    if not isinstance(method_table, dict):
        problems.append("method: missing; add a [method] table with its command")
        method_table = {}
    if not isinstance(search, dict) or not search:
        problems.append(
            'search: missing; add a [search] table, e.g. "optim.lr" = { low = 1e-6, high = 1e-4, log = true }'
        )
        search = {}
    task = config_io.build(TaskCfg, task_table, set(), "task.", problems)
    method = config_io.build(MethodCfg, method_table, set(), "method.", problems)
    space = []
    for key, spec in search.items():
        dimension, found = _dimension(key, spec)
        problems += found
        if dimension is not None:
            space.append(dimension)
    if problems:
        raise ConfigError(problems)
    recipe = Recipe(Path(path), settings, task, method, tuple(space))
    if method.name == BASE or not method.command:
        raise ConfigError(
            f"method.name = {method.name!r}: tune searches a method that trains; give it a "
            "name of its own and a command"
        )
    # compare's checks of the task, the method and the validation split, on this search's table
    try:
        compare_recipe.check(recipe.comparison((method,)))
    except ConfigError as e:
        problems += [
            p.replace("tasks[0].methods[1].", "method.").replace("tasks[0].", "task.")
            for p in e.problems
        ]
    problems += config_io.validate(settings)
    problems += _key_problems(method, space)
    if problems:
        raise ConfigError(problems)
    return recipe
