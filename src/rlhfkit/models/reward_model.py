"""A learned reward model: a pretrained backbone and a linear head giving one score per text.

    r(x) = w · pool(h(x)) + b,        score(x) = (r(x) - offset) / scale

``h`` is the backbone's last hidden states ``(T, H)``: the base model of a causal LM (the LM
head dropped, as in Stiennon et al. 2020 and InstructGPT) or a sentence encoder such as MiniLM.
``pool`` reads one vector from them:

- ``last``, for decoders: the state of the last real token, the only one that has attended to
  the whole text (causal attention);
- ``mean``, for encoders: the mean over real tokens, as sentence-transformers pools MiniLM, so
  the head starts from the embedding the encoder was trained to produce.

A Bradley–Terry reward is defined only up to a constant and its scale depends on the backbone,
so the trainer stores ``offset`` and ``scale`` (mean and standard deviation of raw scores on
its training texts) with the model: ``score`` then comes out near unit scale for RL whatever
the backbone. The ``reward`` command trains it; this module holds the model,
its tokenisation and its on-disk format:

    DIR/config.json, model.safetensors   the backbone (save_pretrained; LoRA merged in)
    DIR/tokenizer*.json                  its tokenizer
    DIR/head.safetensors                 the head, float32
    DIR/reward_model.json                format, source, pooling, max_length, offset, scale,
                                         score_range (lowest and highest normalised score on
                                         the training texts; absent in older saves), info
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from rlhfkit.atomic import replace_dir
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.losses.policy import masked_mean
from rlhfkit.packing import packed_forward

if TYPE_CHECKING:
    from transformers import BatchEncoding

FORMAT_VERSION = 1
MANIFEST = "reward_model.json"
HEAD_FILE = "head.safetensors"
MANIFEST_FIELDS = ("source", "pooling", "max_length", "offset", "scale")
POOLINGS = ("last", "mean")
# Decoder-only families whose saved base model (architecture "LlamaModel", say) no longer
# says "ForCausalLM"; a checkpoint with an LM head is recognised by its architecture.
DECODER_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi",
        "phi3",
        "gpt2",
        "gpt_neox",
        "olmo2",
        "smollm3",
    }
)


def default_pooling(config: Any) -> str:
    """``last`` for a decoder-only backbone, ``mean`` for anything else (an encoder)."""
    decoder = (
        getattr(config, "is_decoder", False)
        or config.model_type in DECODER_TYPES
        or any(name.endswith("ForCausalLM") for name in config.architectures or ())
    )
    return "last" if decoder else "mean"


def pool(
    backbone: Any, input_ids: Tensor, attention_mask: Tensor, pooling: str, packed: bool
) -> Tensor:
    """One vector per text from the backbone's last hidden states: (B, T) -> (B, H).

    ``last``: the state of the last real token (found from the mask); ``mean``: the mean over
    real tokens. ``packed`` runs a causal decoder's texts as one packed row (last pooling only:
    the same states, less compute), falling back to the padded batch where it does not apply.
    """
    run = packed_forward(backbone, input_ids, attention_mask) if packed else None
    if run is not None:
        hidden, packing = run  # (N, H): the real tokens only
        return hidden[packing.last]  # (B, H)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask
    ).last_hidden_state  # (B, T, H)
    if pooling == "last":
        columns = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        last = torch.where(attention_mask.bool(), columns, -1).amax(-1).clamp(min=0)  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
    return masked_mean(hidden.float(), attention_mask.unsqueeze(-1), dim=1)  # (B, H)


def linear_head(backbone: Any, outputs: int) -> torch.nn.Linear:
    """A (outputs, H) linear head on the backbone's device, float32 whatever the backbone's
    dtype: bfloat16 keeps 3 significant digits, too few for the small score differences a
    pairwise loss works on.

    Weights drawn with std 1/sqrt(H + 1), as OpenAI's lm-human-preferences (Ziegler et al.
    2019) and Stiennon et al. 2020: initial outputs of unit order, and unlike a zero head,
    gradient reaches the backbone from the first step. Bias 0.
    """
    hidden_size = backbone.config.get_text_config().hidden_size
    device = next(backbone.parameters()).device
    head = torch.nn.Linear(hidden_size, outputs, dtype=torch.float32, device=device)
    torch.nn.init.normal_(head.weight, std=1 / math.sqrt(hidden_size + 1))
    torch.nn.init.zeros_(head.bias)
    return head


def open_backbone(
    path_or_alias: str, pooling: str, max_length: int, device: str, dtype: str, autocast: str
) -> tuple[Any, Any, str]:
    """(backbone, tokenizer, pooling) for a fresh head: ``pooling`` "auto" resolved by the
    backbone's kind, ``max_length`` checked against its context. ``autocast`` as
    ``model.autocast``: the backbone's matmuls in bfloat16, the head float32."""
    from rlhfkit.models import resolve_model_dir

    if pooling not in ("auto", *POOLINGS):
        raise ConfigError(f"pooling {pooling!r}: use auto, last (decoders) or mean (encoders)")
    path = resolve_model_dir(path_or_alias)
    backbone, tokenizer = load_backbone(path, device, dtype, autocast)
    positions = getattr(backbone.config, "max_position_embeddings", None) or math.inf
    if not 1 <= max_length <= positions:
        raise ConfigError(
            f"max_length {max_length}: {path_or_alias} reads 1 to {positions} "
            "tokens; give a max_length in that range"
        )
    pooling = default_pooling(backbone.config) if pooling == "auto" else pooling
    return backbone, tokenizer, pooling


def tokenize(tokenizer: Any, texts: list[str], max_length: int, device: Any) -> BatchEncoding:
    """``input_ids`` and ``attention_mask`` (B, T), right-padded, cut to ``max_length`` (texts
    lose their end), on ``device``."""
    batch = tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=max_length,
        return_token_type_ids=False,
        return_tensors="pt",
    )
    return batch.to(device)


def write_model(
    directory: str | os.PathLike,
    backbone: Any,
    tokenizer: Any,
    head: torch.nn.Module,
    manifest_file: str,
    manifest: dict[str, Any],
    kind: str,
) -> Path:
    """Write backbone, tokenizer, head and manifest (plus the rlhfkit version and the time) to
    ``directory``, replacing any old one whole.

    Everything is written to a temp directory beside the target and swapped in by rename, so a
    crash leaves the old model or the new one, never a mix. A directory holding something
    other than a ``kind`` (no ``manifest_file``) is refused rather than deleted.
    """
    from safetensors.torch import save_file

    from rlhfkit import __version__
    from rlhfkit.models import quiet_transformers

    manifest = {**manifest, "rlhfkit": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    manifest_text = json.dumps(manifest, indent=2) + "\n"  # fails here, before any write
    directory = Path(directory).expanduser()
    if (
        directory.exists()
        and not (directory / manifest_file).is_file()
        and any(directory.iterdir())
    ):
        raise RlhfkitError(
            f"{directory}: exists and holds something other than a {kind}, which saving "
            "would delete; choose another directory"
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".tmp-{directory.name}-"))
    try:
        # merging LoRA changes a model in place: merge a copy, the caller may train on
        if hasattr(backbone, "peft_config"):
            backbone = copy.deepcopy(backbone).merge_and_unload()
        with quiet_transformers():
            backbone.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        weights = {k: v.detach().float().contiguous().cpu() for k, v in head.state_dict().items()}
        save_file(weights, str(staging / HEAD_FILE))
        (staging / manifest_file).write_text(manifest_text, encoding="utf-8")
        replace_dir(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def by_length(model: Any, texts: list[str], batch_size: int, run: Any) -> Tensor:
    """``run(model.encode(batch))`` over ``texts`` in batches, rows back in input order, (N, ...).

    Texts run in order of length so that each batch pads little; a text's result does not
    depend on its batch. Eval mode and no gradients; the previous mode is restored after.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    parts = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                parts.append(run(model.encode([texts[i] for i in rows])).float().cpu())
    finally:
        model.train(was_training)
    if not parts:
        return torch.zeros(0)
    result = torch.empty_like(torch.cat(parts))
    result[torch.tensor(order)] = torch.cat(parts)
    return result


class RewardModel(torch.nn.Module):
    """Backbone + scalar head; ``model(input_ids, attention_mask)`` is the raw score, (B,)."""

    def __init__(
        self,
        backbone: Any,
        tokenizer: Any,
        pooling: str,
        max_length: int,
        source: str,
        offset: float = 0.0,
        scale: float = 1.0,
        info: dict[str, Any] | None = None,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling {pooling!r}: use one of {', '.join(POOLINGS)} (or auto)")
        self.backbone, self.tokenizer = backbone, tokenizer
        self.pooling, self.max_length, self.source = pooling, max_length, source
        self.offset, self.scale, self.info = offset, scale, dict(info or {})
        self.score_range: tuple[float, float] | None = None  # set by training, then saved
        self.head = linear_head(backbone, 1)
        # last-token pooling reads one state per text, so a causal decoder's batches can run
        # packed, without their padding (rlhfkit.packing): a quarter less compute at typical
        # padding. False runs every batch padded.
        self.packed = pooling == "last"

    @classmethod
    def from_backbone(
        cls,
        path_or_alias: str,
        pooling: str = "auto",
        max_length: int = 256,
        device: str = "auto",
        dtype: str = "auto",
        autocast: str = "off",
    ) -> RewardModel:
        """A fresh reward model for training: pretrained backbone, new head, offset 0, scale 1.

        ``autocast`` as ``model.autocast``: the backbone's matmuls in bfloat16, the head float32.
        """
        backbone, tokenizer, pooling = open_backbone(
            path_or_alias, pooling, max_length, device, dtype, autocast
        )
        return cls(backbone, tokenizer, pooling, max_length, source=str(path_or_alias))

    # --- scoring ---------------------------------------------------------------------------------

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Raw scores r(x): (B, T) ids and mask -> (B,) float32, differentiable.

        The last real token is found from the mask, so left padding gives the same index as
        right padding. Position ids are the backbone's default 0..T-1, exact for the right
        padding ``encode`` makes (and, for rotary decoders, equal under left padding too).
        With ``self.packed`` a causal decoder runs the texts as one packed row instead (the same
        scores, less compute).
        """
        pooled = pool(self.backbone, input_ids, attention_mask, self.pooling, self.packed)
        return self.head(pooled.float()).squeeze(-1)  # (B,)

    def score(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Normalised scores (r - offset) / scale: (B,)."""
        return (self(input_ids, attention_mask) - self.offset) / self.scale

    def encode(self, texts: list[str]) -> BatchEncoding:
        """``input_ids`` and ``attention_mask`` (B, T), right-padded, on the model's device.

        A mapping: ``model(**model.encode(texts))``. Texts longer than ``max_length`` tokens lose
        their end (the tokenizer's right truncation): the score then judges the first
        ``max_length`` tokens only, so train and score with a ``max_length`` that covers prompt
        and completion.
        """
        return tokenize(self.tokenizer, texts, self.max_length, self.head.weight.device)

    def score_texts(
        self, texts: list[str], batch_size: int = 32, normalised: bool = True
    ) -> list[float]:
        """Scores of ``texts`` in their order (raw r with ``normalised=False``); eval mode, no
        gradients.

        Texts are scored in order of length so that each batch pads little; a text's score does
        not depend on its batch. The previous train/eval mode is restored after.
        """
        score = self.score if normalised else self
        return by_length(self, texts, batch_size, lambda batch: score(**batch)).tolist()

    # --- saving ----------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike, info: dict[str, Any] | None = None) -> Path:
        """Write the model to ``directory``, replacing any old one whole; returns the path.

        ``info`` (data, metrics, provenance: anything JSON) replaces ``self.info`` when given.
        Everything is written to a temp directory beside the target and swapped in by rename,
        so a crash leaves the old model or the new one, never a mix.
        """
        if not (math.isfinite(self.offset) and math.isfinite(self.scale) and self.scale > 0):
            raise RlhfkitError(
                f"reward model offset {self.offset} / scale {self.scale}: need a "
                "finite offset and a finite scale > 0 (std of raw scores)"
            )
        if info is not None:
            self.info = dict(info)
        manifest = {
            "format": FORMAT_VERSION,
            "source": self.source,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "offset": self.offset,
            "scale": self.scale,
            **({"score_range": list(self.score_range)} if self.score_range else {}),
            "info": self.info,
        }
        return write_model(
            directory, self.backbone, self.tokenizer, self.head, MANIFEST, manifest, "reward model"
        )


def load_reward_model(
    directory: str | os.PathLike, device: str = "auto", dtype: str = "auto"
) -> RewardModel:
    """The reward model ``RewardModel.save`` wrote to ``directory``, in eval mode."""
    from safetensors.torch import load_file

    path = Path(directory).expanduser()
    if not path.is_dir():
        raise RlhfkitError(
            f"reward model {str(directory)!r}: no such directory; give the "
            "directory that `rlhfkit reward` saved"
        )
    if not (path / MANIFEST).is_file():
        raise RlhfkitError(
            f"{path}: no {MANIFEST}, so this is not a reward model directory "
            "saved by rlhfkit reward; train one with rlhfkit reward"
        )
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        version = manifest.get("format")
    except (ValueError, AttributeError) as e:  # not JSON, or JSON but not an object
        raise RlhfkitError(
            f"{path / MANIFEST}: unreadable ({type(e).__name__}: {e}); the save "
            "was damaged, train the reward model again with rlhfkit reward"
        ) from None
    if version != FORMAT_VERSION:
        raise RlhfkitError(
            f"{path}: reward model format {version!r}, but this rlhfkit reads "
            f"format {FORMAT_VERSION}; retrain it with rlhfkit reward, or load it "
            f"with the rlhfkit that wrote it ({manifest.get('rlhfkit', '?')})"
        )
    missing = [name for name in ("config.json", HEAD_FILE) if not (path / name).is_file()]
    missing += [f"{MANIFEST} field {key!r}" for key in MANIFEST_FIELDS if key not in manifest]
    if missing:
        raise RlhfkitError(
            f"{path}: {', '.join(missing)} missing, so the saved reward model is "
            "incomplete; train it again with rlhfkit reward"
        )
    backbone, tokenizer = load_backbone(path, device, dtype)
    model = RewardModel(
        backbone,
        tokenizer,
        manifest["pooling"],
        manifest["max_length"],
        source=manifest["source"],
        offset=manifest["offset"],
        scale=manifest["scale"],
        info=manifest.get("info"),
    )
    if isinstance(recorded := manifest.get("score_range"), list) and len(recorded) == 2:
        model.score_range = (float(recorded[0]), float(recorded[1]))
    try:
        model.head.load_state_dict(
            load_file(str(path / HEAD_FILE), device=str(model.head.weight.device))
        )
    except RuntimeError as e:
        raise RlhfkitError(
            f"{path / HEAD_FILE}: does not fit the backbone beside it "
            f"({' '.join(str(e).split())[:200]}); train it again with "
            "rlhfkit reward"
        ) from None
    return model.eval()


def load_backbone(path: Path, device: str, dtype: str, autocast: str = "off") -> tuple[Any, Any]:
    """(base model on the device, tokenizer that pads right) from a local model directory."""
    from transformers import AutoModel, AutoTokenizer

    from rlhfkit.models import (
        LOCAL_WEIGHTS,
        enable_autocast,
        pick_autocast,
        pick_device,
        pick_dtype,
        quiet_transformers,
    )

    target = pick_device(device)
    try:
        with quiet_transformers():  # a weight-loading bar on every reward load is noise
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            backbone = AutoModel.from_pretrained(
                path, dtype=pick_dtype(dtype, target), **LOCAL_WEIGHTS
            )
    except (OSError, ValueError) as e:
        raise RlhfkitError(
            f"{path}: cannot load a model and tokenizer from this directory "
            f"({' '.join(str(e).split())[:300]}); check that its weights and "
            "tokenizer files are there and complete"
        ) from None
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise RlhfkitError(
                f"{path}: the tokenizer has neither a pad nor an EOS token to pad "
                "batches with; add a pad_token to its tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token  # the mask, not the token, marks padding
    backbone.config.use_cache = False  # a reward model never generates
    if pick_autocast(autocast, target, backbone.dtype):
        enable_autocast(backbone)
    return backbone.to(target), tokenizer
