"""The ``rlhfkit`` command: reads argv, prints the overview, the version and one-line errors.

Which module runs each subcommand is the command table's business (``rlhfkit.commands``);
this module only calls into it and turns a user error into one line per problem.
"""

from __future__ import annotations

import sys
import warnings

from rlhfkit import __version__, commands
from rlhfkit.errors import ConfigError, RlhfkitError, RlhfkitWarning
from rlhfkit.host_memory import keep_freed_memory, use_huge_pages_for_tensors


def overview() -> str:
    lines = [
        f"rlhfkit {__version__}: reinforcement learning from human feedback for language models",
        "",
        "usage: rlhfkit COMMAND [--config FILE] [--KEY VALUE ...]   (rlhfkit COMMAND --help)",
        "",
        "commands:",
    ]
    for name, summary in commands.summaries().items():
        lines.append(f"  {name:<10} {summary}")
    return "\n".join(lines) + "\n"


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(overview(), end="")
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    return commands.dispatch(argv)


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
        return _run(argv)
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
