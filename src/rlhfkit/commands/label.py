"""``rlhfkit label``: people judge model outputs in a web app; their labels become datasets.

    rlhfkit label init --campaign round-1 --prompts prompts.txt --model runs/sft
    rlhfkit label annotator --campaign round-1 --name ada
    rlhfkit label serve --campaign round-1
    rlhfkit label export --campaign round-1 --as pairs --output pairs.jsonl
    rlhfkit label next-round --campaign round-1 --model runs/dpo

One loop: sample -> people judge -> train (``reward``, ``dpo``, ``sft`` read the export) ->
sample again. A campaign lives in a feedback store (``rlhfkit.feedback.store``), by default
``campaigns/NAME/feedback.db`` (SQLite), or any database ``--db`` names (a path or a
``postgresql://`` URL). Every output is stored with its provenance: model path, a hash of the
model's weights, the generation settings with the round number, the seed, and the time.

Sampling comes first and the store is written only after it: a model that fails to load or
a sampling run stopped with Ctrl-C leaves no campaign (or round) behind.
"""

from __future__ import annotations

import difflib
import ipaddress
import itertools
import os
import random
import re
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from rlhfkit import config_io
from rlhfkit.config import (
    Fraction,
    GenCfg,
    InputFile,
    ModelCfg,
    ModelReference,
    NonNegativeInt,
    PositiveInt,
    Problem,
    Range,
    default,
)
from rlhfkit.errors import ConfigError, DataError, RlhfkitError
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

CAMPAIGNS_DIR = "campaigns"
DB_NAME = "feedback.db"  # feedback.engine.DEFAULT_DB_NAME
KEY_FILE = "web-secret.key"
ADMIN = "admin"
MIN_PASSWORD = 8
_CAMPAIGN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_ALIASES = {"--import": "--import_file", "--as": "--format"}  # Python keywords as flags


# --- configs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignOptions:
    """Which campaign, in which database."""

    campaign: str = ""
    """Campaign name: letters, digits, dot, dash, underscore (required)."""
    db: str = ""
    """Feedback database: an SQLite file or directory, or postgresql://USER:PASSWORD@HOST/DB
    (empty = campaigns/CAMPAIGN/feedback.db)."""

    def check(self) -> Iterable[Problem]:
        if not self.campaign:
            yield Problem("campaign", "", "is required; pass --campaign NAME")
        elif not _CAMPAIGN_NAME.fullmatch(self.campaign):
            yield Problem("campaign", self.campaign, "use letters, digits, '.', '-' and '_' "
                          "(up to 100, starting with a letter or digit), e.g. round-1")


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
    model: ModelCfg = default(ModelCfg)
    """The model whose outputs are judged."""
    model2: str = ""
    """A second model (alias or directory): its outputs are compared side by side with model's."""
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
                    yield Problem(name, getattr(self, name), "cannot be used with --import_file: "
                                  "imported outputs bring their prompts and models; drop one")
            return
        yield from _prompts_problems("prompts", self.prompts, required=True)
        if self.model2:
            message = ModelReference()(self.model2)
            if message:
                yield Problem("model2", self.model2, message)
        if self.samples_per_model() < 2 and not self.model2 and _comparative(self.kinds):
            yield Problem("samples", self.samples, "pairwise and ranking tasks compare 2 or "
                          "more outputs of a prompt; give --samples 2 or more, or --model2")

    def samples_per_model(self) -> int:
        return self.samples or (1 if self.model2 else 2)


@dataclass(frozen=True)
class ServeConfig(CampaignOptions):
    """Run the labelling web app for a campaign."""

    host: str = "127.0.0.1"
    """Address to listen on; only this machine can connect unless you open it up."""
    port: Annotated[int, Range(1, 65535)] = 8000
    """Port to listen on."""
    allow_remote: bool = False
    """Allow a --host other than a loopback address, so others on the network can connect."""

    def check(self) -> Iterable[Problem]:
        yield from CampaignOptions.check(self)
        if not self.allow_remote and not _is_loopback(self.host):
            yield Problem("host", self.host, "opens the app to the network; add --allow_remote "
                          "to do so on purpose (use it behind HTTPS), or use 127.0.0.1")


@dataclass(frozen=True)
class AnnotatorConfig(CampaignOptions):
    """Add a person who labels (an admin also sees progress and agreement, and exports)."""

    name: str = ""
    """Their sign-in name (required)."""
    password: str = ""
    """Their password (at least 8 characters); empty = asked for without echo."""
    admin: bool = False
    """Make them an admin."""

    def check(self) -> Iterable[Problem]:
        yield from CampaignOptions.check(self)
        if not self.name or self.name != self.name.strip():
            yield Problem("name", self.name, "give a sign-in name without leading or trailing "
                          "spaces, e.g. --name ada")
        if self.password and len(self.password) < MIN_PASSWORD:
            yield Problem("password", "***", f"is shorter than {MIN_PASSWORD} characters; "
                          "choose a longer one")


@dataclass(frozen=True)
class ExportConfig(CampaignOptions):
    """Write a campaign's labels as a dataset that reward, dpo and sft read."""

    format: Literal["pairs", "ratings", "binary", "critiques", "sft"] = "pairs"
    """Dataset form (also --as): pairs (reward, dpo), ratings (reward), binary (dpo --algo.loss
    kto), critiques, sft (corrections)."""
    output: str = ""
    """The JSONL file to write (required)."""
    overwrite: bool = False
    """Replace the output file if it exists."""
    include_gold: bool = False
    """Also export labels of gold tasks (the campaign's quality checks)."""
    include_flagged: bool = False
    """Also make chosen, desirable and sft rows from outputs a label flagged."""

    def check(self) -> Iterable[Problem]:
        yield from CampaignOptions.check(self)
        problem = _output_problem(self.output, self.overwrite)
        if problem:
            yield Problem("output", self.output, problem)


@dataclass(frozen=True)
class NextRoundConfig(CampaignOptions):
    """Sample from a newly trained model and pair it against the previous round's outputs."""

    model: ModelCfg = default(ModelCfg)
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


def _kinds_problems(kinds: str) -> Iterable[Problem]:
    if not _split_kinds(kinds):
        yield Problem("kinds", kinds, f"is empty; give a comma-separated list of {', '.join(KINDS)}")
    for kind in _split_kinds(kinds):
        if kind not in KINDS:
            close = difflib.get_close_matches(kind, KINDS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            yield Problem("kinds", kinds, f"{kind!r} is not a task kind; {hint}give a "
                          f"comma-separated list of {', '.join(KINDS)}")


def _split_kinds(kinds: str) -> list[str]:
    return [kind.strip() for kind in kinds.split(",") if kind.strip()]


def _comparative(kinds: str) -> bool:
    return any(kind in ("pairwise", "ranking") for kind in _split_kinds(kinds))


def _prompts_problems(name: str, value: str, required: bool) -> Iterable[Problem]:
    from rlhfkit.config import FileMustExist

    if not value:
        if required:
            yield Problem(name, "", "is required; pass --prompts FILE, a built-in set such as "
                          "vader:movies, or --import_file FILE")
        return
    if ":" in value and not Path(value).exists():
        return  # a built-in set: resolved (and checked) by rlhfkit.data.builtin
    message = FileMustExist()(value)
    if message:
        yield Problem(name, value, message + "; or name a built-in set such as vader:movies")


def _output_problem(output: str, overwrite: bool) -> str | None:
    if not output:
        return "is required; pass --output FILE.jsonl"
    path = Path(os.path.expanduser(output))
    if path.suffix.lower() not in (".jsonl", ".json"):
        return "exports are JSONL; give a path ending in .jsonl"
    if path.is_dir():
        return "is a directory; give a file name such as pairs.jsonl"
    if path.exists() and not overwrite:
        return "already exists; pass --overwrite to replace it or choose another --output"
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- the campaign's database ---------------------------------------------------------------------


def _db_target(opts: CampaignOptions) -> str:
    return opts.db or str(Path(CAMPAIGNS_DIR) / opts.campaign / DB_NAME)


def _open(opts: CampaignOptions, *, new: bool = False):
    """The campaign's store. Except for a new campaign, the database and the campaign must
    exist: a typo fails here instead of creating an empty database."""
    from rlhfkit.feedback.engine import resolve_url
    from rlhfkit.feedback.store import open_store

    target = _db_target(opts)
    url = resolve_url(target)
    if not new and url.get_backend_name() == "sqlite" and not Path(url.database).is_file():
        raise ConfigError(f"--campaign = {opts.campaign!r}: no feedback database at "
                          f"{url.database}; create the campaign with `rlhfkit label init "
                          f"--campaign {opts.campaign} ...`, or pass --db where it lives")
    store = open_store(target)
    if not new:
        _require_campaign(store, opts.campaign)
    return store


def _require_campaign(store, campaign: str):
    from rlhfkit.feedback.store import NotFoundError

    try:
        return store.campaign_settings(campaign)
    except NotFoundError as error:
        raise ConfigError(f"--campaign = {campaign!r}: {error}") from None


def _state_dir(opts: CampaignOptions) -> Path:
    """Where files beside the database go: the SQLite file's folder, else the campaign's."""
    from rlhfkit.feedback.engine import resolve_url

    url = resolve_url(_db_target(opts))
    if url.get_backend_name() == "sqlite":
        return Path(url.database).parent
    return Path(CAMPAIGNS_DIR) / opts.campaign


# --- verbs ---------------------------------------------------------------------------------------


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
        plans = [PromptPlan(row["prompt"], prompt_meta(row), list(outputs))
                 for row, outputs in zip(rows, drafts, strict=True)]
        if cfg.model2:
            model2 = ModelCfg(cfg.model2, cfg.model.dtype, cfg.model.device)
            second = sample(model2, cfg.gen, texts, n, cfg.seed, round_number=1)
            for plan, outputs in zip(plans, second, strict=True):
                plan.outputs.extend(outputs)
                plan.pairs = list(itertools.product(range(n), range(n, 2 * n)))
            source = f"sampled: {n} per prompt from each of {cfg.model.path} and {cfg.model2}"
        else:
            for plan in plans:
                plan.pairs = list(itertools.combinations(range(n), 2))
            source = f"sampled: {n} per prompt from {cfg.model.path}"

    # 3. the campaign, written once everything is in hand
    kinds = _split_kinds(cfg.kinds)
    with _open(cfg, new=True) as store:
        try:
            store.create_campaign(cfg.campaign, task_kinds=kinds, overlap=cfg.overlap,
                                  overlap_annotators=cfg.overlap_annotators)
        except ConflictError as error:  # made by someone else while we sampled
            raise ConfigError(f"--campaign = {cfg.campaign!r}: {error}") from None
        tasks = store_plans(store, cfg.campaign, plans, kinds, random.Random(cfg.seed))
        url = store.url
    outputs = sum(len(plan.outputs) for plan in plans)
    print(f"campaign {cfg.campaign!r} in {url}: {len(plans)} prompts, {outputs} outputs "
          f"({source}), {_tasks_summary(tasks)}")
    print(f"next: rlhfkit label serve --campaign {cfg.campaign}{_db_flag(cfg)}")


def _check_name_free(cfg: InitConfig) -> None:
    """Refuse a campaign name the database holds; a database not made yet holds none (and is
    not made here, so a failed init leaves nothing behind)."""
    from rlhfkit.feedback.engine import resolve_url
    from rlhfkit.feedback.store import NotFoundError, open_store

    url = resolve_url(_db_target(cfg))
    if url.get_backend_name() == "sqlite" and not Path(url.database).is_file():
        return
    with open_store(_db_target(cfg)) as store:
        try:
            store.campaign_settings(cfg.campaign)
        except NotFoundError:
            return
        raise ConfigError(f"--campaign = {cfg.campaign!r}: already exists in {store.url}; pick "
                          "another name, or add a round with `rlhfkit label next-round`")


def next_round(cfg: NextRoundConfig) -> None:
    with _open(cfg) as store:
        settings = _require_campaign(store, cfg.campaign)
        stored = store.campaign_outputs(cfg.campaign)
        previous = max((output_round(output) for _, _, outputs in stored for output in outputs),
                       default=0)
        if not previous:
            raise ConfigError(f"--campaign = {cfg.campaign!r}: holds no outputs yet, so there "
                              "is nothing to compare against; run `rlhfkit label init` first")
        rng = random.Random(cfg.seed)
        this_round = previous + 1

        # 1. the opponent of each prompt: a stored output of the previous round, or, for new
        #    prompts, a fresh sample from the previous round's model
        if cfg.prompts:
            rows = load_prompt_rows(cfg.prompts, cfg.prompt_field, cfg.limit)
            plans = [PromptPlan(row["prompt"], prompt_meta(row)) for row in rows]
            old = _previous_model(stored, previous, cfg.model)
            for plan, drafts in zip(plans, sample(old, cfg.gen, [p.text for p in plans], 1,
                                                  cfg.seed, previous), strict=True):
                plan.outputs.append(drafts[0])
        else:
            plans = []
            for prompt_id, text, outputs in stored[:cfg.limit or None]:
                candidates = [o.output_id for o in outputs if output_round(o) == previous]
                if candidates:
                    plans.append(PromptPlan(text, {}, [rng.choice(candidates)],
                                            prompt_id=prompt_id))
            if not plans:
                raise ConfigError(f"--campaign = {cfg.campaign!r}: no prompt has an output of "
                                  f"round {previous}; give new prompts with --prompts")

        # 2. the new model's sample for each prompt, then everything stored
        new = sample(cfg.model, cfg.gen, [plan.text for plan in plans], 1, cfg.seed, this_round)
        for plan, drafts in zip(plans, new, strict=True):
            plan.outputs.append(drafts[0])
            plan.pairs = [(0, 1)]
        tasks = store_plans(store, cfg.campaign, plans, settings.task_kinds, rng)
    print(f"round {this_round} of campaign {cfg.campaign!r}: {len(plans)} prompts, each a new "
          f"output of {cfg.model.path} against round {previous}; {_tasks_summary(tasks)}")
    print(f"next: rlhfkit label serve --campaign {cfg.campaign}{_db_flag(cfg)}")


def _previous_model(stored: list, previous: int, like: ModelCfg) -> ModelCfg:
    """The model that wrote round ``previous`` (the first one, if two were compared), checked
    to still hold the weights it had then."""
    first = next(o for _, _, outputs in stored for o in outputs if output_round(o) == previous)
    if ModelReference()(first.model):
        raise ConfigError(f"--prompts: new prompts need a sample from round {previous}'s model "
                          f"{first.model!r}, which is not a local model directory; drop --prompts "
                          "to compare on the campaign's prompts")
    if weights_hash(first.model) != first.model_hash:
        raise ConfigError(f"--prompts: the weights at {first.model} changed since round "
                          f"{previous} sampled from it; restore them, or drop --prompts to "
                          "compare on the campaign's stored outputs")
    return ModelCfg(first.model, like.dtype, like.device)


def serve(cfg: ServeConfig) -> None:
    import uvicorn

    from rlhfkit.feedback.web import create_app
    from rlhfkit.feedback.web.auth import hash_password

    store = _open(cfg)
    with store:
        password = None
        if store.get_annotator(ADMIN) is None:
            password = secrets.token_urlsafe(12)
            store.add_annotator(ADMIN, hash_password(password), is_admin=True)
        app = create_app(store, secret_key=_secret_key(_state_dir(cfg)), campaign=cfg.campaign)
        host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        print(f"labelling campaign {cfg.campaign!r} at http://{host}:{cfg.port}/")
        if password:
            print(f"admin login: {ADMIN} / {password}  (shown only now: note it down)")
        else:
            print(f"admin login: {ADMIN}, with the password printed when it was created; add "
                  f"another admin with `rlhfkit label annotator --admin`")
        uvicorn.run(app, host=cfg.host, port=cfg.port)


def _secret_key(folder: Path) -> str:
    """The app's session-signing key (64 hex digits), kept in a file only its owner may read,
    so sign-ins survive a restart; made on first use."""
    path = folder / KEY_FILE
    if path.is_file():
        return path.read_text().strip()
    key = secrets.token_hex(32)
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{KEY_FILE}.{os.getpid()}.tmp"
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(key)
    os.replace(temp, path)
    return key


def annotator(cfg: AnnotatorConfig) -> None:
    from rlhfkit.feedback.store import ConflictError
    from rlhfkit.feedback.web.auth import hash_password

    with _open(cfg) as store:
        if store.get_annotator(cfg.name) is not None:
            raise ConfigError(f"--name = {cfg.name!r}: already has an account in {store.url}; "
                              "pick another name")
        password = cfg.password or _ask_password(cfg.name)
        try:
            store.add_annotator(cfg.name, hash_password(password), is_admin=cfg.admin)
        except ConflictError as error:
            raise ConfigError(f"--name = {cfg.name!r}: {error}") from None
        url = store.url
    role = "admin" if cfg.admin else "annotator"
    print(f"added {role} {cfg.name!r} to {url}; they sign in at the address "
          f"`rlhfkit label serve --campaign {cfg.campaign}` prints")


def _ask_password(name: str) -> str:
    import getpass

    password = getpass.getpass(f"password for {name}: ")
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"password: shorter than {MIN_PASSWORD} characters; choose a longer one")
    if getpass.getpass("again: ") != password:
        raise ConfigError("password: the two entries differ; run the command again")
    return password


def export(cfg: ExportConfig) -> None:
    from rlhfkit.feedback.export import export as export_labels
    from rlhfkit.feedback.export import write_export

    with _open(cfg) as store:
        records = store.label_records(cfg.campaign)
    result = export_labels(records, cfg.format, include_gold=cfg.include_gold,
                           include_flagged=cfg.include_flagged)
    skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(result.skipped.items()))
    if not result.rows:
        raise DataError(f"campaign {cfg.campaign!r}: its {len(records)} labels give no "
                        f"{cfg.format} rows" + (f" (skipped: {skipped})" if skipped else "")
                        + "; label more, or choose another --as")
    problem = _output_problem(cfg.output, cfg.overwrite)  # it may have appeared meanwhile
    if problem:
        raise RlhfkitError(f"output {cfg.output!r} {problem}")
    write_export(os.path.expanduser(cfg.output), result.rows)
    print(f"wrote {len(result.rows)} {cfg.format} rows from {len(records)} labels to "
          f"{cfg.output}" + (f"; skipped: {skipped}" if skipped else ""))


def _tasks_summary(tasks: Counter) -> str:
    parts = ", ".join(f"{kind} {count}" for kind, count in tasks.items())
    return f"{sum(tasks.values())} tasks" + (f" ({parts})" if parts else "")


def _db_flag(opts: CampaignOptions) -> str:
    return f" --db {opts.db}" if opts.db else ""


# --- the tool ------------------------------------------------------------------------------------


VERBS: dict[str, tuple[type, Any]] = {
    "init": (InitConfig, init),
    "serve": (ServeConfig, serve),
    "annotator": (AnnotatorConfig, annotator),
    "export": (ExportConfig, export),
    "next-round": (NextRoundConfig, next_round),
}


def overview() -> str:
    lines = ["usage: rlhfkit label VERB [--config FILE] [--KEY VALUE ...]   "
             "(rlhfkit label VERB --help)", "", "verbs:"]
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
        close = difflib.get_close_matches(verb, VERBS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
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
