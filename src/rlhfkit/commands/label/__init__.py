"""``rlhfkit label``: people judge model outputs in a web app; their labels become datasets.

    rlhfkit label init --campaign round-1 --prompts prompts.txt --model runs/sft
    rlhfkit label annotator --campaign round-1 --name ada
    rlhfkit label serve --campaign round-1
    rlhfkit label export --campaign round-1 --as pairs --output pairs.jsonl
    rlhfkit label next-round --campaign round-1 --model runs/dpo

One loop: sample -> people judge -> train (``reward``, ``dpo``, ``sft`` read the export) ->
sample again. The verbs, by module:

    create.py   init, next-round   a campaign's outputs (sampled or imported) and its tasks
    serve.py    serve, annotator   the web app, and the accounts that sign in to it
    export.py   export             labels as training data
    manage.py   gold, overlap      known answers and the overlap ratio of a running campaign
    options.py  what they share: --campaign and --db, and opening the campaign's store
"""

from __future__ import annotations

from typing import Any

from rlhfkit import config_io
from rlhfkit.commands.label.create import InitConfig, NextRoundConfig, init, next_round
from rlhfkit.commands.label.export import ExportConfig, export
from rlhfkit.commands.label.manage import GoldConfig, OverlapConfig, gold, overlap
from rlhfkit.commands.label.serve import AnnotatorConfig, ServeConfig, annotator, serve
from rlhfkit.errors import ConfigError, did_you_mean

_ALIASES = {"--import": "--import_file", "--as": "--format"}  # Python keywords as flags


VERBS: dict[str, tuple[type, Any]] = {
    "init": (InitConfig, init),
    "serve": (ServeConfig, serve),
    "annotator": (AnnotatorConfig, annotator),
    "export": (ExportConfig, export),
    "next-round": (NextRoundConfig, next_round),
    "gold": (GoldConfig, gold),
    "overlap": (OverlapConfig, overlap),
}


def overview() -> str:
    lines = [
        "usage: rlhfkit label VERB [--config FILE] [--KEY VALUE ...]   (rlhfkit label VERB --help)",
        "",
        "verbs:",
    ]
    for verb, (cls, _) in VERBS.items():
        lines.append(f"  {verb:<11} {(cls.__doc__ or '').strip().splitlines()[0]}")
    return "\n".join(lines) + "\n"


def run(argv: list[str]) -> int:
    """Run ``rlhfkit label VERB [--KEY VALUE ...]``."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(overview(), end="")
        return 0
    verb, args = argv[0], argv[1:]
    if verb not in VERBS:
        hint = did_you_mean(verb, VERBS)
        raise ConfigError(f"label {verb!r}: unknown verb; {hint}use one of {', '.join(VERBS)}")
    cls, main = VERBS[verb]
    if "-h" in args or "--help" in args:
        print(config_io.render_help(cls, f"label {verb}"), end="")
        return 0
    args = [_alias(arg) for arg in args]
    main(config_io.load(cls, args, command=f"label {verb}"))
    return 0


def _alias(arg: str) -> str:
    flag, equals, value = arg.partition("=")
    return _ALIASES.get(flag, flag) + equals + value
