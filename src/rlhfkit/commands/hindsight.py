"""``rlhfkit hindsight --method NAME``: the hindsight methods, one training loop file each.

The method picks the module under ``rlhfkit.train.hindsight``; from there on it is an ordinary
command with its own typed ``Config`` (``rlhfkit hindsight --method coh --help`` lists its
options). A recipe may name the method instead of the flag: ``method = "coh"`` at its top level.
"""

from __future__ import annotations

import importlib

from rlhfkit.commands import run_module
from rlhfkit.errors import ConfigError, did_you_mean

METHODS: dict[str, str] = {
    "coh": "rlhfkit.train.hindsight.coh",
    "hir": "rlhfkit.train.hindsight.hir",
    "relabel": "rlhfkit.train.hindsight.relabel",
    "hindsight-foresight": "rlhfkit.train.hindsight.foresight",
    "rlhs": "rlhfkit.train.hindsight.rlhs",
}

USAGE = (
    "usage: rlhfkit hindsight --method {" + "|".join(METHODS) + "} [--config FILE] "
    "[--KEY VALUE ...]"
)


def split_method(args: list[str]) -> tuple[str | None, list[str]]:
    """The ``--method`` value (flag first, then the config file's ``method`` key) and the rest.

    The method stays in the remaining arguments' config file, where each method's ``Config``
    accepts it as its ``method`` field (checked to be its own name).
    """
    rest, method, i = [], None, 0
    while i < len(args):
        key, has_value, value = args[i].partition("=")
        if key == "--method":
            if not has_value:
                if i + 1 >= len(args):
                    raise ConfigError("--method: needs a value; " + USAGE)
                value, i = args[i + 1], i + 1
            method = value
        else:
            rest.append(args[i])
        i += 1
    if method is None:
        method = _method_in_config_file(rest)
    return method, rest


def _method_in_config_file(args: list[str]) -> str | None:
    from rlhfkit import config_io

    for i, token in enumerate(args):
        key, has_value, value = token.partition("=")
        if key == "--config":
            path = value if has_value else (args[i + 1] if i + 1 < len(args) else None)
            if path is None:
                return None
            found = config_io.read_file(path).get("method")
            return found if isinstance(found, str) else None
    return None


def run(args: list[str]) -> int:
    method, rest = split_method(args)
    if method is None:
        if "-h" in args or "--help" in args:
            print(USAGE + "\n\nmethods:\n" + "\n".join(f"  {name}" for name in METHODS))
            return 0
        raise ConfigError(
            "hindsight: no method; pass --method "
            + "|".join(METHODS)
            + ' or set method = "..." in the --config file'
        )
    if method not in METHODS:
        hint = did_you_mean(method, METHODS, end="") or "choose one of " + ", ".join(METHODS)
        raise ConfigError(f"--method = {method!r}: unknown hindsight method; {hint}")
    module = importlib.import_module(METHODS[method])
    return run_module(module, f"hindsight-{method}", rest)
