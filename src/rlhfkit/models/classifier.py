"""A sequence classifier: a pretrained backbone and a linear head giving one logit per class.

    logits(x) = W · pool(h(x)) + b,      P(class k | x) = softmax(logits(x))_k

The backbone and pooling are the reward model's (``rlhfkit.models.reward_model``): the base
model of a causal LM read at its last real token (SmolLM2), or a sentence encoder's mean over
tokens (MiniLM, as sentence-transformers pools it). ``rlhfkit classify`` trains it; the
``classifier:DIR:LABEL`` reward reads P(LABEL | completion). On disk:

    DIR/config.json, model.safetensors   the backbone (save_pretrained; LoRA merged in)
    DIR/tokenizer*.json                  its tokenizer
    DIR/head.safetensors                 the head, float32, (K, H) weight and (K,) bias
    DIR/classifier.json                  format, source, pooling, max_length, labels, info
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.models.reward_model import (
    HEAD_FILE,
    POOLINGS,
    by_length,
    linear_head,
    load_backbone,
    open_backbone,
    pool,
    tokenize,
    write_model,
)

FORMAT_VERSION = 1
MANIFEST = "classifier.json"


class Classifier(torch.nn.Module):
    """Backbone + (K, H) head; ``model(input_ids, attention_mask)`` gives logits, (B, K)."""

    def __init__(
        self,
        backbone: Any,
        tokenizer: Any,
        labels: list[str],
        pooling: str,
        max_length: int,
        source: str,
        info: dict[str, Any] | None = None,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling {pooling!r}: use one of {', '.join(POOLINGS)} (or auto)")
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ConfigError(f"labels {labels}: a classifier needs 2 or more distinct classes")
        self.backbone, self.tokenizer, self.labels = backbone, tokenizer, list(labels)
        self.pooling, self.max_length, self.source = pooling, max_length, source
        self.info = dict(info or {})
        self.head = linear_head(backbone, len(labels))  # logits of unit order at the start
        self.packed = pooling == "last"  # packed forwards for decoders (rlhfkit.packing)

    @classmethod
    def from_backbone(
        cls,
        path_or_alias: str,
        labels: list[str],
        pooling: str = "auto",
        max_length: int = 256,
        device: str = "auto",
        dtype: str = "auto",
        autocast: str = "off",
    ) -> Classifier:
        """A fresh classifier for training: pretrained backbone, new head over ``labels``."""
        backbone, tokenizer, pooling = open_backbone(
            path_or_alias, pooling, max_length, device, dtype, autocast
        )
        return cls(backbone, tokenizer, labels, pooling, max_length, source=str(path_or_alias))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits: (B, T) ids and mask -> (B, K) float32, differentiable."""
        pooled = pool(self.backbone, input_ids, attention_mask, self.pooling, self.packed)
        return self.head(pooled.float())  # (B, K)

    def encode(self, texts: list[str]) -> Any:
        """``input_ids`` and ``attention_mask`` (B, T), right-padded and cut to max_length, on
        the model's device."""
        return tokenize(self.tokenizer, texts, self.max_length, self.head.weight.device)

    def probabilities(self, texts: list[str], batch_size: int = 32) -> Tensor:
        """P(class | text) for each text in order, (N, K); eval mode, no gradients. Texts run in
        order of length so batches pad little; a text's result does not depend on its batch."""
        return by_length(self, texts, batch_size, lambda batch: self(**batch).softmax(-1))

    def save(self, directory: str | os.PathLike, info: dict[str, Any] | None = None) -> Path:
        """Write the classifier to ``directory``, replacing an old one whole (a temp directory
        beside it, swapped in by rename: a crash leaves the old model or the new one)."""
        if info is not None:
            self.info = dict(info)
        manifest = {
            "format": FORMAT_VERSION,
            "source": self.source,
            "pooling": self.pooling,
            "max_length": self.max_length,
            "labels": self.labels,
            "info": self.info,
        }
        return write_model(
            directory, self.backbone, self.tokenizer, self.head, MANIFEST, manifest, "classifier"
        )


def load_classifier(
    directory: str | os.PathLike, device: str = "auto", dtype: str = "auto"
) -> Classifier:
    """The classifier ``Classifier.save`` wrote to ``directory``, in eval mode."""
    from safetensors.torch import load_file

    path = Path(directory).expanduser()
    fix = "give the model directory of a run of rlhfkit classify (RUN/model)"
    if not (path / MANIFEST).is_file():
        raise RlhfkitError(f"{path}: no {MANIFEST}, so not a classifier; {fix}")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        fields = [manifest[key] for key in ("format", "pooling", "max_length", "labels")]
    except (ValueError, KeyError, TypeError) as e:
        raise RlhfkitError(
            f"{path / MANIFEST}: unreadable or incomplete ({type(e).__name__}: {e}); train the "
            "classifier again with rlhfkit classify"
        ) from None
    if fields[0] != FORMAT_VERSION:
        raise RlhfkitError(
            f"{path}: classifier format {fields[0]!r}, but this rlhfkit reads format "
            f"{FORMAT_VERSION}; train it again with rlhfkit classify"
        )
    if not (path / HEAD_FILE).is_file():
        raise RlhfkitError(f"{path}: no {HEAD_FILE}, so the save is incomplete; {fix}")
    backbone, tokenizer = load_backbone(path, device, dtype)
    model = Classifier(
        backbone,
        tokenizer,
        fields[3],
        fields[1],
        fields[2],
        manifest.get("source", str(path)),
        manifest.get("info"),
    )
    try:
        model.head.load_state_dict(
            load_file(str(path / HEAD_FILE), device=str(model.head.weight.device))
        )
    except (RuntimeError, OSError) as e:
        raise RlhfkitError(
            f"{path / HEAD_FILE}: missing or does not fit the backbone beside it "
            f"({' '.join(str(e).split())[:200]}); train it again with rlhfkit classify"
        ) from None
    return model.eval()
