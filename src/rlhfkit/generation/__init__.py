"""Generation backends: one protocol, chosen by name with ``gen.backend``.

A backend turns prompts into a ``Rollout`` (token ids, masks, per-token logprobs). Built-in
backends are imported only when chosen, so an optional engine costs nothing until it is used.
A plug-in registers its own::

    @register_backend("mine")
    class MyBackend:
        def __init__(self, model, tokenizer): ...
        def generate(self, prompts, cfg, seed): ...
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from rlhfkit.config import GEN_BACKENDS
from rlhfkit.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from rlhfkit.batch import Prompt, Rollout
    from rlhfkit.conditioning import Conditioning
    from rlhfkit.config import GenCfg


class GenerationBackend(Protocol):
    """Samples completions; built as ``Backend(model, tokenizer)``."""

    pad_id: int
    """The token its rollouts are padded with (the tokenizer's pad token, else EOS)."""

    def generate(self, prompts: list[Prompt], cfg: GenCfg, seed: int) -> Rollout:
        """One completion per prompt, in order; the same prompts, cfg and seed, the same rollout.

        A backend that can sample hindsight-trained models also takes ``response_prefix: str``,
        text each answer starts with that is no part of the completion (see ``hf``).
        """
        ...


BackendFactory = Callable[[Any, Any], GenerationBackend]

_registry: dict[str, BackendFactory] = {}


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    """Class decorator: make a backend available as ``gen.backend = name``."""

    def decorate(factory: BackendFactory) -> BackendFactory:
        _registry[name] = factory
        GEN_BACKENDS.add(name)  # a name gen.backend accepts
        return factory

    return decorate


def backend_names() -> list[str]:
    """Every name ``gen.backend`` accepts: built-ins and registered plug-ins."""
    return sorted(GEN_BACKENDS)


def get_backend(name: str, model: Any, tokenizer: Any) -> GenerationBackend:
    """The backend registered as ``name``, built around a loaded model and its tokenizer."""
    if (
        name not in _registry and name in GEN_BACKENDS
    ):  # a built-in: module <name> here (- as _) registers it
        importlib.import_module(f"{__name__}.{name.replace('-', '_')}")
    if name not in _registry:
        known = backend_names()
        hint = did_you_mean(name, known)
        raise ConfigError(
            f"gen.backend {name!r} is not a generation backend; {hint}"
            f"known backends: {', '.join(known)}"
        )
    return _registry[name](model, tokenizer)


def generate_conditioned(
    backend: GenerationBackend,
    prompts: list[Prompt],
    cfg: GenCfg,
    seed: int,
    conditioning: Conditioning | None,
) -> Rollout:
    """Sample as a hindsight-trained model must be asked (its ``conditioning.json``), or plainly.

    The instruction rewrites each prompt and the response prefix opens each answer. The rollout
    keeps the original prompts, so rewards and output files see what was asked; its token ids
    are what the model saw, and its completions hold only what the model wrote after the prefix.
    """
    if conditioning is None:
        return backend.generate(prompts, cfg, seed)
    asked = [conditioning.apply(prompt) for prompt in prompts]
    prefix = conditioning.response_prefix
    rollout = (
        backend.generate(asked, cfg, seed, response_prefix=prefix)
        if prefix
        else backend.generate(asked, cfg, seed)
    )  # a backend without prefixes still works
    return dataclasses.replace(rollout, prompts=list(prompts))


def describe_conditioning(conditioning: Conditioning) -> str:
    """One line saying how prompts are conditioned, for the console."""
    parts = []
    if conditioning.instruction != "{prompt}":
        parts.append(f"prompts as {conditioning.instruction!r}")
    if conditioning.response_prefix:
        parts.append(f"answers start with {conditioning.response_prefix!r}")
    return f"conditioning.json ({conditioning.method}): " + (
        ", ".join(parts) or "prompts unchanged"
    )
