"""``label init`` and ``label next-round``: a campaign's outputs, sampled or imported, and tasks.

Every output is stored with its provenance: model path, a hash of the model's weights, the
generation settings with the round number, the seed, and the time. Sampling comes first and
the store is written only after it: a model that fails to load or a sampling run stopped with
Ctrl-C leaves no campaign (or round) behind.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.commands.label.options import (
    CampaignOptions,
    db_flag,
    db_target,
    open_campaign,
    require_campaign,
)
from rlhfkit.config import (
    Fraction,
    GenCfg,
    InputFile,
    ModelCfg,
    NonNegativeInt,
    PositiveInt,
    Problem,
    SampledModelCfg,
    default,
    endpoint_spec,
    model_problem,
    sampled_model_problem,
)
from rlhfkit.errors import ConfigError, did_you_mean
from rlhfkit.feedback.campaign import (
    PromptPlan,
    import_plans,
    load_prompt_rows,
    output_round,
    prompt_meta,
    sample,
    store_plans,
    weights_hash,
)
from rlhfkit.feedback.records import KINDS
from rlhfkit.generation.endpoint import gen_problems


@dataclass(frozen=True)
class InitConfig(CampaignOptions):
    """Create a campaign: sample outputs for prompts (or import them) and make labelling tasks."""

    prompts: str = ""
    """Prompt file (.jsonl/.json/.csv/.parquet/.txt) or a built-in set such as vader:movies."""
    prompt_field: str = "prompt"
    """Column holding each prompt in a prompt file."""
    limit: NonNegativeInt = 0
    """Use only the first this many prompts (0 = all)."""
    import_file: InputFile = ""
    """Import existing outputs instead of sampling (also --import): JSONL rows {prompt,
    completion, model?, model_hash?, seed?, generation?, ...} or {prompt, completions: [...]}."""
    model: SampledModelCfg = default(SampledModelCfg)
    """The model whose outputs are judged."""
    model2: str = ""
    """A second model (alias, directory or NAME@http://HOST/v1): its outputs are compared side
    by side with model's."""
    samples: NonNegativeInt = 0
    """Outputs sampled per prompt from each model (0 = 2 from one model, 1 from each of two)."""
    kinds: str = "pairwise"
    """Task kinds, comma-separated: pairwise, ranking, rating, critique, correction."""
    overlap: Fraction = 0.2
    """Fraction of tasks given to several annotators, so agreement can be measured."""
    overlap_annotators: PositiveInt = 2
    """How many annotators an overlap task goes to."""
    seed: NonNegativeInt = 0
    """Seed for sampling and for the A/B display order (which side each output is shown on)."""
    gen: GenCfg = default(GenCfg)
    """How outputs are sampled."""

    def check(self) -> Iterable[Problem]:
        yield from CampaignOptions.check(self)
        yield from _kinds_problems(self.kinds)
        if self.overlap_annotators < 2:
            yield Problem("overlap_annotators", self.overlap_annotators, "give 2 or more")
        if self.import_file:
            for name in ("prompts", "model2"):
                if getattr(self, name):
                    yield Problem(
                        name,
                        getattr(self, name),
                        "cannot be used with --import_file: "
                        "imported outputs bring their prompts and models; drop one",
                    )
            return
        yield from _prompts_problems("prompts", self.prompts, required=True)
        if self.model2:
            message = sampled_model_problem(self.model2)
            if message:
                yield Problem("model2", self.model2, message)
        yield from _served_problems(self.gen, self.model.path, self.model2)
        if self.samples_per_model() < 2 and not self.model2 and _comparative(self.kinds):
            yield Problem(
                "samples",
                self.samples,
                "pairwise and ranking tasks compare 2 or "
                "more outputs of a prompt; give --samples 2 or more, or --model2",
            )

    def samples_per_model(self) -> int:
        return self.samples or (1 if self.model2 else 2)


@dataclass(frozen=True)
class NextRoundConfig(CampaignOptions):
    """Sample from a newly trained model and pair it against the previous round's outputs."""

    model: SampledModelCfg = default(SampledModelCfg)
    """The newly trained model."""
    prompts: str = ""
    """New prompts (file or built-in set); empty = the campaign's prompts."""
    prompt_field: str = "prompt"
    """Column holding each prompt in a prompt file."""
    limit: NonNegativeInt = 0
    """Use only the first this many prompts (0 = all)."""
    seed: NonNegativeInt = 0
    """Seed for sampling, for picking the previous output and for the A/B display order."""
    gen: GenCfg = default(GenCfg)
    """How outputs are sampled."""

    def check(self) -> Iterable[Problem]:
        yield from CampaignOptions.check(self)
        yield from _prompts_problems("prompts", self.prompts, required=False)
        yield from _served_problems(self.gen, self.model.path)


def _served_problems(gen: GenCfg, *models: str) -> Iterable[Problem]:
    """The generation settings a server cannot be asked for, if one of ``models`` is served."""
    if any(endpoint_spec(model) for model in models):
        for problem in gen_problems(gen):
            yield problem._replace(field=f"gen.{problem.field}")


def _kinds_problems(kinds: str) -> Iterable[Problem]:
    if not _split_kinds(kinds):
        yield Problem(
            "kinds", kinds, f"is empty; give a comma-separated list of {', '.join(KINDS)}"
        )
    for kind in _split_kinds(kinds):
        if kind not in KINDS:
            hint = did_you_mean(kind, KINDS)
            yield Problem(
                "kinds",
                kinds,
                f"{kind!r} is not a task kind; {hint}give a "
                f"comma-separated list of {', '.join(KINDS)}",
            )


def _split_kinds(kinds: str) -> list[str]:
    return [kind.strip() for kind in kinds.split(",") if kind.strip()]


def _comparative(kinds: str) -> bool:
    return any(kind in ("pairwise", "ranking") for kind in _split_kinds(kinds))


def _prompts_problems(name: str, value: str, required: bool) -> Iterable[Problem]:
    from rlhfkit.config import file_problem

    if not value:
        if required:
            yield Problem(
                name,
                "",
                "is required; pass --prompts FILE, a built-in set such as "
                "vader:movies, or --import_file FILE",
            )
        return
    if ":" in value and not Path(value).exists():
        return  # a built-in set: resolved (and checked) by rlhfkit.data.builtin
    message = file_problem(value)
    if message:
        yield Problem(name, value, message + "; or name a built-in set such as vader:movies")


def init(cfg: InitConfig) -> None:
    from rlhfkit.feedback.store import ConflictError

    # 1. refuse a taken name now, not after minutes of sampling
    _check_name_free(cfg)

    # 2. outputs: imported, or sampled from one or two models
    if cfg.import_file:
        plans = import_plans(cfg.import_file)
        source = f"imported from {cfg.import_file}"
    else:
        rows = load_prompt_rows(cfg.prompts, cfg.prompt_field, cfg.limit)
        texts = [row["prompt"] for row in rows]
        n = cfg.samples_per_model()
        drafts = sample(cfg.model, cfg.gen, texts, n, cfg.seed, round_number=1)
        plans = [
            PromptPlan(row["prompt"], prompt_meta(row), list(outputs))
            for row, outputs in zip(rows, drafts, strict=True)
        ]
        if cfg.model2:
            model2 = (
                SampledModelCfg(cfg.model2)  # runs on its server, as the server sets it up
                if endpoint_spec(cfg.model2)
                else ModelCfg(cfg.model2, cfg.model.dtype, cfg.model.device)
            )
            second = sample(model2, cfg.gen, texts, n, cfg.seed, round_number=1)
            for plan, outputs in zip(plans, second, strict=True):
                plan.outputs.extend(outputs)
                plan.pairs = list(itertools.product(range(n), range(n, 2 * n)))
            source = f"sampled: {n} per prompt from each of {cfg.model.path} and {cfg.model2}"
        else:
            for plan in plans:
                plan.pairs = list(itertools.combinations(range(n), 2))
            source = f"sampled: {n} per prompt from {cfg.model.path}"

    # 3. the campaign, written once everything is in hand, in one transaction: an output the
    #    store refuses (say a NUL in an imported text) leaves no half-made campaign behind
    kinds = _split_kinds(cfg.kinds)
    with open_campaign(cfg, new=True) as store:
        with store.transaction():
            try:
                store.create_campaign(
                    cfg.campaign,
                    task_kinds=kinds,
                    overlap=cfg.overlap,
                    overlap_annotators=cfg.overlap_annotators,
                )
            except ConflictError as error:  # made by someone else while we sampled
                raise ConfigError(f"--campaign = {cfg.campaign!r}: {error}") from None
            tasks = store_plans(store, cfg.campaign, plans, kinds, random.Random(cfg.seed))
        url = store.url
    outputs = sum(len(plan.outputs) for plan in plans)
    print(
        f"campaign {cfg.campaign!r} in {url}: {len(plans)} prompts, {outputs} outputs "
        f"({source}), {_tasks_summary(tasks)}"
    )
    print(f"next: rlhfkit label serve --campaign {cfg.campaign}{db_flag(cfg)}")


def _check_name_free(cfg: InitConfig) -> None:
    """Refuse a campaign name the database holds; a database not made yet holds none (and is
    not made here, so a failed init leaves nothing behind)."""
    from rlhfkit.feedback.engine import resolve_url
    from rlhfkit.feedback.store import NotFoundError, open_store

    url = resolve_url(db_target(cfg))
    if url.get_backend_name() == "sqlite" and not Path(url.database).is_file():
        return
    with open_store(db_target(cfg)) as store:
        try:
            store.campaign_settings(cfg.campaign)
        except NotFoundError:
            return
        raise ConfigError(
            f"--campaign = {cfg.campaign!r}: already exists in {store.url}; pick "
            "another name, or add a round with `rlhfkit label next-round`"
        )


def next_round(cfg: NextRoundConfig) -> None:
    with open_campaign(cfg) as store:
        settings = require_campaign(store, cfg.campaign)
        stored = store.campaign_outputs(cfg.campaign)
        previous = max(
            (output_round(output) for _, _, outputs in stored for output in outputs), default=0
        )
        if not previous:
            raise ConfigError(
                f"--campaign = {cfg.campaign!r}: holds no outputs yet, so there "
                "is nothing to compare against; run `rlhfkit label init` first"
            )
        rng = random.Random(cfg.seed)
        this_round = previous + 1

        # 1. the opponent of each prompt: a stored output of the previous round, or, for new
        #    prompts, a fresh sample from the previous round's model
        if cfg.prompts:
            rows = load_prompt_rows(cfg.prompts, cfg.prompt_field, cfg.limit)
            plans = [PromptPlan(row["prompt"], prompt_meta(row)) for row in rows]
            old = _previous_model(stored, previous, cfg.model)
            for plan, drafts in zip(
                plans,
                sample(old, cfg.gen, [p.text for p in plans], 1, cfg.seed, previous),
                strict=True,
            ):
                plan.outputs.append(drafts[0])
        else:
            plans = []
            for prompt_id, text, outputs in stored[: cfg.limit or None]:
                candidates = [o.output_id for o in outputs if output_round(o) == previous]
                if candidates:
                    plans.append(
                        PromptPlan(text, {}, [rng.choice(candidates)], prompt_id=prompt_id)
                    )
            if not plans:
                raise ConfigError(
                    f"--campaign = {cfg.campaign!r}: no prompt has an output of "
                    f"round {previous}; give new prompts with --prompts"
                )

        # 2. the new model's sample for each prompt, then everything stored
        new = sample(cfg.model, cfg.gen, [plan.text for plan in plans], 1, cfg.seed, this_round)
        for plan, drafts in zip(plans, new, strict=True):
            plan.outputs.append(drafts[0])
            plan.pairs = [(0, 1)]
        with store.transaction():  # the whole round or, if the store refuses part, none of it
            tasks = store_plans(store, cfg.campaign, plans, settings.task_kinds, rng)
    print(
        f"round {this_round} of campaign {cfg.campaign!r}: {len(plans)} prompts, each a new "
        f"output of {cfg.model.path} against round {previous}; {_tasks_summary(tasks)}"
    )
    print(f"next: rlhfkit label serve --campaign {cfg.campaign}{db_flag(cfg)}")


def _previous_model(stored: list, previous: int, like: ModelCfg) -> ModelCfg:
    """The model that wrote round ``previous`` (the first one, if two were compared), checked
    to still hold the weights it had then."""
    first = next(o for _, _, outputs in stored for o in outputs if output_round(o) == previous)
    if endpoint_spec(first.model):
        raise ConfigError(
            f"--prompts: new prompts need a sample from round {previous}'s model "
            f"{first.model!r}, which a server ran: rlhfkit cannot check that it still runs "
            "the same weights; drop --prompts to compare on the campaign's stored outputs"
        )
    if model_problem(first.model):
        raise ConfigError(
            f"--prompts: new prompts need a sample from round {previous}'s model "
            f"{first.model!r}, which is not a local model directory; drop --prompts "
            "to compare on the campaign's prompts"
        )
    if weights_hash(first.model) != first.model_hash:
        raise ConfigError(
            f"--prompts: the weights at {first.model} changed since round "
            f"{previous} sampled from it; restore them, or drop --prompts to "
            "compare on the campaign's stored outputs"
        )
    return ModelCfg(first.model, like.dtype, like.device)


def _tasks_summary(tasks: Counter) -> str:
    parts = ", ".join(f"{kind} {count}" for kind, count in tasks.items())
    return f"{sum(tasks.values())} tasks" + (f" ({parts})" if parts else "")
