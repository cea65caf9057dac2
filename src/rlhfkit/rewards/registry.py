"""The reward registry: name a reward in a config, get a callable that scores completions.

A reward function takes ``(prompts, completions, **meta)`` and returns one float per
completion; each ``meta`` value is a per-item list (the extra columns of the dataset row, such
as a reasoning-gym item's answer). Built-ins are registered as *factories* ``(arg) -> reward``
so that a heavy reward (a trained head on an encoder) loads once, not on every call, and so
that one name can take an argument (``length:50``, ``reasoning_gym:basic_arithmetic``).

A reward spec (the string in a config) is one of:

- ``name`` or ``name:arg``: a registered reward (``sentiment``, ``format:^\\d+$``);
- ``path/to/file.py:fn``: a function in a user's file, or a name that file registers;
- ``package.module:fn``: the same from an importable module.

``compute_rewards`` is the one place scores enter training: it checks that a reward returned
one finite number per completion and, when a reward raises, names the item that broke it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rlhfkit.errors import ConfigError, RewardError, RlhfkitError, did_you_mean


class RewardFn(Protocol):
    """``(prompts, completions, **meta) -> scores``: one float per completion."""

    def __call__(
        self, prompts: list[str], completions: list[str], **meta: list[Any]
    ) -> list[float]: ...


RewardFactory = Callable[[str | None], RewardFn]

_FACTORIES: dict[str, RewardFactory] = {}


def register_reward(name: str) -> Callable[[RewardFactory], RewardFactory]:
    """Register a reward factory under ``name``; ``name:arg`` in a spec calls it with ``arg``.

    The factory runs once per ``load_reward``, so it is the place to load models; the reward
    function it returns runs on every batch. A factory that takes no argument should reject
    one (``no_argument``) rather than ignore it.
    """
    if not name or ":" in name or name != name.strip():
        raise ValueError(f"reward name {name!r}: use a non-empty name without ':' or spaces")

    def decorate(factory: RewardFactory) -> RewardFactory:
        previous = _FACTORIES.get(name)
        if previous is not None and _qualified(previous) != _qualified(factory):
            # The same function re-registering (its file loaded twice) is fine; a second
            # function silently replacing a reward everyone relies on is not.
            raise ConfigError(
                f"reward {name!r} is already registered by {_qualified(previous)}; "
                f"register {_qualified(factory)} under another name"
            )
        _FACTORIES[name] = factory
        return factory

    return decorate


def _qualified(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def no_argument(name: str, arg: str | None) -> None:
    """Raise when a reward that takes no argument was given one (``vader:x``)."""
    if arg is not None:
        raise ConfigError(f"reward {name}:{arg}: {name!r} takes no argument; write just {name!r}")


def list_rewards() -> dict[str, str]:
    """Registered reward names with the first line of each factory's docstring (help text)."""
    return {
        name: (inspect.getdoc(factory) or "").strip().split("\n")[0]
        for name, factory in sorted(_FACTORIES.items())
    }


@dataclass(frozen=True)
class Reward:
    """A loaded reward: the callable plus the spec it came from (for logs and provenance)."""

    name: str
    fn: RewardFn

    def __call__(
        self, prompts: list[str], completions: list[str], **meta: list[Any]
    ) -> list[float]:
        return self.fn(prompts, completions, **meta)


# --- resolving a spec ----------------------------------------------------------------------------


def resolve_reward(spec: str) -> tuple[RewardFactory, str | None]:
    """The factory and its argument for ``spec``, without running the factory (cheap: suits
    a config pre-flight check). Imports a user file or module, since that may register names.
    """
    spec = spec.strip()
    if not spec:
        raise ConfigError(
            "reward spec is empty; give a registered name "
            f"({_registered()}) or path/to/file.py:function"
        )
    name, has_arg, arg = spec.partition(":")
    if name in _FACTORIES:
        return _FACTORIES[name], (arg if has_arg and arg else None)
    # A file path may itself hold ':' (C:\...), so its function name is after the last one.
    source, has_attr, attr = spec.rpartition(":")
    if has_attr and source.endswith(".py"):
        return _from_namespace(spec, _import_file(spec, source), attr)
    if spec.endswith(".py"):
        raise ConfigError(f"reward {spec!r}: name the function too, as {spec}:FUNCTION")
    if has_attr and attr.isidentifier() and all(p.isidentifier() for p in source.split(".")):
        return _from_namespace(spec, _import_module(spec, source), attr)
    hint = did_you_mean(name, _FACTORIES)
    raise ConfigError(
        f"reward {spec!r}: not registered; {hint}registered rewards: "
        f"{_registered()}; or give path/to/file.py:function or "
        "package.module:function"
    )


def spec_problems(spec: str) -> list[str]:
    """What is wrong with a reward ``spec`` (empty when it resolves), each message without the
    "reward SPEC: " prefix, for a config's pre-flight ``Problem("reward", spec, message)``."""
    try:
        resolve_reward(spec)
    except ConfigError as e:
        return [problem.removeprefix(f"reward {spec.strip()!r}: ") for problem in e.problems]
    return []


def load_reward(spec: str) -> Reward:
    """The reward named by ``spec`` (see the module docstring), ready to call.

    >>> reward = load_reward("length:3")
    >>> reward.name, reward(["Q"], ["one two three four"])
    ('length:3', [-0.3333333333333333])
    """
    factory, arg = resolve_reward(spec)
    return Reward(name=spec.strip(), fn=factory(arg))


def _registered() -> str:
    return ", ".join(sorted(_FACTORIES)) or "none"


def _import_file(spec: str, source: str) -> dict[str, Any]:
    path = Path(source).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"reward {spec!r}: file {source!r} does not exist; check the path "
            "(relative paths start at the current directory)"
        )
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"rlhfkit_user_reward_{path.stem}_{digest}"
    if module_name in sys.modules:  # a pre-flight check imported it already: run it once
        return vars(sys.modules[module_name])
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    assert module_spec is not None and module_spec.loader is not None  # a .py file always has one
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look their module up here
    try:
        module_spec.loader.exec_module(module)
    except RlhfkitError:
        raise
    except Exception as e:
        del sys.modules[module_name]
        raise ConfigError(
            f"reward {spec!r}: importing {source} failed: {type(e).__name__}: {e}"
        ) from e
    return vars(module)


def _import_module(spec: str, source: str) -> dict[str, Any]:
    try:
        return vars(importlib.import_module(source))
    except RlhfkitError:
        raise
    except Exception as e:
        missing = getattr(e, "name", None)
        if (
            isinstance(e, ModuleNotFoundError)
            and missing
            and (source == missing or source.startswith(missing + "."))
        ):
            raise ConfigError(
                f"reward {spec!r}: no module {source!r} (not a registered reward "
                f"either: {_registered()}); check the name and that it is "
                "installed"
            ) from None
        raise ConfigError(
            f"reward {spec!r}: importing {source} failed: {type(e).__name__}: {e}"
        ) from e


def _from_namespace(spec: str, namespace: dict[str, Any], attr: str) -> tuple[RewardFactory, None]:
    """A user's function is the reward itself, unless it (or ``attr``) is a registered factory."""
    target = namespace.get(attr)
    if target is None and attr in _FACTORIES:
        return _FACTORIES[attr], None
    if target is None or not callable(target):
        found = sorted(
            k
            for k, v in namespace.items()
            if callable(v)
            and not k.startswith("_")
            and getattr(v, "__module__", None) == namespace.get("__name__")
        )
        raise ConfigError(
            f"reward {spec!r}: no function {attr!r} there (functions: {', '.join(found) or 'none'})"
        )
    if target in _FACTORIES.values():
        return target, None
    return (lambda arg: target), None


# --- calling it safely ---------------------------------------------------------------------------


class RewardItemError(RewardError):
    """A reward failed on one completion: ``item`` is its index in the call, so a caller that
    scores in batches can name the row in its own terms (``describe``)."""

    def __init__(self, reward: str, item: int, completion: str, problem: str):
        self.reward, self.item, self.completion, self.problem = reward, item, completion, problem
        super().__init__(self.describe(f"item {item}"))

    def describe(self, where: str) -> str:
        return (
            f"reward {self.reward!r} on {where} (completion {_excerpt(self.completion)}): "
            f"{self.problem}"
        )


def compute_rewards(
    reward: Reward | RewardFn,
    prompts: Sequence[str],
    completions: Sequence[str],
    /,
    **meta: Sequence[Any],
) -> list[float]:
    """Call ``reward`` and check its answer: one finite float per completion.

    When the reward raises, it is re-run item by item to find the completion that breaks it,
    so the error names the item instead of leaving the user to bisect a batch. Errors the
    reward raises as project errors (a missing column, say) already say what to fix and pass
    through unchanged.
    """
    name = getattr(reward, "name", None) or getattr(reward, "__name__", repr(reward))
    count = len(completions)
    if len(prompts) != count:
        raise RewardError(
            f"reward {name!r}: {len(prompts)} prompts for {count} completions; "
            "pass one prompt per completion"
        )
    for key, values in meta.items():
        if key in ("prompts", "completions"):
            raise RewardError(
                f"reward {name!r}: a meta column is called {key!r}, which is the "
                "name of a reward's own argument; rename the column"
            )
        if len(values) != count:
            raise RewardError(
                f"reward {name!r}: meta column {key!r} has {len(values)} values "
                f"for {count} completions; pass one per completion"
            )
    prompts, completions = list(prompts), list(completions)
    meta = {key: list(values) for key, values in meta.items()}
    try:
        scores = reward(prompts, completions, **meta)
    except RlhfkitError:
        raise
    except Exception as e:
        raise _locate_failure(reward, name, prompts, completions, meta, e) from e
    return _checked_scores(name, scores, completions)


def _locate_failure(
    reward: Reward | RewardFn,
    name: str,
    prompts: list[str],
    completions: list[str],
    meta: dict[str, list[Any]],
    batch_error: Exception,
) -> RewardError:
    for i in range(len(completions)):
        try:
            reward(
                prompts[i : i + 1],
                completions[i : i + 1],
                **{key: values[i : i + 1] for key, values in meta.items()},
            )
        except Exception as e:
            return RewardItemError(name, i, completions[i], f"raised {type(e).__name__}: {e}")
    return RewardError(
        f"reward {name!r} failed on a batch of {len(completions)} although every "
        f"item alone scores: {type(batch_error).__name__}: {batch_error}"
    )


def _checked_scores(name: str, scores: Any, completions: list[str]) -> list[float]:
    if hasattr(scores, "tolist"):  # a NumPy array or torch tensor
        scores = scores.tolist()
    if not isinstance(scores, (list, tuple)):
        raise RewardError(
            f"reward {name!r} returned {type(scores).__name__}; it must return a "
            "list with one float per completion"
        )
    if len(scores) != len(completions):
        raise RewardError(
            f"reward {name!r} returned {len(scores)} scores for "
            f"{len(completions)} completions; expected one per completion"
        )
    checked = []
    for i, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise RewardItemError(
                name,
                i,
                completions[i],
                f"returned {score!r} ({type(score).__name__}); scores must be floats",
            )
        if not math.isfinite(score):
            raise RewardItemError(
                name, i, completions[i], f"returned {score}; scores must be finite"
            )
        checked.append(float(score))
    return checked


def _excerpt(text: str, width: int = 60) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= width else text[: width - 3] + "...")
