"""The ``sentiment`` reward: a ridge head on MiniLM sentence embeddings, fitted to VADER's
human sentiment ratings (Hutto & Gilbert, ICWSM 2014).

Why this recipe: each rating is the mean of 15 to 99 people's -4..+4 judgements of a
snippet, so a regression on that mean learns human sentiment *strength*, not just polarity.
A linear head on frozen sentence embeddings has a closed-form ridge solution, so "training"
is one embedding pass plus a 384 x 384 eigendecomposition: it runs on first use, on a laptop
CPU, with no gradient steps to tune. The ridge strength is chosen on the validation split;
the test split is only used to report held-out accuracy in the cached manifest.

Embedding is the whole cost (about 150 texts/s on 2 CPU cores), so the head is fitted on a
fixed random sample of the train split: held-out accuracy levels off near 8,000 texts (77%
polarity with 8,000, and with all 19,000), and first use stays near a minute.

The head is cached as safetensors plus a JSON manifest under
``assets.home()/rewards/sentiment/<key>/``, where the key hashes the encoder weights, the
rating data and the fitting recipe: change any of them and the head is refitted, never
silently reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhfkit.config import CORPORA
from rlhfkit.data.vader import SPLITS, load_vader, split_of
from rlhfkit.rewards.registry import RewardFn, no_argument, register_reward

if TYPE_CHECKING:
    import torch

SAMPLE_SIZES = {"train": 8000, "validation": 1000}  # the test split is used whole
RIDGE_STRENGTHS = tuple(10.0 ** (k / 2) for k in range(-4, 7))  # 0.01 .. 1000
RATING_SCALE = 4.0  # human ratings span -4..+4; scores are divided by it to lie in -1..1
RECIPE = "ridge-v1"  # change when the fitting recipe changes, so old cached heads are not reused
MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on at most 256 word pieces

Embedder = Callable[..., "torch.Tensor"]  # (texts, description=None) -> (N, D)


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings: mean over real tokens, then L2-normalised (the
    pooling the model was trained with, so cosine geometry is meaningful)."""

    def __init__(self, path: str | os.PathLike, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        from rlhfkit.models import LOCAL_WEIGHTS, quiet_transformers

        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        with quiet_transformers():  # a weight-loading bar on every reward load is noise
            self.model = AutoModel.from_pretrained(path, **LOCAL_WEIGHTS).eval()
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str], description: str | None = None) -> torch.Tensor:
        """Embeddings ``(N, D)`` in input order; a progress bar when ``description`` is given.

        Texts are embedded in order of length so each batch pads little: on a CPU that is
        most of the speed.
        """
        import torch

        from rlhfkit.progress import progress

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        embeddings = torch.empty(len(texts), self.model.config.hidden_size)  # (N, D)
        shown = progress(description, len(texts)) if description else nullcontext((None, None))
        with shown as (bar, task), torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = self.tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state  # (B, T, D)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, D)
                embeddings[rows] = torch.nn.functional.normalize(pooled, dim=-1)
                if description:
                    bar.advance(task, len(rows))
        return embeddings


@dataclass(frozen=True)
class RidgeHead:
    """``rating = embedding @ weight + bias``, predicting the human mean rating (-4..+4)."""

    weight: torch.Tensor  # (D,) float64
    bias: float

    def predict(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.double() @ self.weight.double() + self.bias  # (N,)


def fit_ridge(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    strengths: Sequence[float] = RIDGE_STRENGTHS,
) -> tuple[RidgeHead, float, dict[float, float]]:
    """Ridge regression, its strength chosen by validation mean squared error.

    Solves ``w = (XᵀX + λI)⁻¹ Xᵀy`` on centred data (so the bias is not shrunk) through one
    eigendecomposition ``XᵀX = V diag(s) Vᵀ``: every λ then costs a matrix-vector product.
    Returns the head, the chosen λ and the validation MSE of every λ.
    """
    import torch

    x, y = x_train.double(), y_train.double()  # (N, D), (N,)
    x_mean, y_mean = x.mean(0), y.mean()
    centred = x - x_mean
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred)  # (D,), (D, D)
    eigenvalues = eigenvalues.clamp(min=0)  # XᵀX is positive semi-definite; rounding is not
    projected = eigenvectors.T @ (centred.T @ (y - y_mean))  # (D,)
    heads: dict[float, RidgeHead] = {}
    validation_mse: dict[float, float] = {}
    for strength in strengths:
        weight = eigenvectors @ (projected / (eigenvalues + strength))  # (D,)
        heads[strength] = RidgeHead(weight=weight, bias=float(y_mean - x_mean @ weight))
        residual = heads[strength].predict(x_val) - y_val.double()  # (V,)
        validation_mse[strength] = float((residual**2).mean())
    best = min(validation_mse, key=validation_mse.__getitem__)
    return heads[best], best, validation_mse


def pairwise_accuracy(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of pairs with different human means that the prediction orders the same way
    (a tie in the prediction counts as wrong).

    >>> import torch
    >>> pairwise_accuracy(torch.tensor([0.1, 0.5, 0.2]), torch.tensor([-1.0, 2.0, 3.0]))
    0.6666666666666666
    """
    agree = pairs = 0
    for start in range(0, len(target), 1024):  # row blocks keep memory at 1024 x N
        human = target[start : start + 1024, None] - target[None, :]  # (b, N)
        model = predicted[start : start + 1024, None] - predicted[None, :]  # (b, N)
        ordered = human > 0
        agree += int((model[ordered] > 0).sum())
        pairs += int(ordered.sum())
    return agree / pairs


def polarity_accuracy(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of texts with a non-zero human mean whose predicted sign matches it.

    >>> import torch
    >>> polarity_accuracy(torch.tensor([0.3, -0.2, 0.1]), torch.tensor([1.5, 0.5, 0.0]))
    0.5
    """
    rated = target != 0
    return float(((predicted[rated] > 0) == (target[rated] > 0)).double().mean())


# --- fitting on first use and caching ------------------------------------------------------------


def rated_texts() -> dict[str, list[Any]]:
    """The VADER texts each split contributes: a fixed random sample of train and validation
    (seeded, so the same data always gives the same head), and the whole test split."""
    import random

    splits: dict[str, list[Any]] = {split: [] for split in SPLITS}
    for record in load_vader(CORPORA):  # one read of the file, not one per split
        splits[split_of(record.corpus, record.id)].append(record)
    for split, size in SAMPLE_SIZES.items():
        if size < len(splits[split]):
            splits[split] = random.Random(0).sample(splits[split], size)
    return splits


def encoder_identity(path: Path) -> str:
    """The hash of the encoder's weight files: a different encoder needs a different head."""
    from rlhfkit.assets import sha256_of

    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")):
        digest.update(f"{file.name}:{sha256_of(file)}\n".encode())
    return digest.hexdigest()


def data_identity(splits: dict[str, list[Any]]) -> str:
    """The hash of exactly the texts and ratings the head is fitted and evaluated on."""
    digest = hashlib.sha256()
    for split, records in splits.items():
        for r in records:
            digest.update(json.dumps([split, r.corpus, r.id, r.text, r.mean]).encode())
    return digest.hexdigest()


def fit_sentiment_head(embed: Embedder, splits: dict[str, list[Any]]) -> tuple[RidgeHead, dict]:
    """Fit on ``train``, choose λ on ``validation``, measure on ``test``: the head and the
    manifest that records how well it agrees with people on texts it never saw."""
    import torch

    started = time.perf_counter()
    texts = [r.text for split in SPLITS for r in splits[split]]
    embeddings = embed(texts, description="sentiment reward, first use: embedding rated texts")
    x = dict(zip(SPLITS, torch.split(embeddings, [len(splits[s]) for s in SPLITS]), strict=True))
    y = {s: torch.tensor([r.mean for r in splits[s]], dtype=torch.float64) for s in SPLITS}
    head, strength, validation_mse = fit_ridge(
        x["train"], y["train"], x["validation"], y["validation"]
    )
    predicted = head.predict(x["test"])  # (N_test,)

    def agreement(rows: torch.Tensor) -> dict[str, float]:
        return {
            "texts": int(rows.sum()),
            "pairwise_accuracy": pairwise_accuracy(predicted[rows], y["test"][rows]),
            "polarity_accuracy": polarity_accuracy(predicted[rows], y["test"][rows]),
        }

    test_corpora = torch.tensor([CORPORA.index(r.corpus) for r in splits["test"]])  # (N_test,)
    manifest = {
        "reward": "sentiment",
        "score": f"predicted human mean rating / {RATING_SCALE:g}, clipped to -1..1",
        "encoder": "all-MiniLM-L6-v2, mean-pooled, L2-normalised",
        "data": "VADER human sentiment ratings (Hutto & Gilbert, ICWSM 2014)",
        "corpora": list(CORPORA),
        "texts": {split: len(records) for split, records in splits.items()},
        "ridge_strength": strength,
        "validation_mse": {f"{k:g}": v for k, v in validation_mse.items()},
        "test": {
            "mse": float(((predicted - y["test"]) ** 2).mean()),
            **agreement(torch.ones_like(test_corpora, dtype=torch.bool)),
            "per_corpus": {
                c: agreement(test_corpora == i)
                for i, c in enumerate(CORPORA)
                if (test_corpora == i).any()
            },
        },
        "fit_seconds": round(time.perf_counter() - started, 1),
    }
    return head, manifest


def cache_root() -> Path:
    from rlhfkit import assets

    return assets.home() / "rewards" / "sentiment"


def load_or_fit_head(embed: Embedder, encoder_id: str) -> tuple[RidgeHead, dict]:
    """The cached head for this encoder and data, fitted and cached first if there is none."""
    import torch
    from safetensors.torch import load_file, save_file

    from rlhfkit import __version__

    splits = rated_texts()
    identity = {"encoder": encoder_id, "data": data_identity(splits), "recipe": RECIPE}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    directory = cache_root() / key
    if (directory / "manifest.json").is_file():
        tensors = load_file(directory / "head.safetensors")
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        return RidgeHead(weight=tensors["weight"], bias=float(tensors["bias"])), manifest

    head, manifest = fit_sentiment_head(embed, splits)
    manifest = {
        **manifest,
        "key": key,
        "identity": identity,
        "rlhfkit": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # Build the entry in a hidden directory, then rename it into place: a crash leaves no
    # half-written head that a later run would trust (the manifest marks an entry complete).
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{key}."))
    try:
        save_file(
            {
                "weight": head.weight.double().contiguous(),
                "bias": torch.tensor([head.bias], dtype=torch.float64),
            },
            staging / "head.safetensors",
        )
        (staging / "manifest.json").write_text(
            json.dumps(manifest, indent=2) + "\n", encoding="utf-8"
        )
        os.replace(staging, directory)
    except OSError:
        if not (directory / "manifest.json").is_file():  # else another process got there first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return head, manifest


@register_reward("sentiment")
def sentiment_reward(arg: str | None) -> RewardFn:
    """Sentiment people would rate the completion, -1..1 (MiniLM + ridge on VADER ratings)."""
    no_argument("sentiment", arg)
    from rlhfkit import assets

    encoder_path = Path(assets.ensure("minilm"))
    encoder = SentenceEncoder(encoder_path)
    head, _ = load_or_fit_head(encoder, encoder_identity(encoder_path))

    def sentiment(prompts: list[str], completions: list[str], **meta: list[Any]) -> list[float]:
        """Predicted human mean rating / 4 of each completion; the prompt is not judged.

        Clipped to the rating scale: no person rates beyond ±4, so a policy that pushes the
        embedding further along the head's direction is exploiting the head, not pleasing anyone.
        """
        rating = head.predict(encoder(completions)).clamp(-RATING_SCALE, RATING_SCALE)  # (B,)
        return (rating / RATING_SCALE).tolist()

    return sentiment
