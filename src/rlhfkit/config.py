"""Shared configuration groups and the value constraints they declare.

Every command has one frozen dataclass config built from these groups (``model``, ``gen``,
``optim``, ``log``, ``run``). The string literal under each field is its documentation: the
loader shows it in ``--help``. Constraints ride along in ``Annotated[...]`` as ``Bounds`` and
``Check`` functions, which pydantic applies (``config_io.validate``) to every value, whether it
came from a default, a TOML/YAML file or the command line; a config's ``check()`` adds what
spans several fields.

This module imports only the standard library (pydantic comes in only to validate): ``rlhfkit
--help`` must stay instant.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from rlhfkit.errors import did_you_mean


class Problem(NamedTuple):
    """One bad value: the field (relative to the config that found it), the value, the fix."""

    field: str
    value: Any
    message: str


@dataclass(frozen=True)
class Bounds:
    """A number's bounds, checked by pydantic as annotated-types' ``Interval`` (imported only
    then: it costs ``--help`` time); a float bounded on one side must be finite as well."""

    gt: float | None = None
    ge: float | None = None
    le: float | None = None

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from annotated_types import Interval, Predicate

        finite = (Predicate(math.isfinite),) if source is float and self.le is None else ()
        bounds = Interval(gt=self.gt, ge=self.ge, le=self.le)  # NaN fails any bound, inf not
        return handler.generate_schema(Annotated[source, bounds, *finite])


@dataclass(frozen=True)
class Check:
    """``Annotated`` metadata that pydantic runs after the type check: ``problem(value)`` says
    what is wrong and how to fix it (None when nothing is); ``metavar`` names the value in help."""

    problem: Callable[[Any], str | None]
    metavar: str

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema  # validating only: --help never gets here

        return core_schema.no_info_after_validator_function(self._validate, handler(source))

    def _validate(self, value: Any) -> Any:
        if message := self.problem(value):
            raise ValueError(message)  # pydantic reports it as a value_error with this text
        return value


def file_problem(value: str, saved_dataset: bool = False) -> str | None:
    """What is wrong with an input file (None if nothing): checked before anything loads, so a
    typo fails in a second, not later. Empty means unset. ``saved_dataset``: a directory written
    by datasets' save_to_disk is accepted too."""
    if not value:
        return None
    path = Path(os.path.expanduser(value))
    if not path.exists():
        return "no such file; check the path (relative paths start at the current directory)"
    if not path.is_dir() or saved_dataset and is_saved_dataset(path):
        return None
    return "is a directory; give a file" + " or a dataset saved by save_to_disk" * saved_dataset


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a directory written by datasets' save_to_disk."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def model_problem(value: str) -> str | None:
    """What is wrong with a model reference (None if nothing): an embedded alias (see ``rlhfkit
    assets list``) or a local Hugging Face model directory."""
    from rlhfkit.assets import MODEL_ALIASES  # standard library only, and below this layer

    path = Path(os.path.expanduser(value))
    if value in MODEL_ALIASES or (path / "config.json").is_file():
        return None
    aliases = ", ".join(sorted(MODEL_ALIASES))
    if path.is_dir():
        return (
            "is a directory without config.json, so not a Hugging Face model; "
            f"give a model directory or an alias ({aliases})"
        )
    return (
        f"is neither an embedded alias ({aliases}) nor a local model directory; "
        "no model hub is contacted, so pass a directory that exists"
    )


def endpoint_spec(value: str) -> tuple[str, str] | None:
    """``(model id, base URL)`` of ``MODEL@http(s)://HOST/v1``, a model an OpenAI-compatible
    server runs (the endpoint judge's spelling too); None for anything else: a local model."""
    at = value.find("@http")
    return (value[:at], value[at + 1 :]) if at > 0 else None


def sampled_model_problem(value: str) -> str | None:
    """What is wrong with a model to sample from (None if nothing): a local model, as
    ``model_problem`` takes, or ``NAME@http(s)://HOST/v1``."""
    served = endpoint_spec(value)
    if served is None:
        problem = model_problem(value)
        return None if problem is None else problem + "; or NAME@http://HOST/v1 for a served one"
    scheme, _, rest = served[1].partition("://")
    if scheme not in ("http", "https") or not rest.split("/")[0]:
        return "names no server after '@'; spell it NAME@http://HOST:PORT/v1"
    return None


PositiveInt = Annotated[int, Bounds(ge=1)]
NonNegativeInt = Annotated[int, Bounds(ge=0)]
PositiveFloat = Annotated[float, Bounds(gt=0)]
NonNegativeFloat = Annotated[float, Bounds(ge=0)]
Fraction = Annotated[float, Bounds(ge=0, le=1)]
InputFile = Annotated[str, Check(file_problem, "FILE")]
ModelPath = Annotated[str, Check(model_problem, "MODEL")]
SampledModelPath = Annotated[str, Check(sampled_model_problem, "MODEL")]

DEVICES = ("auto", "cpu", "cuda", "mps")
CORPORA = ("movies", "tweets", "amazon", "nyt")
TASK_SETS = ("qa", "mmlu", "translation", "wiki")  # built-in sets with gold answers (docs/tasks.md)
"""The VADER corpora of human-rated texts: the built-in sets vader:movies ... vader:nyt."""
GEN_BACKENDS = {"hf", "vllm", "vllm-server"}
"""The names gen.backend accepts: each built-in (its module in the generation package is named
after it) and each plug-in, added when it registers (``register_backend``)."""


# --- shared groups -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCfg:
    """Which model to load and how."""

    shorthand: ClassVar[str] = "path"  # `--model X` sets `--model.path X`

    path: ModelPath = "smollm2"
    """Embedded alias (smollm2) or a local Hugging Face model directory; never downloaded."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; auto is float32 on CPU and bfloat16 on a GPU that supports it."""
    device: str = "auto"
    """auto (a GPU when present, else CPU), cpu, cuda, cuda:N or mps."""
    autocast: Literal["off", "auto", "bfloat16"] = "off"
    """Mixed precision: the model's matmuls in bfloat16 over float32 weights (torch.autocast).
    auto turns it on for float32 weights on a CPU with AMX tiles (Intel Sapphire Rapids and
    later), where bfloat16 matmuls are fast; off keeps float32 throughout. On a GPU use bfloat16
    weights (dtype auto) instead: under autocast sampling cannot use gen.compile and the step is
    slower than in float32. Timings: see bench/README.md."""
    head_dtype: Literal["float32", "bfloat16"] = "float32"
    """The LM head's matmul under model.autocast. float32 keeps log-probs closer to a float32
    model's (half the error of a bfloat16 head); bfloat16 is what TRL computes under bf16, and
    is faster (bench/README.md)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them
    from the forward: the same gradients in less memory, for about one more forward pass per
    update (bench/README.md). Works with LoRA, a critic and a reward model's backbone."""

    def check(self) -> Iterable[Problem]:
        if self.head_dtype != "float32" and self.autocast == "off":
            yield Problem(
                "head_dtype",
                self.head_dtype,
                "applies under model.autocast only; set --model.autocast bfloat16 (or "
                "auto), or leave model.head_dtype float32",
            )
        base = self.device.split(":")[0]
        index = self.device.partition(":")[2]
        if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
            yield Problem(
                "device", self.device, "is not a device; use auto, cpu, cuda, cuda:N or mps"
            )


@dataclass(frozen=True)
class SampledModelCfg(ModelCfg):
    """The model outputs are sampled from: local, or run by an OpenAI-compatible server."""

    path: SampledModelPath = "smollm2"
    """Embedded alias (smollm2), a local Hugging Face model directory, or NAME@http://HOST/v1:
    the model NAME an OpenAI-compatible server runs (rlhfkit serve, vLLM ...; API key in
    $OPENAI_API_KEY)."""

    def check(self) -> Iterable[Problem]:
        yield from ModelCfg.check(self)
        if endpoint_spec(self.path) is None:
            return
        for local in fields(ModelCfg):  # how a model runs here: the server decides that
            if local.name != "path" and getattr(self, local.name) != local.default:
                yield Problem(
                    local.name,
                    getattr(self, local.name),
                    f"applies to a local model; {self.path} runs on its server: drop "
                    f"--model.{local.name}",
                )


@dataclass(frozen=True)
class GenCfg:
    """How completions are sampled."""

    max_new_tokens: PositiveInt = 64
    """Most tokens generated per completion."""
    temperature: NonNegativeFloat = 1.0
    """Sampling temperature; 0 means greedy decoding."""
    top_p: Annotated[float, Bounds(gt=0, le=1)] = 1.0
    """Nucleus sampling: keep the smallest token set with this much probability (1 = off)."""
    top_k: NonNegativeInt = 0
    """Keep only the k most likely tokens (0 = off)."""
    stop: tuple[str, ...] = ()
    """Stop strings: a completion ends before the first one (repeat the flag for several)."""
    batch_size: PositiveInt = 8
    """Prompts generated together (left-padded, one KV cache); for a model a server runs
    (NAME@URL), requests sent at once."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """Wrap prompts in the tokenizer's chat template: auto uses it when the model has one. A
    model a server runs (NAME@URL) is asked through /chat/completions (the server applies its
    template) unless this is off: then through /completions, with the prompt as it is."""
    backend: str = "hf"
    """Generation backend: hf (transformers, default), vllm (vLLM in the trainer's process, with
    the policy's weights pushed after each update; needs `make vllm-env`, see docs/vllm.md),
    vllm-server (a `vllm serve` process at gen.server_url, sent the policy's weights before each
    rollout) or one a plug-in registered."""
    server_url: str = ""
    """The vLLM server gen.backend vllm-server samples on, e.g. http://localhost:8000."""
    server_timeout_s: PositiveFloat = 600.0
    """Seconds to wait for a server's answer to one request or weight update: the vLLM server
    of gen.backend vllm-server, or the server of a model given as NAME@URL."""
    compile: Literal["auto", "on", "off"] = "auto"
    """Decode with a static KV cache and a compiled token step (torch.compile; CUDA graphs on a
    GPU, where a small model's eager decoding is kernel-launch bound). auto: on for the sampling
    of RL and hindsight training loops on CUDA, off for one-shot generate, evaluation and data
    stages, and off for a model under model.autocast (a static cache holds one dtype). Each batch
    shape is compiled once, on its first batch (bench/README.md); on a CPU it gains nothing."""

    def check(self) -> Iterable[Problem]:
        if self.backend not in GEN_BACKENDS:
            yield Problem(
                "backend",
                self.backend,
                "is not a generation backend; choose one of " + ", ".join(sorted(GEN_BACKENDS)),
            )
        if self.backend == "vllm-server" and not self.server_url:
            yield Problem(
                "server_url",
                self.server_url,
                "is needed by gen.backend vllm-server: the server's address, e.g. "
                "http://localhost:8000 (docs/vllm.md)",
            )


@dataclass(frozen=True)
class OptimCfg:
    """Optimiser, schedule and gradient handling."""

    lr: PositiveFloat = 1e-5
    """Peak learning rate (AdamW)."""
    weight_decay: NonNegativeFloat = 0.0
    """AdamW decoupled weight decay."""
    adam_beta1: Fraction = 0.9
    """AdamW beta1."""
    adam_beta2: Fraction = 0.999
    """AdamW beta2."""
    adam_eps: PositiveFloat = 1e-8
    """AdamW epsilon."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate decay after warm-up."""
    warmup_steps: NonNegativeInt = 0
    """Optimiser steps of linear warm-up from 0 to lr."""
    grad_accum_steps: PositiveInt = 1
    """Micro-batches whose gradients are summed before one optimiser step."""
    max_grad_norm: NonNegativeFloat = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    max_nonfinite_steps: PositiveInt = 3
    """A NaN/inf loss or gradient skips the step; abort after this many in a row."""


@dataclass(frozen=True)
class LogCfg:
    """What is recorded and shown."""

    every: PositiveInt = 1
    """Write metrics every this many steps."""
    tensorboard: bool = True
    """Also write TensorBoard event files (metrics are always written as JSONL)."""
    progress: bool = True
    """Show live progress bars (turned off automatically when output is not a terminal)."""
    wandb: bool = False
    """Also log to Weights & Biases (pip install 'rlhfkit[tracking]'): the config, every logged
    step, the summary and the run's files (docs/tracking.md)."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """offline: write the W&B run under RUN/wandb/ with no network (upload it later with `wandb
    sync`). online: send it as it runs (needs `wandb login` or WANDB_API_KEY)."""
    mlflow: bool = False
    """Also log to MLflow (pip install 'rlhfkit[tracking]'): the config as parameters, every
    logged step, the summary, and the run's files as artifacts (docs/tracking.md)."""
    mlflow_uri: str = "mlruns"
    """Where MLflow keeps runs: a directory (MLflow's local file store, relative to where rlhfkit
    is started), sqlite:///FILE.db, or the http:// address of an MLflow tracking server."""
    project: str = "rlhfkit"
    """The W&B project and the MLflow experiment the run is filed under."""

    def check(self) -> Iterable[Problem]:
        if not self.project.strip():
            yield Problem("project", self.project, "is empty; name a project, e.g. rlhfkit")
        if self.mlflow and not self.mlflow_uri.strip():
            yield Problem(
                "mlflow_uri", self.mlflow_uri, "is empty; give a directory such as mlruns"
            )


RUN_MARKER = "# rlhfkit "
"""First line of the config.toml that a run directory starts with (then the command's name)."""


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds an rlhfkit run: a config.toml that rlhfkit wrote, not merely any
    file of that name (``rlhfkit config show`` output has no marker line)."""
    try:
        with (path / "config.toml").open(encoding="utf-8") as f:
            return f.readline().startswith(RUN_MARKER)
    except (OSError, UnicodeDecodeError):
        return False


@dataclass(frozen=True)
class DistCfg:
    """Data parallelism when torchrun starts the command (torchrun --nproc_per_node N -m
    rlhfkit ...; without torchrun it is ignored). Batch sizes are per rank: a step's global
    batch is the per-rank batch x the world size (README "Scaling out")."""

    strategy: Literal["ddp", "fsdp2"] = "ddp"
    """ddp: a full replica per rank, gradients all-reduced. fsdp2: parameters, gradients and
    optimiser state sharded over the ranks (torch.distributed.fsdp.fully_shard)."""
    mixed_precision: Literal["off", "bf16"] = "off"
    """bf16: compute in bfloat16, keep weights, gradient reductions and AdamW in float32."""
    cpu_offload: bool = False
    """fsdp2 on GPUs: keep the sharded parameters, gradients and optimiser state in CPU memory."""
    timeout_s: PositiveInt = 600
    """Seconds a rank waits for the others in a collective before failing the run: a rank that
    hangs or dies makes the others exit with an error after at most this long."""

    def check(self) -> Iterable[Problem]:
        if self.cpu_offload and self.strategy != "fsdp2":
            yield Problem("cpu_offload", True, "offloads shards; use it with dist.strategy fsdp2")


@dataclass(frozen=True)
class RunCfg:
    """Where a run lives, its seed, and how it restarts."""

    output_dir: str = ""
    """Run directory; empty means runs/<command>-<date>-<time>."""
    seed: NonNegativeInt = 0
    """Seed for every random number generator (Python, NumPy, torch)."""
    deterministic: bool = False
    """Bitwise-identical runs and resumes on the same machine, software and thread count:
    deterministic kernels (torch.use_deterministic_algorithms), MKL's reproducible mode and a
    resumed run's thread count restored. Without it a seeded run can drift from its twin in the
    last bits (threaded sums), then sample other tokens. Costs step time (bench/README.md)."""
    resume: bool = False
    """Continue the run in output_dir from its newest intact checkpoint. With --config
    RUN/config.toml the run continues in RUN, where that file is (a copied run resumes the
    copy); an explicit --run.output_dir wins."""
    overwrite: bool = False
    """Delete a previous run in output_dir and start afresh (only an rlhfkit run: a directory
    of other files is never deleted)."""
    checkpoint_every: NonNegativeInt = 50
    """Save a checkpoint every this many steps (0 = only at the end)."""
    keep_checkpoints: PositiveInt = 2
    """How many recent checkpoints to keep on disk."""

    def check(self) -> Iterable[Problem]:
        if self.resume and self.overwrite:
            yield Problem("resume", True, "and run.overwrite are both set; choose one")
            return
        if not self.output_dir:
            if self.resume:
                yield Problem(
                    "output_dir",
                    "",
                    "is empty, so there is no run to resume; "
                    "pass --run.output_dir DIR of the run to continue",
                )
            return
        path = Path(os.path.expanduser(self.output_dir))
        holds_run = is_run_dir(path)
        if path.exists() and not path.is_dir():
            yield Problem("output_dir", self.output_dir, "is a file; give a directory")
        elif holds_run and not (self.resume or self.overwrite):
            yield Problem(
                "output_dir",
                self.output_dir,
                "holds another run; pass --resume to continue it, --overwrite to "
                "replace it, or choose another --run.output_dir",
            )
        elif self.resume and not (path / "config.toml").is_file():
            yield Problem(
                "output_dir",
                self.output_dir,
                "holds no run to resume (no config.toml); drop --resume to start one",
            )
        elif not self.resume and not holds_run and path.is_dir() and any(path.iterdir()):
            # --overwrite deletes runs only: a directory of someone's own files is never cleared
            yield Problem(
                "output_dir",
                self.output_dir,
                "is not empty and is not an rlhfkit run (no config.toml written by "
                f"rlhfkit){', so --overwrite will not delete it' if self.overwrite else ''}"
                "; choose a new or empty directory, or move its files away yourself",
            )


def default(factory: type) -> Any:
    """Field default for a nested group: ``model: ModelCfg = default(ModelCfg)``."""
    return field(default_factory=factory)


@dataclass(frozen=True)
class LoraCfg:
    """LoRA adapters (peft): train small low-rank matrices instead of every weight."""

    rank: NonNegativeInt = 0
    """Adapter rank; 0 trains every weight (no LoRA)."""
    alpha: PositiveFloat = 16.0
    """Scaling numerator: updates are scaled by alpha / rank."""
    dropout: Fraction = 0.0
    """Dropout on the adapter input."""
    target_modules: tuple[str, ...] = ("all-linear",)
    """Module names to adapt; all-linear adapts every linear layer but the output head."""


@dataclass(frozen=True)
class PromptDataCfg:
    """Where training and held-out prompts come from."""

    shorthand: ClassVar[str] = "prompts"  # `--data X` sets `--data.prompts X`

    prompts: str = "vader:movies"
    """A prompt file (.jsonl/.csv/.parquet/.txt), a dataset saved by save_to_disk, or a built-in set: vader:movies|tweets|amazon|nyt
    (openings of human-rated texts, train split) or reasoning_gym:<task>[:key=value,...]
    (the task's own options: reasoning_gym:chain_sum:max_terms=2,max_digits=1), qa:fanoutqa,
    mmlu:all|SUBJECT or translation:fr|de|es (docs/tasks.md)."""
    prompt_field: str = "prompt"
    """Column holding the prompt in a prompt file (a chat "messages" column also works)."""
    eval_prompts: str = ""
    """Held-out prompts for evaluation; empty takes the test split of a built-in set."""
    max_prompts: NonNegativeInt = 0
    """Use at most this many training prompts (0 = all)."""
    eval_size: NonNegativeInt = 64
    """Held-out prompts evaluated before, during (eval.every) and after training (0 = no
    evaluation); at least 2, for an interval."""

    def check(self) -> Iterable[Problem]:
        if self.eval_size == 1:
            yield Problem("eval_size", 1, "gives no interval; evaluate 2 prompts or more (0: none)")
        for name in ("prompts", "eval_prompts"):
            value = getattr(self, name)
            if not value or ":" in value and not Path(value).exists():
                continue  # a built-in set: resolved (and checked) where it is loaded
            if message := file_problem(value, saved_dataset=True):
                yield Problem(
                    name, value, message + "; or name a built-in set such as vader:movies"
                )


@dataclass(frozen=True)
class FeedbackDataCfg:
    """Human feedback data: a file, a saved Hugging Face dataset, or a built-in set."""

    shorthand: ClassVar[str] = "path"  # `--data X` sets `--data.path X`

    path: str = "vader:movies"
    """A .jsonl/.json/.csv/.parquet file, a directory saved by datasets' save_to_disk, or a
    built-in set of real human ratings: vader:movies|tweets|amazon|nyt; or a task set's gold
    answers as demonstrations (sft): qa:fanoutqa, mmlu:all|SUBJECT, translation:fr|de|es,
    wiki:summaries (Wikipedia leads and their human-written one-line descriptions)."""
    eval_path: str = ""
    """Held-out data in the same form; empty takes a built-in set's validation split (or a saved
    dataset's), or else eval_fraction of path's rows, chosen by a hash of each row."""
    eval_fraction: Fraction = 0.05
    """Share of path's rows held out for evaluation when eval_path is empty."""
    prompt_field: str = "prompt"
    """Column holding the prompt; empty when the data have none (texts are judged alone)."""
    completion_field: str = "completion"
    """Column holding the completion of demonstrations, ratings and binary labels."""
    chosen_field: str = "chosen"
    """Column holding the preferred completion of a pair."""
    rejected_field: str = "rejected"
    """Column holding the other completion of a pair."""
    rating_field: str = "rating"
    """Column holding a numeric rating (higher is better); pairs and labels can be made from it."""
    label_field: str = "label"
    """Column holding a binary label: true/false, 1/0, yes/no or good/bad (KTO)."""
    annotator_field: str = "annotator"
    """Column naming the rater (optional); several raters' rows of one text merge (their mean)."""
    messages_field: str = "messages"
    """Column holding a chat ({role, content} messages) that ends with the assistant's reply."""
    text_field: str = "text"
    """Column holding a whole text to learn (sft's language-modelling rows)."""
    margin_field: str = "margin"
    """Column holding how strongly a pair's chosen completion is preferred (optional; 0 if none)."""
    weight_field: str = "weight"
    """Column holding a row's sample weight (optional; 1 if none)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """A row that cannot be used (missing column, empty text, rating not a number ...): error
    stops at it, naming file, row and fix; skip drops it, counted in one warning."""
    min_gap: NonNegativeFloat = 1.0
    """Pairs made from ratings: keep only pairs whose ratings differ by at least this."""
    pairs_per_text: PositiveInt = 2
    """Pairs made from ratings: random partners drawn for each text."""
    max_rows: NonNegativeInt = 0
    """Use at most this many training rows, the first ones (0 = all)."""
    balance: Literal["none", "inverse-frequency"] = "none"
    """Weigh rows so each class counts the same in total: binary labels by label, ratings by
    rating rounded to a whole number."""

    def check(self) -> Iterable[Problem]:
        for name in ("path", "eval_path"):
            value = getattr(self, name)
            if (value or name == "path") and (message := _feedback_source_problem(value)):
                yield Problem(name, value, message)


def _feedback_source_problem(value: str) -> str | None:
    """What is wrong with a feedback data source (None if nothing): a built-in set, an existing
    data file or a directory written by datasets' save_to_disk."""
    builtins = [f"vader:{corpus}" for corpus in CORPORA]
    if not value:
        return f"is empty; give a data file, a dataset directory or a built-in set ({builtins[0]})"
    if value.partition(":")[0] in TASK_SETS:
        return None  # a task set's train split as demonstrations; its loader checks the name
    hint = did_you_mean(value, builtins)
    if value.startswith("vader:"):
        return (
            None
            if value in builtins
            else (f"is not a built-in set; {hint}choose one of {', '.join(builtins)}")
        )
    path = Path(os.path.expanduser(value))
    if path.is_dir():
        if is_saved_dataset(path):
            return None
        return (
            "is a directory but not a dataset saved by datasets' save_to_disk (no "
            "dataset_dict.json or state.json); give such a directory or a data file"
        )
    if path.is_file():
        if path.suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"):
            return None
        return "is not a .jsonl, .json, .csv or .parquet file; convert it to one of those"
    return (
        f"is neither a file nor a built-in set; {hint}check the path (relative paths start "
        f"at the current directory) or name a built-in set: {', '.join(builtins)}"
    )


CLASSIFY_BUILTINS = ("wiki_topics",)


@dataclass(frozen=True)
class ClassifyDataCfg:
    """Labelled texts for a classifier: a file with a text and a label column, or a built-in set."""

    shorthand: ClassVar[str] = "path"  # `--data X` sets `--data.path X`

    path: str = "wiki_topics"
    """A .jsonl/.json/.csv/.parquet file of labelled texts, or the built-in wiki_topics (Wikipedia
    leads, 11 topics, fixed train/validation/test splits by title)."""
    eval_path: str = ""
    """Held-out texts in the same form; empty takes wiki_topics' validation split, or else
    eval_fraction of path's rows, chosen by a hash of each text."""
    eval_fraction: Fraction = 0.1
    """Share of path's rows held out for evaluation when eval_path is empty."""
    text_field: str = "text"
    """Column holding the text to classify."""
    label_field: str = "label"
    """Column holding its class: a string or a whole number (any number of classes)."""
    balance: Literal["none", "inverse-frequency"] = "none"
    """Weigh training rows so each class counts the same in total (the classes of real data are
    rarely balanced: wiki_topics runs from 1,828 to 256 articles)."""
    max_rows: NonNegativeInt = 0
    """Use at most this many training rows, the first ones (0 = all)."""
    on_bad_row: Literal["error", "skip"] = "error"
    """A row without a usable text or label: error stops at it, naming file, row and fix; skip
    drops it, counted in one warning."""

    def check(self) -> Iterable[Problem]:
        for name in ("path", "eval_path"):
            value = getattr(self, name)
            if not value and name == "eval_path":
                continue
            if value in CLASSIFY_BUILTINS:
                continue
            if message := file_problem(value) or _suffix_problem(value):
                yield Problem(name, value, message + "; or name a built-in set: wiki_topics")


def _suffix_problem(value: str) -> str | None:
    if Path(value).suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"):
        return None
    return "is not a .jsonl, .json, .csv or .parquet file; convert it to one of those"
