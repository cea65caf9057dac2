"""Build a command's frozen config from defaults, a TOML/YAML file and dotted CLI overrides.

One pass, before any model loads: unknown keys (with a did-you-mean), wrong types, out-of-range
values, missing files and each config's own cross-field ``check()`` are all collected and raised
together as one ``ConfigError``, one line per problem: ``field = value: what is wrong; the fix``.

Why not tyro or argparse: the same coercion and checks must apply to values from a file and
from the command line, the error contract is one line per problem with exit code 2, and the
help text comes from field docstrings. That is ~300 lines here, against wrapping a library's
own error printing and merge rules.

Stdlib only at import time, so ``rlhfkit --help`` stays instant.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import inspect
import os
import textwrap
import time
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal

from rlhfkit.config import FileMustExist, ModelReference, Problem, is_run_dir
from rlhfkit.errors import ConfigError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


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
    body = tree.body[0].body  # type: ignore[attr-defined]
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


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _unwrap(tp: Any) -> tuple[Any, tuple]:
    """Split ``Annotated[T, c1, c2]`` into (T, (c1, c2))."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *extras = typing.get_args(tp)
        return base, tuple(extras)
    return tp, ()


def _optional_inner(tp: Any) -> Any | None:
    """T for ``T | None``; None otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _fields(cls: type) -> dict[str, tuple[Any, tuple]]:
    hints = _hints(cls)
    return {f.name: _unwrap(hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def option_paths(cls: type, prefix: str = "") -> dict[str, tuple[type, str, Any]]:
    """Every leaf option as ``dotted.path -> (owner class, field name, type)``."""
    paths = {}
    for name, (tp, _) in _fields(cls).items():
        if dataclasses.is_dataclass(tp):
            paths.update(option_paths(tp, f"{prefix}{name}."))
        else:
            paths[f"{prefix}{name}"] = (cls, name, tp)
    return paths


def _suggest(word: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# --- value coercion ------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return _type_name(inner)
    if typing.get_origin(tp) is Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if typing.get_origin(tp) is tuple:
        return "STR (repeatable)"
    return {bool: "BOOL", int: "INT", float: "FLOAT", str: "STR"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, from_cli: bool) -> Any:
    """Convert ``value`` to type ``tp``; raise ValueError with the fix on mismatch.

    CLI values arrive as strings and are parsed; file values must already have the right type
    (an int is accepted where a float is expected).
    """
    inner = _optional_inner(tp)
    if inner is not None:
        if value is None or (from_cli and str(value).lower() in ("none", "null")):
            return None
        return coerce(value, inner, from_cli)
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ValueError(
            f"is not one of {', '.join(map(str, choices))}{_suggest(str(value), map(str, choices))}"
        )
    if typing.get_origin(tp) is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(item, str) for item in items):
            raise ValueError("must be a list of strings")
        return tuple(items)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_cli and str(value).lower() in _TRUE | _FALSE:
            return str(value).lower() in _TRUE
        raise ValueError("is not a boolean; use true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_cli:
            with contextlib.suppress(ValueError):
                return int(value)
        raise ValueError("is not a whole number; give an integer such as 8")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_cli:
            with contextlib.suppress(ValueError):
                return float(value)
        raise ValueError("is not a number; give a value such as 0.5 or 1e-5")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError('is not a string; quote it, e.g. "value"')
    raise TypeError(f"unsupported config type {tp!r}")  # a bug in a config class, not user input


# --- building ------------------------------------------------------------------------------------


def build(
    cls: type, data: dict, cli_keys: set[str], prefix: str, problems: list[str], base: Any = None
) -> Any:
    """``cls`` from a nested dict of raw values, coerced to each field's type.

    Fields the dict leaves out keep ``base``'s values (or the class defaults): a group keeps the
    defaults its command gave it, so ``rlhfkit demo --optim.lr 1e-4`` changes the demo's learning
    rate and keeps its warm-up. Unknown keys and bad values are appended to ``problems`` (named
    ``prefix`` + key) instead of raised, so one pass reports them all; ``cli_keys`` are the
    dotted keys that came from flags.
    """
    fields = _fields(cls)
    for key in data:
        if key not in fields:
            problems.append(
                f"{prefix}{key}: unknown key{_suggest(key, fields)}"
                f" (valid keys: {', '.join(fields)})"
            )
    kwargs = {}
    for name, (tp, _) in fields.items():
        if name not in data:
            continue
        value = data[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                problems.append(
                    f"{prefix}{name} = {value!r}: is a group of options; write it as a "
                    f"[{prefix}{name}] table or set --{prefix}{name}.KEY"
                )
                continue
            group_base = getattr(base, name) if base is not None else _field_default(cls, name)
            kwargs[name] = build(tp, value, cli_keys, f"{prefix}{name}.", problems, group_base)
            continue
        try:
            kwargs[name] = coerce(value, tp, from_cli=f"{prefix}{name}" in cli_keys)
        except ValueError as e:
            problems.append(f"{prefix}{name} = {value!r}: {e}")
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _field_default(cls: type, name: str) -> Any:
    """The default of ``cls``'s field ``name`` (its factory called), or None when it has none."""
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return None if spec.default is dataclasses.MISSING else spec.default


def validate(cfg: Any, prefix: str = "") -> list[str]:
    """Every constraint and ``check()`` problem of a built config, one line each."""
    problems = []
    for name, (tp, constraints) in _fields(type(cfg)).items():
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(tp):
            problems += validate(value, f"{prefix}{name}.")
            continue
        if value is None:
            continue
        for constraint in constraints:
            message = constraint(value) if callable(constraint) else None
            if message:
                problems.append(f"{prefix}{name} = {value!r}: {message}")
    check = getattr(cfg, "check", None)
    if check is not None:
        for problem in check():
            problems.append(_render(prefix, problem))
    return problems


def _render(prefix: str, problem: Problem) -> str:
    return f"{prefix}{problem.field} = {problem.value!r}: {problem.message}"


def read_file(path: str) -> dict:
    """A TOML or YAML config file as a nested dict."""
    file = Path(os.path.expanduser(path))
    if not file.is_file():
        raise ConfigError(f"--config = {path!r}: no such file; check the path")
    text = file.read_text(encoding="utf-8")
    try:
        if file.suffix.lower() == ".toml":
            import tomllib

            return tomllib.loads(text)
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
            if not isinstance(data, dict):
                raise ConfigError(
                    f"--config = {path!r}: the top level must be a mapping of options"
                )
            return data
    except ConfigError:
        raise
    except Exception as e:  # tomllib / yaml parse errors carry the line number
        raise ConfigError(
            f"--config = {path!r}: not valid {file.suffix[1:].upper()}: {e}"
        ) from None
    raise ConfigError(f"--config = {path!r}: unknown format; use a .toml, .yaml or .yml file")


def parse_overrides(cls: type, args: list[str]) -> tuple[dict, set[str], str | None]:
    """Dotted ``--a.b value`` flags as a nested dict, the dotted keys set, and ``--config``."""
    paths = option_paths(cls)
    top = _fields(cls)
    overrides: dict = {}
    keys: set[str] = set()
    config_file = None
    problems = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("--") or token == "--":
            problems.append(f"{token!r}: unexpected argument; options are written --KEY VALUE")
            continue
        key, has_value, value = token[2:].partition("=")
        if key == "config":
            if not has_value:
                if i >= len(args):
                    problems.append("--config: needs a file path")
                    continue
                value, i = args[i], i + 1
            config_file = value
            continue
        path = _resolve_key(key, paths, top)
        if path is None:
            problems.append(
                f"--{key}: unknown option{_suggest(key, paths)} (see --help for all options)"
            )
            if not has_value and i < len(args) and not args[i].startswith("--"):
                i += 1  # its value: not a second problem
            continue
        tp = paths[path][2]
        if not has_value:
            takes_bool = tp is bool or _optional_inner(tp) is bool
            if takes_bool and (i >= len(args) or args[i].lower() not in _TRUE | _FALSE):
                value = "true"  # a bare boolean flag turns it on
            elif i < len(args) and (not args[i].startswith("--") or typing.get_origin(tp) is tuple):
                value, i = args[i], i + 1
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
    tp = top.get(key, (None,))[0]
    if dataclasses.is_dataclass(tp) and getattr(tp, "shorthand", None):
        return f"{key}.{tp.shorthand}"
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
    data = deep_merge(data, overrides)
    problems: list[str] = []
    cfg = build(cls, data, cli_keys, "", problems)
    if problems:
        raise ConfigError(problems)
    run = getattr(cfg, "run", None)
    if (
        run is not None
        and dataclasses.is_dataclass(run)
        and getattr(run, "resume", False)
        and config_file
        and "run.output_dir" not in cli_keys
    ):
        home = Path(os.path.expanduser(config_file)).parent
        if Path(config_file).name == "config.toml" and is_run_dir(home):
            run = dataclasses.replace(run, output_dir=str(home))
            cfg = dataclasses.replace(cfg, run=run)
    if run is not None and dataclasses.is_dataclass(run) and not run.output_dir and command:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        cfg = dataclasses.replace(
            cfg, run=dataclasses.replace(run, output_dir=f"runs/{command}-{stamp}")
        )
    problems = validate(cfg)
    if problems:
        raise ConfigError(problems)
    return cfg


# --- output --------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> dict:
    """A config as plain nested data (tuples as lists, None left out: TOML has no null)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif value is not None:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    # TOML needs plain keys before tables
    return dict(sorted(out.items(), key=lambda kv: isinstance(kv[1], dict)))


def to_toml(cfg: Any) -> str:
    import tomli_w

    return tomli_w.dumps(to_dict(cfg))


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

    def describe(owner: type, name: str, tp: Any, path: str, default: Any) -> list[str]:
        constraints = _fields(owner)[name][1]
        kind = (
            "FILE"
            if any(isinstance(c, FileMustExist) for c in constraints)
            else "MODEL"
            if any(isinstance(c, ModelReference) for c in constraints)
            else _type_name(tp)
        )
        shown = "" if default in ("", (), None) else f" (default: {default})"
        doc = field_docs(owner).get(name, "")
        return [
            f"  --{path} {kind}{shown}",
            *textwrap.wrap(doc, 92, initial_indent="      ", subsequent_indent="      "),
        ]

    def section(instance: Any, prefix: str, title: str) -> None:
        owner = type(instance)  # defaults shown are the instance's: a preset shows its own
        lines.append(title)
        for name, (tp, _) in _fields(owner).items():
            if not dataclasses.is_dataclass(tp):
                lines.extend(describe(owner, name, tp, prefix + name, getattr(instance, name)))
        lines.append("")
        for name, (tp, _) in _fields(owner).items():
            if dataclasses.is_dataclass(tp):
                doc = (inspect.getdoc(tp) or "").splitlines()[0] if inspect.getdoc(tp) else ""
                short = (
                    f"; --{prefix}{name} X sets --{prefix}{name}.{tp.shorthand}"
                    if getattr(tp, "shorthand", None)
                    else ""
                )
                section(
                    getattr(instance, name), f"{prefix}{name}.", f"[{prefix}{name}] {doc}{short}"
                )

    section(cls(), "", "options:")
    return "\n".join(lines).rstrip() + "\n"
