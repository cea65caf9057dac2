"""The ``rlhfkit`` command: maps each subcommand to its module's ``Config`` and ``main``.

Each command module defines a frozen ``Config`` dataclass (its docstring's first line is the
summary below) and ``main(cfg)``. Modules are imported only when their command runs; the
overview reads summaries from source, so ``rlhfkit --help`` never imports torch.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import warnings

from rlhfkit import __version__
from rlhfkit.errors import ConfigError, RlhfkitError, RlhfkitWarning
from rlhfkit.host_memory import keep_freed_memory, use_huge_pages_for_tensors

COMMANDS: dict[str, str] = {
    "demo": "rlhfkit.commands.demo",
    "sft": "rlhfkit.train.sft",
    "reward": "rlhfkit.train.reward",
    "ppo": "rlhfkit.train.ppo",
    "grpo": "rlhfkit.train.grpo",
    "dpo": "rlhfkit.train.dpo",
    "generate": "rlhfkit.commands.generate",
    "score": "rlhfkit.commands.score",
    "compare": "rlhfkit.commands.compare",
}

# Commands with their own small argument syntax (verbs, positional names).
TOOLS: dict[str, str] = {
    "assets": "Prepare and list the embedded models and data (assets prepare | assets list).",
    "config": "Print a command's effective config as TOML (config show CMD [--config FILE] ...).",
    "label": "Human feedback: a labelling web app and its datasets (label init | serve | export ...).",
    "hindsight": "Learn from feedback in hindsight (hindsight --method coh|hir|relabel|"
    "hindsight-foresight|rlhs ...).",
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


def overview() -> str:
    lines = [
        f"rlhfkit {__version__}: reinforcement learning from human feedback for language models",
        "",
        "usage: rlhfkit COMMAND [--config FILE] [--KEY VALUE ...]   (rlhfkit COMMAND --help)",
        "",
        "commands:",
    ]
    for name, module in COMMANDS.items():
        lines.append(f"  {name:<10} {_summary(module)}")
    for name, summary in TOOLS.items():
        lines.append(f"  {name:<10} {summary}")
    return "\n".join(lines) + "\n"


def _command(name: str):
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, [*COMMANDS, *TOOLS], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; see rlhfkit --help"
        raise ConfigError(f"command {name!r}: unknown{hint}")
    return importlib.import_module(COMMANDS[name])


def run_command(name: str, args: list[str]) -> int:
    return run_module(_command(name), name, args)


def run_module(module, name: str, args: list[str]) -> int:
    """Load ``module.Config`` from ``args`` (``--help`` prints it instead) and run ``module.main``."""
    from rlhfkit import config_io

    if "-h" in args or "--help" in args:
        print(config_io.render_help(module.Config, name), end="")
        return 0
    cfg = config_io.load(module.Config, args, command=name)
    log = getattr(cfg, "log", None)
    if log is not None and not log.progress:
        from rlhfkit import progress

        progress.set_enabled(False)
    module.main(cfg)
    return 0


def config_show(args: list[str]) -> int:
    from rlhfkit import config_io

    if not args or args[0] != "show" or len(args) < 2 or args[1].startswith("-"):
        raise ConfigError(
            "config: usage is `rlhfkit config show COMMAND [--config FILE] [--KEY VALUE ...]`"
        )
    name = args[1]
    cfg = config_io.load(_command(name).Config, args[2:])
    print(config_io.to_toml(cfg), end="")
    return 0


def dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(overview(), end="")
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, args = argv[0], argv[1:]
    if name == "assets":
        from rlhfkit.commands import assets

        return assets.run(args)
    if name == "config":
        return config_show(args)
    if name == "label":
        from rlhfkit.commands import label

        return label.run(args)
    if name == "hindsight":
        from rlhfkit.commands import hindsight

        return hindsight.run(args)
    if name == "compare":  # a recipe of [[tasks]] tables: more than one flat Config holds
        from rlhfkit.commands import compare

        return compare.run(args)
    return run_command(name, args)


def main(argv: list[str] | None = None) -> int:
    """Entry point: a user error prints as one line per problem, never as a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    use_huge_pages_for_tensors()  # both before any command imports torch
    keep_freed_memory()
    prog = "rlhfkit" + (f" {argv[0]}" if argv and not argv[0].startswith("-") else "")
    library_format = warnings.formatwarning

    def one_line(message, category, *where):  # ours say all in one line; no source location
        if issubclass(category, RlhfkitWarning):
            return f"{prog}: warning: {message}\n"
        return library_format(message, category, *where)

    warnings.formatwarning = one_line
    try:
        return dispatch(argv)
    except ConfigError as e:
        for problem in e.problems:
            print(f"{prog}: error: {problem}", file=sys.stderr)
        return e.exit_code
    except RlhfkitError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(
            f"{prog}: interrupted; a run continues from its last checkpoint with --resume",
            file=sys.stderr,
        )
        return 130
    finally:
        warnings.formatwarning = library_format
