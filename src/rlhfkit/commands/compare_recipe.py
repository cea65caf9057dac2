"""The recipe of ``rlhfkit compare``: its options, tasks and methods, read and checked at once.

A recipe (TOML) holds ``Config``'s options at its top level, then one ``[[tasks]]`` table per task
(``TaskCfg``), each with its ``[[tasks.methods]]`` (``MethodCfg``): "base", the starting model as
is; a method with a command line that trains it, with placeholders (``PLACEHOLDERS``) compare
fills per seed; or the base model asked through an instruction template, which shows how much of
a hindsight-trained model's gain is the asking alone. ``load_recipe`` reports every problem in
the file at once, before any model loads; running it is ``rlhfkit.commands.compare``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlhfkit.commands import COMMANDS, TOOLS
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
from rlhfkit.errors import ConfigError

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
EMPTY = {
    "best": "no prompt's best sample reached min_best_score; lower it, or raise "
    "samples_per_prompt or data.max_prompts",
    "pairs": "no prompt's samples differed by min_margin; lower it, or raise "
    "samples_per_prompt or data.max_prompts",
}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RECIPE_HELP = """
A recipe (TOML) holds the options above at its top level, then one [[tasks]] table per task,
each with its own [[tasks.methods]]:

  [[tasks]]                 name, reward, samples_per_prompt, min_margin, [tasks.data], [tasks.gen]
  [[tasks.methods]]         name = "base" (the starting model, no command), or a name and
                            command = ["sft", "--data", "{best}", "--run.output_dir", "{output_dir}", ...]
                            or a name and instruction = "[very positive] {prompt}" (the base
                            model asked through that template, untrained)

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
    held_out: Literal["test", "validation"] = "test"
    """The split a table scores: test for the report; validation to choose a method's settings
    (learning rate, epochs ...) without looking at the test prompts (built-in prompt sets only)."""
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
            yield Problem(
                "reward", self.reward, "is required; name the task's reward, e.g. sentiment"
            )
        if self.data.eval_size == 0:  # 1 is the data group's own problem
            yield Problem(
                "data.eval_size",
                0,
                "must be at least 2: compare evaluates every method on held-out prompts",
            )


@dataclass(frozen=True)
class MethodCfg:
    """One method: its row name and the rlhfkit command line that trains it."""

    name: str = ""
    """Its row in the table and its directory; "base" is the starting model, run as is."""
    command: tuple[str, ...] = ()
    """The arguments of an `rlhfkit ...` call, with placeholders such as {output_dir} {seed}."""
    instruction: str = ""
    """Instead of a command: the base model asked through this template, {prompt} where the
    prompt goes (e.g. "[very positive] {prompt}"), as a hindsight-trained model is asked through
    its conditioning.json: how much of its gain the asking alone gives."""

    @property
    def trains(self) -> bool:
        """Whether the method trains a model (the base and an asked base do not)."""
        return bool(self.command)


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
    return {
        name
        for arg in command
        for _, name, _, _ in string.Formatter().parse(arg)
        if name is not None
    }


def fill(command: Sequence[str], values: dict[str, Any]) -> list[str]:
    """The command line with every placeholder replaced by its value."""
    return [arg.format_map(values) for arg in command]


def _command_problems(method: MethodCfg) -> Iterable[Problem]:
    if method.name == BASE:
        if method.command or method.instruction:
            field = "command" if method.command else "instruction"
            yield Problem(
                field,
                " ".join(method.command) or method.instruction,
                "base is the starting model, evaluated as is; remove its "
                + field
                + " (an asked base is a method of its own name with an instruction)",
            )
        return
    if method.instruction:
        if method.command:
            yield Problem(
                "instruction",
                method.instruction,
                "a method either trains (command) "
                "or asks the base model (instruction), not both; remove one",
            )
        elif method.instruction.count("{prompt}") != 1:
            yield Problem(
                "instruction",
                method.instruction,
                "must contain {prompt} exactly once, "
                "where the prompt goes, as in '[very positive] {prompt}'",
            )
        return
    if not method.command:
        yield Problem(
            "command",
            "",
            "is required: the rlhfkit arguments that train the method, "
            'e.g. ["sft", "--data", "{best}", "--run.output_dir", "{output_dir}"], or '
            'an instruction = "... {prompt}" that asks the base model',
        )
        return
    if method.command[0] not in {*COMMANDS, *TOOLS} - {"compare", "tune"}:
        yield Problem(
            "command",
            " ".join(method.command),
            f"starts with {method.command[0]!r}, not an rlhfkit training command",
        )
    names: set[str] = set()
    for arg in method.command:  # each wrong argument named on its own
        try:
            found = placeholders([arg])
        except ValueError as e:  # a lone brace
            yield Problem("command", arg, f"{e}; write a literal brace as {{{{ or }}}}")
            continue
        for name in sorted(found - PLACEHOLDERS.keys()):
            yield Problem(
                "command",
                arg,
                f"unknown placeholder {{{name}}}; use one of "
                + ", ".join(f"{{{known}}}" for known in PLACEHOLDERS),
            )
        names |= found
    for needed in ("output_dir", "seed"):
        if needed not in names:
            yield Problem(
                "command",
                " ".join(method.command),
                f"never uses {{{needed}}}; pass it (e.g. --run.{needed} {{{needed}}}) so "
                "the run lands where compare evaluates it, once per seed",
            )


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
    settings = config_io.build(Config, config_io.deep_merge(data, cli_data), cli_keys, "", problems)
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        problems.append(
            "tasks: missing; add a [[tasks]] table per task (see rlhfkit compare --help)"
        )
        tables = []
    tasks = []
    for i, table in enumerate(tables):
        where = f"tasks[{i}]."
        table = dict(table)
        method_tables = table.pop("methods", None)
        cfg = config_io.build(TaskCfg, table, set(), where, problems)
        if not isinstance(method_tables, list) or not method_tables:
            problems.append(
                f"{where}methods: missing; add [[tasks.methods]] tables, one per method"
            )
            method_tables = []
        methods = tuple(
            config_io.build(
                MethodCfg,
                m if isinstance(m, dict) else {},
                set(),
                f"{where}methods[{j}].",
                problems,
            )
            for j, m in enumerate(method_tables)
        )
        tasks.append(Task(cfg, methods))
    if problems:
        raise ConfigError(problems)
    recipe = Recipe(Path(path), settings, tuple(tasks))
    check(recipe)
    return recipe


def check(recipe: Recipe) -> None:
    """Every problem of a built recipe's values, methods and names, raised at once."""
    from rlhfkit import config_io
    from rlhfkit.data.builtin import is_builtin

    settings, tasks = recipe.settings, recipe.tasks
    problems = config_io.validate(settings)
    for i, task in enumerate(tasks):
        problems += config_io.validate(task.cfg, f"tasks[{i}].")
        if settings.held_out == "validation" and (
            task.cfg.data.eval_prompts or not is_builtin(task.cfg.data.prompts)
        ):
            problems.append(
                f"tasks[{i}].data.eval_prompts = {task.cfg.data.eval_prompts!r}: "
                'held_out = "validation" needs a built-in prompt set (vader:..., '
                "reasoning_gym:...) and no eval_prompts file, which has no "
                'validation split; or set held_out = "test"'
            )
        seen: set[str] = set()
        for j, method in enumerate(task.methods):
            where = f"tasks[{i}].methods[{j}]."
            if not NAME.fullmatch(method.name):
                problems.append(
                    f"{where}name = {method.name!r}: is required: letters, digits, '.', '_' or '-'"
                )
            elif method.name in seen:
                problems.append(
                    f"{where}name = {method.name!r}: appears twice in task "
                    f"{task.cfg.name!r}; give each method its own name"
                )
            seen.add(method.name)
            problems += [
                f"{where}{p.field} = {p.value!r}: {p.message}" for p in _command_problems(method)
            ]
        if BASE not in seen:
            problems.append(
                f'tasks[{i}].methods: no "base"; add [[tasks.methods]] name = "base", '
                "the starting model every method is measured against"
            )
    names = [task.cfg.name for task in tasks]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"tasks: name {name!r} appears twice; give each task its own name")
    if problems:
        raise ConfigError(problems)
