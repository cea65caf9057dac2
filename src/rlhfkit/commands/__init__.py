"""The command table: every ``rlhfkit`` subcommand, the module that runs it, and running one.

A command's module defines a frozen ``Config`` dataclass (the first line of its docstring is
the summary in ``rlhfkit --help``) and ``main(cfg)``; a tool has its own small argument syntax
(verbs, positional names) and a function that takes the arguments. Modules are imported only
when their command runs and summaries are read from source, so listing the commands never
imports torch. ``dispatch`` runs one command line in this process (``compare`` trains its
methods through it).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
from types import ModuleType

from rlhfkit import distributed
from rlhfkit.errors import ConfigError, RlhfkitError, did_you_mean

COMMANDS: dict[str, str] = {
    "demo": "rlhfkit.commands.demo",
    "sft": "rlhfkit.train.sft",
    "pretrain": "rlhfkit.train.pretrain",
    "reward": "rlhfkit.train.reward",
    "classify": "rlhfkit.train.classify",
    "ppo": "rlhfkit.train.ppo",
    "grpo": "rlhfkit.train.grpo",
    "dpo": "rlhfkit.train.dpo",
    "online-dpo": "rlhfkit.train.online_dpo",
    "ilql": "rlhfkit.train.ilql",
    "generate": "rlhfkit.commands.generate",
    "score": "rlhfkit.commands.score",
    "compare": "rlhfkit.commands.compare",
    "eval": "rlhfkit.commands.evaluate",
    "explain": "rlhfkit.commands.explain",
    "mt-bench": "rlhfkit.commands.mt_bench",
    "control": "rlhfkit.commands.control",
    "tune": "rlhfkit.commands.tune",
}
RECIPE_COMMANDS = ("compare", "tune")
"""Commands that read a recipe of tables (tasks, methods, a search space) that no single flat
``Config`` holds: their module's ``run(args)`` reads it."""


# Commands with their own small argument syntax (verbs, positional names): name -> (the
# ``module:function`` that takes the arguments after the name and returns the exit code, summary).
TOOLS: dict[str, tuple[str, str]] = {
    "assets": (
        "rlhfkit.commands.assets:run",
        "Prepare and list the embedded models and data (assets prepare | assets list).",
    ),
    "config": (
        "rlhfkit.commands:show_config",
        "Print a command's effective config as TOML (config show CMD [--config FILE] ...).",
    ),
    "label": (
        "rlhfkit.commands.label:run",
        "Human feedback: a labelling web app and its datasets (label init | serve | export ...).",
    ),
    "serve": (
        "rlhfkit.commands.serve:run",
        "Serve a model over an OpenAI-compatible HTTP API (serve MODEL [--port N] ...).",
    ),
    "report": (
        "rlhfkit.commands.report:run",
        "Write a run's HTML report, or several runs side by side (report RUN [RUN ...]).",
    ),
    "export": (
        "rlhfkit.commands.export:run",
        "Export a model as Hugging Face, GGUF, ONNX or int8 files, checked against the original "
        "(export RUN_OR_MODEL_DIR --format hf|gguf|onnx|int8).",
    ),
    "hindsight": (
        "rlhfkit.commands.hindsight:run",
        "Learn from feedback in hindsight "
        "(hindsight --method coh|hir|relabel|hindsight-foresight|rlhs ...).",
    ),
}


def summaries() -> dict[str, str]:
    """Each command's one-line summary, in the order ``rlhfkit --help`` lists them."""
    return {
        **{name: _summary(module) for name, module in COMMANDS.items()},
        **{name: summary for name, (_, summary) in TOOLS.items()},
    }


def _summary(module: str) -> str:
    """First line of ``Config``'s docstring, read from source without importing the module."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return ""
    tree = ast.parse(open(spec.origin, encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            return (ast.get_docstring(node) or "").strip().splitlines()[0]
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and any(alias.name == "Config" and alias.asname is None for alias in node.names)
        ):
            return _summary(node.module)  # defined beside it (compare's is in compare_recipe)
    return ""


def command_module(name: str) -> ModuleType:
    """The module of command ``name`` (one with ``Config`` and ``main``), imported."""
    if name not in COMMANDS:
        hint = did_you_mean(name, [*COMMANDS, *TOOLS], end="") or "see rlhfkit --help"
        raise ConfigError(f"command {name!r}: unknown; {hint}")
    return importlib.import_module(COMMANDS[name])


def dispatch(argv: list[str]) -> int:
    """Run ``rlhfkit <argv>`` (a command's name, then its arguments); its exit code."""
    name, args = argv[0], argv[1:]
    # hindsight picks its method's command, which run_module then runs like any other
    if distributed.launched() and name in ("assets", "config", "label", *RECIPE_COMMANDS):
        raise _one_process_only(name)
    if name in TOOLS:
        module, _, function = TOOLS[name][0].partition(":")
        return getattr(importlib.import_module(module), function)(args)
    module = command_module(name)
    if name in RECIPE_COMMANDS:
        return module.run(args)
    return run_module(module, name, args)


def run_module(module: ModuleType, name: str, args: list[str]) -> int:
    """Load ``module.Config`` from ``args`` (``--help`` prints it instead); run ``module.main``."""
    from rlhfkit import config_io

    if "-h" in args or "--help" in args:
        print(config_io.render_help(module.Config, name), end="")
        return 0
    cfg = config_io.load(module.Config, args, command=name)
    log = getattr(cfg, "log", None)
    if (log is not None and not log.progress) or not distributed.is_main():
        from rlhfkit import progress

        progress.set_enabled(False)  # data-parallel, rank 0 alone shows progress
    if not distributed.launched():
        module.main(cfg)
        return 0
    dist = getattr(cfg, "dist", None)
    if dist is None:
        raise _one_process_only(name)
    joined = not distributed.active()  # a caller may have joined the group already
    distributed.init(dist.timeout_s)
    try:
        # rank 0 prints the report; the others' errors still reach stderr
        main_only = (
            contextlib.nullcontext()
            if distributed.is_main()
            else contextlib.redirect_stdout(io.StringIO())
        )
        with main_only:
            module.main(cfg)
    except Exception as e:
        if not distributed.is_collective_error(e):
            raise
        raise RlhfkitError(
            f"rank {distributed.rank()} lost contact with the other ranks "
            f"({str(e).strip().splitlines()[0][:200]}): one failed or was stopped (torchrun "
            f"names it, and its own error is above) or was silent for dist.timeout_s = "
            f"{dist.timeout_s}; continue the run from its last checkpoint with --run.resume"
        ) from None
    finally:
        if joined:
            distributed.shutdown()
    return 0


def _one_process_only(name: str) -> RlhfkitError:
    return RlhfkitError(
        f"rlhfkit {name} runs in one process; start it without torchrun (the training "
        "commands sft, reward, dpo, online-dpo, grpo, ppo and hindsight run on several; ilql "
        "does not yet)"
    )


def show_config(args: list[str]) -> int:
    """``config show COMMAND [--config FILE] [--KEY VALUE ...]``: the effective config as TOML."""
    from rlhfkit import config_io

    if not args or args[0] != "show" or len(args) < 2 or args[1].startswith("-"):
        raise ConfigError(
            "config: usage is `rlhfkit config show COMMAND [--config FILE] [--KEY VALUE ...]`"
        )
    cfg = config_io.load(command_module(args[1]).Config, args[2:])
    print(config_io.to_toml(cfg), end="")
    return 0
