"""A campaign's content before it is stored: outputs sampled or imported, with provenance, and
the tasks made from them; and reading back what a campaign holds.

``rlhfkit label init`` and ``next-round`` (``rlhfkit.commands.label``) build a ``PromptPlan``
per prompt, in memory, then ``store_plans`` writes them: the slow, failure-prone part
(loading models, sampling) is over before the store is touched.

Provenance of a sampled output: the model's path, ``weights_hash`` of its weight files, the
generation settings (``GenCfg`` as a dict) with the campaign round, the seed, and the time the
store adds. Sample ``s`` of every prompt comes from one generation pass seeded ``seed + s``,
so the stored seed, settings and prompt list reproduce it.

A model a server runs (``NAME@http://HOST/v1``, ``rlhfkit.generation.endpoint``) is stored as
that spec, with the settings the requests carried, the server's URL, the API used, the model
id and fingerprint the server answered with, and each request's own seed. Its weights are the
server's: their hash is ``UNKNOWN_HASH``, as for an imported output of an unknown model.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit import config_io
from rlhfkit.config import GenCfg, ModelCfg, endpoint_spec
from rlhfkit.errors import DataError

UNKNOWN_HASH = "unknown"
"""The weights hash of an output whose weights rlhfkit never saw (imported, or served)."""


@dataclass(frozen=True)
class Draft:
    """An output not stored yet, with its provenance."""

    text: str
    model: str
    model_hash: str
    generation: dict[str, Any]
    seed: int | None


@dataclass
class PromptPlan:
    """What to store for one prompt: its outputs and which of them are compared pairwise."""

    text: str
    meta: dict[str, Any]
    outputs: list[Draft | int] = field(default_factory=list)
    """New outputs, or the ids of outputs already stored (a previous round's)."""
    pairs: list[tuple[int, int]] = field(default_factory=list)
    """Indices into ``outputs`` shown side by side in a pairwise task."""
    prompt_id: int | None = None
    """Set when the prompt is already stored."""


@functools.cache
def weights_hash(model: str) -> str:
    """sha256 over a model directory's weight files: which version of the model this is."""
    from rlhfkit.models import resolve_model_dir
    from rlhfkit.rewards.sentiment import encoder_identity

    return encoder_identity(resolve_model_dir(model))


def sample(
    model_cfg: ModelCfg, gen: GenCfg, prompts: list[str], samples: int, seed: int, round_number: int
) -> list[list[Draft]]:
    """``samples`` outputs of one model for each prompt: ``drafts[i]`` answers ``prompts[i]``.

    Sample ``s`` of every prompt comes from one generation pass seeded ``seed + s``, so the
    stored seed, settings and prompts reproduce it; a served model's, from requests seeded as
    ``generation.endpoint.request_seed`` says.
    """
    served = endpoint_spec(model_cfg.path)
    if served is not None:
        return _sample_served(*served, gen, prompts, samples, seed, round_number)
    from rlhfkit.generation import get_backend
    from rlhfkit.models import load_causal_lm

    model, tokenizer = load_causal_lm(model_cfg)
    backend = get_backend(gen.backend, model, tokenizer)
    model_hash = weights_hash(model_cfg.path)
    settings = {**config_io.to_dict(gen), "round": round_number}
    drafts: list[list[Draft]] = [[] for _ in prompts]
    for s in range(samples):
        rollout = backend.generate(list(prompts), gen, seed + s)
        for i, text in enumerate(rollout.completions):
            drafts[i].append(Draft(text, model_cfg.path, model_hash, settings, seed + s))
    return drafts


def _sample_served(
    model: str,
    url: str,
    gen: GenCfg,
    prompts: list[str],
    samples: int,
    seed: int,
    round_number: int,
) -> list[list[Draft]]:
    from rlhfkit.generation.endpoint import SENT_SETTINGS, sample_endpoint

    sent = {key: value for key, value in config_io.to_dict(gen).items() if key in SENT_SETTINGS}
    api = "completions" if gen.chat_template == "off" else "chat.completions"
    return [
        [
            Draft(
                answer.text,
                f"{model}@{url}",
                UNKNOWN_HASH,
                {
                    **sent,
                    "round": round_number,
                    "endpoint": url,
                    "api": api,
                    "served_model": answer.served_model,
                    **({"system_fingerprint": answer.fingerprint} if answer.fingerprint else {}),
                },
                answer.seed,
            )
            for answer in answers
        ]
        for answers in sample_endpoint(model, url, gen, prompts, samples, seed)
    ]


def store_plans(
    store, campaign: str, plans: list[PromptPlan], kinds: Iterable[str], rng: random.Random
) -> Counter:
    """Store prompts, outputs and tasks; return the tasks made per kind.

    A pairwise task shows its two outputs in an order drawn from ``rng``: people favour one
    side (position bias), so no model may always be A. Per-output kinds (rating, critique,
    correction) are made for new outputs only: stored ones already have theirs.
    """
    tasks: Counter = Counter()
    for plan in plans:
        prompt_id = (
            plan.prompt_id
            if plan.prompt_id is not None
            else store.add_prompt(campaign, plan.text, plan.meta)
        )
        ids = [
            output
            if isinstance(output, int)
            else store.add_output(
                prompt_id,
                output.text,
                model=output.model,
                model_hash=output.model_hash,
                generation=output.generation,
                seed=output.seed,
            )
            for output in plan.outputs
        ]
        new_ids = [
            i for i, output in zip(ids, plan.outputs, strict=True) if not isinstance(output, int)
        ]
        for kind in kinds:
            if kind == "pairwise":
                shown = [rng.sample([ids[a], ids[b]], 2) for a, b in plan.pairs]
            elif kind == "ranking":
                shown = [rng.sample(ids, len(ids))] if len(ids) >= 2 else []
            else:
                shown = [[output_id] for output_id in new_ids]
            for output_ids in shown:
                store.add_task(campaign, kind, output_ids)
                tasks[kind] += 1
    store.refresh_statistics()
    return tasks


def load_prompt_rows(spec: str, field_name: str, limit: int) -> list[dict[str, Any]]:
    """Rows ``{"prompt": str, **meta}`` from a prompt file or built-in set (train split)."""
    from rlhfkit.data.builtin import is_builtin, load_builtin
    from rlhfkit.data.prompts import load_prompts

    if is_builtin(spec) and not Path(spec).exists():
        rows = load_builtin(spec, "train", "prompts")
    else:
        rows = load_prompts(os.path.expanduser(spec), field_name)
    rows = rows[:limit] if limit else rows
    for number, row in enumerate(rows, start=1):
        if not isinstance(row["prompt"], str):
            raise DataError(
                f"{spec}: row {number} holds a chat; labelling campaigns take "
                "plain-text prompts: give its text as the prompt"
            )
    return rows


def prompt_meta(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key != "prompt"}


def import_plans(path: str) -> list[PromptPlan]:
    """Prompts with their outputs from a JSONL file, outputs of one prompt grouped together.

    A row holds one ``completion`` or a list of ``completions``; ``model``, ``model_hash``,
    ``seed`` and ``generation`` are kept as provenance, and the other columns (token counts,
    sample index ...) go into ``generation`` beside the round. Per-token logprobs are dropped:
    they are not provenance.
    """
    from rlhfkit.data.files import read_rows

    rows = read_rows(os.path.expanduser(path))
    if not rows:
        raise DataError(f"{path}: holds no outputs; give a JSONL file of {{prompt, completion}}")
    plans: dict[str, PromptPlan] = {}
    for number, row in enumerate(rows, start=1):
        where = f"{path}: row {number}"
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: needs a non-empty text 'prompt' (chats are not supported)")
        texts = row["completions"] if "completions" in row else [row.get("completion")]
        if not (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts)):
            raise DataError(
                f"{where}: needs 'completion' (a string) or 'completions' (a list of strings)"
            )
        seed = row.get("seed")
        if seed is not None and type(seed) is not int:
            raise DataError(f"{where}: seed {seed!r} is not a whole number; fix or drop it")
        generation = row.get("generation") or {}
        if not isinstance(generation, dict):
            raise DataError(f"{where}: 'generation' must be an object of settings")
        extra = {
            key: value
            for key, value in row.items()
            if key
            not in (
                "prompt",
                "completion",
                "completions",
                "model",
                "model_hash",
                "seed",
                "generation",
                "logprobs",
            )
        }
        draft = functools.partial(
            Draft,
            model=str(row.get("model") or "imported"),
            model_hash=str(row.get("model_hash") or _imported_hash(row.get("model"))),
            generation={**extra, **generation, "round": 1, "imported_from": str(path)},
            seed=seed,
        )
        plan = plans.setdefault(prompt, PromptPlan(prompt, {}))
        plan.outputs.extend(draft(text) for text in texts)
    for plan in plans.values():
        plan.pairs = list(itertools.combinations(range(len(plan.outputs)), 2))
    return list(plans.values())


def _imported_hash(model: Any) -> str:
    """The weights hash of an imported output's model when it is a local model directory."""
    if isinstance(model, str) and (Path(os.path.expanduser(model)) / "config.json").is_file():
        return weights_hash(model)
    return UNKNOWN_HASH


def output_round(output) -> int:
    return int(output.generation.get("round", 1))
