"""Build a command's frozen config from defaults, a TOML/YAML file and dotted CLI overrides.

One pass, before any model loads: unknown keys (with a did-you-mean), wrong types, out-of-range
values, missing files and each config's own cross-field ``check()`` are all collected and raised
together as one ``ConfigError``, one line per problem: ``field = value: what is wrong; the fix``.

pydantic reads each value as its field's type and checks the constraints annotated on it:
leniently for command-line strings, strictly for a file's values (JSON's rules: a list may stand
for a tuple and an int for a float, nothing else converts). What stays here is the contract no
library gives as is: merging (defaults < file < flags), dotted flags with shorthands, the
one-line messages and ``--help`` from field docstrings. pydantic loads only to validate, so
``--help`` stays instant.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import math
import os
import textwrap
import time
import typing
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, Literal

from rlhfkit.config import Check, RunCfg, is_run_dir
from rlhfkit.errors import ConfigError, did_you_mean

_BOOLS = {"true", "false", "yes", "no", "on", "off", "1", "0"}  # what may follow a boolean flag
_FIXES = {
    "float": "is not a number; give a value such as 0.5 or 1e-5",
    "int": "is not a whole number; give an integer such as 8",
    "bool": "is not a boolean; use true or false",
    "string": 'is not a string; quote it, e.g. "value"',
    "tuple": "must be a list of strings",
}  # by the first word of pydantic's error type


# --- introspection -------------------------------------------------------------------------------


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (the string literal after it).

    A subclass that re-declares a field to change its default inherits the base's docstring.
    """
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(base):
            docs.update(field_docs(base))
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return docs
    body = typing.cast(ast.ClassDef, tree.body[0]).body
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _is_group(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _split(hint: Any) -> tuple[Any, tuple[Any, ...]]:
    """``Annotated[T, c1, c2]`` -> (T, (c1, c2)): a type and its constraints."""
    if typing.get_origin(hint) is typing.Annotated:
        tp, *constraints = typing.get_args(hint)
        return tp, tuple(constraints)
    return hint, ()


@cache
def _fields(cls: type) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """Each init field's type and constraints."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: _split(hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def option_paths(cls: type, prefix: str = "") -> dict[str, tuple[type, str, Any]]:
    """Every leaf option as ``dotted.path -> (owner class, field name, type)``."""
    paths = {}
    for name, (tp, _) in _fields(cls).items():
        if _is_group(tp):
            paths.update(option_paths(tp, f"{prefix}{name}."))
        else:
            paths[f"{prefix}{name}"] = (cls, name, tp)
    return paths


def _hint(word: str, choices: Iterable[str]) -> str:
    return f"; {close}" if (close := did_you_mean(word, choices, end="")) else ""


def _type_name(tp: Any, constraints: tuple[Any, ...] = ()) -> str:
    """How help names a value: FILE, {a,b}, INT, ..."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if checks := [c.metavar for c in constraints if isinstance(c, Check)]:
        return checks[0]
    if typing.get_origin(tp) is Literal:
        return "{" + ",".join(map(str, args)) + "}"
    if typing.get_origin(tp) is tuple:
        return "STR (repeatable)"
    if len(args) == 1:  # T | None
        return _type_name(args[0])
    return {bool: "BOOL", int: "INT", float: "FLOAT", str: "STR"}.get(tp, str(tp))


# --- pydantic reads and checks; its verdicts become rlhfkit's messages ---------------------------


@cache
def _adapter(tp: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(tp)


def _read(tp: Any, value: Any, from_cli: bool) -> Any:
    """``value`` as type ``tp``; raises pydantic's ValidationError."""
    if from_cli and type(None) in typing.get_args(tp) and value.lower() in ("none", "null"):
        return None
    if from_cli:
        return _adapter(tp).validate_python(value)  # lenient: "8", "1e-5", "yes"
    return _adapter(tp).validate_json(json.dumps(value, default=str), strict=True)


def _message(error: Any, tp: Any, constraints: tuple[Any, ...]) -> str:
    """One pydantic error on a field of type ``tp`` as ``what is wrong; the fix``."""
    kind, value = error["type"].split("_")[0], error["input"]
    if kind == "value":  # a Check's own message
        return str(error["ctx"]["error"])
    if kind == "literal":
        choices = [str(c) for c in typing.get_args(tp)]
        return f"is not one of {', '.join(choices)}{_hint(str(value), choices)}"
    if kind in ("greater", "less", "predicate"):
        return _bound_message(value, constraints)
    if error["loc"] and isinstance(error["loc"][-1], int):  # an item of a tuple
        return _FIXES["tuple"]
    return _FIXES.get(kind) or str(error["msg"])


def _bound_message(value: float, constraints: tuple[Any, ...]) -> str:
    """A value outside its field's annotated bounds (or not finite), with the range to give."""
    bounds = {
        key: bound
        for c in constraints
        for key in ("gt", "ge", "le")
        if (bound := getattr(c, key, None)) is not None
    }
    low, high = bounds.get("gt", bounds.get("ge", -math.inf)), bounds.get("le", math.inf)
    span = f"{'(' if 'gt' in bounds else '['}{low:g}, {high:g}]"
    wanted = f"in {span}" if "le" in bounds else f"{'>' if 'gt' in bounds else '>='} {low:g}"
    if not math.isfinite(value):
        return f"must be a finite number; give a value {wanted}"
    if "gt" in bounds or "le" in bounds:
        return f"must lie in {span}; give a value in that range"
    return f"must be at least {low:g}; give a value {wanted}"


# --- building ------------------------------------------------------------------------------------


def build(
    cls: type, data: dict, cli_keys: set[str], prefix: str, problems: list[str], base: Any = None
) -> Any:
    """``cls`` from a nested dict of raw values, each read as its field's type.

    Fields the dict leaves out keep ``base``'s values (or the class defaults): a group keeps the
    defaults its command gave it, so ``rlhfkit demo --optim.lr 1e-4`` changes the demo's learning
    rate and keeps its warm-up. Unknown keys and values of the wrong type are appended to
    ``problems`` (named ``prefix`` + key) instead of raised, so one pass reports them all;
    ``cli_keys`` are the dotted keys that came from flags. Constraints are ``validate``'s.
    """
    from pydantic import ValidationError

    fields, base = _fields(cls), cls() if base is None else base
    problems += [
        f"{prefix}{key}: unknown key{_hint(key, fields)} (valid keys: {', '.join(fields)})"
        for key in data
        if key not in fields
    ]
    values = {}
    for name in [name for name in fields if name in data]:
        tp, value, path = fields[name][0], data[name], prefix + name
        if _is_group(tp) and isinstance(value, dict):
            values[name] = build(tp, value, cli_keys, f"{path}.", problems, getattr(base, name))
        elif _is_group(tp):
            problems.append(
                f"{path} = {value!r}: is a group of options; write it as a [{path}] "
                f"table or set --{path}.KEY"
            )
        else:
            try:
                values[name] = _read(tp, value, from_cli=path in cli_keys)
            except ValidationError as e:
                problems.append(f"{path} = {value!r}: {_message(e.errors()[0], tp, ())}")
    return dataclasses.replace(base, **values)


def validate(cfg: Any, prefix: str = "") -> list[str]:
    """Every problem of a built config, one line each: pydantic's check of each field against
    its annotated type and constraints, then every group's own cross-field ``check()``."""
    from pydantic import ValidationError

    problems = []
    try:
        _adapter(type(cfg)).validate_json(json.dumps(to_dict(cfg)), strict=True)
    except ValidationError as e:
        for error in e.errors():
            tp, constraints, path = type(cfg), (), []
            for part in error["loc"]:  # down to the field: ("gen", "stop", 0) is gen.stop
                if isinstance(part, str) and _is_group(tp):
                    (tp, constraints), path = _fields(tp)[part], [*path, part]
            problems.append(
                f"{prefix}{'.'.join(path)} = {error['input']!r}: {_message(error, tp, constraints)}"
            )
    return problems + list(_checks(cfg, prefix))


def _checks(cfg: Any, prefix: str) -> Iterator[str]:
    """Each group's ``check()``, inner groups first."""
    for name, (tp, _) in _fields(type(cfg)).items():
        if _is_group(tp):
            yield from _checks(getattr(cfg, name), f"{prefix}{name}.")
    for problem in getattr(cfg, "check", lambda: ())():
        yield f"{prefix}{problem.field} = {problem.value!r}: {problem.message}"


def read_file(path: str) -> dict:
    """A TOML or YAML config file as a nested dict."""
    file = Path(os.path.expanduser(path))
    if not file.is_file():
        raise ConfigError(f"--config = {path!r}: no such file; check the path")
    text, kind = file.read_text(encoding="utf-8"), file.suffix.lower()
    if kind not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"--config = {path!r}: unknown format; use a .toml, .yaml or .yml file")
    try:
        if kind == ".toml":
            import tomllib

            return tomllib.loads(text)
        import yaml

        data = yaml.safe_load(text) or {}
    except Exception as e:  # tomllib / yaml parse errors carry the line number
        raise ConfigError(f"--config = {path!r}: not valid {kind[1:].upper()}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config = {path!r}: the top level must be a mapping of options")
    return data


def parse_overrides(cls: type, args: list[str]) -> tuple[dict, set[str], str | None]:
    """Dotted ``--a.b value`` flags as a nested dict, the dotted keys set, and ``--config``."""
    paths, top = option_paths(cls), _fields(cls)
    overrides: dict = {}
    keys: set[str] = set()
    config_file, problems, i = None, [], 0
    while i < len(args):
        token, i = args[i], i + 1
        following = args[i] if i < len(args) else None  # the value, unless it is the next flag
        if not token.startswith("--") or token == "--":
            problems.append(f"{token!r}: unexpected argument; options are written --KEY VALUE")
            continue
        key, has_value, value = token[2:].partition("=")
        if key == "config":
            if not has_value and following is None:
                problems.append("--config: needs a file path")
            elif not has_value:
                value, i = following, i + 1
            config_file = value
            continue
        path = _resolve_key(key, paths, top)
        if path is None:
            problems.append(
                f"--{key}: unknown option{_hint(key, paths)} (see --help for all options)"
            )
            if not has_value and following is not None and not following.startswith("--"):
                i += 1  # its value: not a second problem
            continue
        tp = paths[path][2]
        if not has_value:
            if _type_name(tp) == "BOOL" and (following is None or following.lower() not in _BOOLS):
                value = "true"  # a bare boolean flag turns it on
            elif following is not None and (
                not following.startswith("--") or typing.get_origin(tp) is tuple
            ):
                value, i = following, i + 1
            else:
                problems.append(f"--{key}: needs a value ({_type_name(tp)})")
                continue
        *groups, leaf = path.split(".")
        node = overrides
        for group in groups:
            node = node.setdefault(group, {})
        if typing.get_origin(tp) is tuple:
            node[leaf] = (node[leaf] if path in keys else []) + [value]  # repeat to add
        else:
            node[leaf] = value
        keys.add(path)
    if problems:
        raise ConfigError(problems)
    return overrides, keys, config_file


def _resolve_key(key: str, paths: dict, top: dict) -> str | None:
    """``model`` -> ``model.path`` (a group's shorthand); a bare leaf name unique across groups."""
    if key in paths:
        return key
    group = top.get(key, (None,))[0]
    if _is_group(group) and (shorthand := getattr(group, "shorthand", None)):
        return f"{key}.{shorthand}"
    matches = [p for p in paths if p.rsplit(".", 1)[-1] == key]
    return matches[0] if len(matches) == 1 else None


def deep_merge(base: dict, extra: dict) -> dict:
    """``base`` updated by ``extra``, nested tables merged key by key rather than replaced."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load(cls: type, args: list[str], command: str = "") -> Any:
    """The validated config for ``cls`` from ``--config FILE`` and ``--dotted.key value`` args.

    An empty ``run.output_dir`` becomes ``runs/<command>-<date>-<time>`` here, once, so the run
    directory's saved config names where the run really lives. With ``--resume`` and a run's own
    ``--config RUN/config.toml``, the run is RUN, where the file is now: a copied or moved run
    resumes itself, not the directory named inside (an explicit ``--run.output_dir`` wins).
    """
    overrides, cli_keys, config_file = parse_overrides(cls, args)
    data = read_file(config_file) if config_file else {}
    problems: list[str] = []
    cfg = build(cls, deep_merge(data, overrides), cli_keys, "", problems)
    if problems:
        raise ConfigError(problems)
    run = getattr(cfg, "run", None)
    if isinstance(run, RunCfg) and run.resume and config_file and "run.output_dir" not in cli_keys:
        home = Path(os.path.expanduser(config_file)).parent
        if Path(config_file).name == "config.toml" and is_run_dir(home):
            run = dataclasses.replace(run, output_dir=str(home))
    if isinstance(run, RunCfg) and not run.output_dir and command:
        run = dataclasses.replace(
            run, output_dir=f"runs/{command}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    if isinstance(run, RunCfg):
        cfg = dataclasses.replace(cfg, run=run)
    problems = validate(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


# --- output --------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> dict:
    """A config as plain nested data (tuples as lists, None left out: TOML has no null)."""
    return _adapter(type(cfg)).dump_python(cfg, mode="json", exclude_none=True, warnings=False)


def to_toml(cfg: Any) -> str:
    import tomli_w

    return tomli_w.dumps(to_dict(cfg))  # it writes plain keys before tables, as TOML needs


def render_help(cls: type, command: str) -> str:
    """``--help`` text: the command's summary, then every option with its type, default and doc."""
    summary = (inspect.getdoc(cls) or "").strip()
    lines = [
        f"usage: rlhfkit {command} [--config FILE] [--KEY VALUE ...]",
        "",
        summary,
        "",
        "Options may also come from a TOML/YAML file (--config); flags override it.",
        "A bare name works when unique (--seed = --run.seed); booleans may omit the value.",
        "",
    ]

    def section(instance: Any, prefix: str, title: str) -> None:
        owner = type(instance)  # defaults shown are the instance's: a preset shows its own
        lines.append(title)
        for name, (tp, constraints) in _fields(owner).items():
            if not _is_group(tp):
                default = getattr(instance, name)
                shown = "" if default in ("", (), None) else f" (default: {default})"
                lines.append(f"  --{prefix}{name} {_type_name(tp, constraints)}{shown}")
                lines.extend(
                    textwrap.wrap(
                        field_docs(owner).get(name, ""),
                        92,
                        initial_indent=" " * 6,
                        subsequent_indent=" " * 6,
                    )
                )
        lines.append("")
        for name, (tp, _) in _fields(owner).items():
            if _is_group(tp):
                doc = (inspect.getdoc(tp) or "").split("\n")[0]
                short = getattr(tp, "shorthand", None)
                short = f"; --{prefix}{name} X sets --{prefix}{name}.{short}" if short else ""
                section(
                    getattr(instance, name), f"{prefix}{name}.", f"[{prefix}{name}] {doc}{short}"
                )

    section(cls(), "", "options:")
    return "\n".join(lines).rstrip() + "\n"
