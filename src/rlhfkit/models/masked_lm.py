"""Masked language models for encoders: load one, give it an MLM head, mask its inputs.

A sentence encoder such as all-MiniLM-L6-v2 ships as a bare ``BertModel``: sentence-transformers
dropped BERT's prediction head. ``load_masked_lm`` loads it as ``BertForMaskedLM``, whose head is
dense -> GELU -> LayerNorm -> decoder; the decoder is tied to the word embeddings (BERT's own
tying: a token's output row is its input embedding), and a head that the checkpoint lacks
starts with its dense layer at the identity, so from the first step the head scores each token
by how close its embedding is to the normalised hidden state rather than through a random
projection. A directory this saves loads back with its head, and as the bare encoder through
``AutoModel`` (what ``rlhfkit reward`` does with ``--model DIR``).

Masking is transformers' ``DataCollatorForLanguageModeling``: 15% of the real, non-special
tokens are chosen; of those 80% become [MASK], 10% a random token, 10% stay as they are (Devlin
et al. 2019, section 3.1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from rlhfkit.errors import RlhfkitError

HEAD_PREFIX = "cls.predictions."
"""Where BERT-family models keep their MLM head's weights."""


def load_masked_lm(path: str, device: str, dtype: str) -> tuple[Any, Any]:
    """(masked LM in eval mode on the device, tokenizer) from a local encoder directory or an
    embedded alias (minilm)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from rlhfkit.models import (
        LOCAL_WEIGHTS,
        pick_device,
        pick_dtype,
        quiet_transformers,
        resolve_model_dir,
    )

    directory = resolve_model_dir(path)
    target = pick_device(device)
    try:
        # a bare encoder's head is missing by design (start_head_at_identity): no load report
        with quiet_transformers(), _errors_only():
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
            model, info = AutoModelForMaskedLM.from_pretrained(
                directory,
                dtype=pick_dtype(dtype, target),
                output_loading_info=True,
                tie_word_embeddings=True,
                **LOCAL_WEIGHTS,
            )
    except (OSError, ValueError) as e:
        raise RlhfkitError(
            f"{directory}: cannot load a masked language model from this directory "
            f"({' '.join(str(e).split())[:300]}); give an encoder (BERT, MiniLM, RoBERTa) "
            "saved with save_pretrained"
        ) from None
    if tokenizer.mask_token_id is None:
        raise RlhfkitError(
            f"{directory}: the tokenizer has no mask token, so it cannot be trained as a "
            "masked LM; give an encoder whose tokenizer has one ([MASK])"
        )
    missing = set(info["missing_keys"])
    if f"{HEAD_PREFIX}transform.dense.weight" in missing:
        start_head_at_identity(model)
    model.config.use_cache = False
    return model.to(target).eval(), tokenizer


@contextmanager
def _errors_only() -> Iterator[None]:
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def start_head_at_identity(model: Any) -> None:
    """A new BERT prediction head's transform starts as the identity (bias 0, LayerNorm 1/0):
    scores are then LayerNorm(GELU(h)) . embedding + 0, the embeddings' own geometry."""
    transform = model.cls.predictions.transform
    with torch.no_grad():
        torch.nn.init.eye_(transform.dense.weight)
        transform.dense.bias.zero_()
        transform.LayerNorm.weight.fill_(1.0)
        transform.LayerNorm.bias.zero_()
        model.cls.predictions.bias.zero_()


def masker(tokenizer: Any, probability: float, seed: int | None = None) -> Any:
    """transformers' MLM collator: ``mask(masker, ids, attention_mask)`` uses its masking.
    ``seed`` None draws from torch's global RNG (restored on resume); a seed gives its own
    stream (the fixed masks of the held-out set)."""
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability, seed=seed)


def mask(collator: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
    """(masked inputs, labels), each (B, T): labels hold the original token where one was
    chosen and -100 elsewhere. Padding and special tokens ([CLS], [SEP]) are never chosen."""
    special = torch.isin(input_ids, torch.tensor(collator.tokenizer.all_special_ids))
    special |= ~attention_mask.bool()
    return collator.torch_mask_tokens(input_ids.clone(), special)


def masked_logits(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, chosen: torch.Tensor
) -> torch.Tensor:
    """(M, V) logits at the ``chosen`` (B, T) positions only: the encoder runs on every token,
    the head (a V-wide matmul) on the masked 15%."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA
    encoder = getattr(base, base.base_model_prefix)
    hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return _head(base)(hidden[chosen])  # (M, V)


def _head(model: Any) -> Any:
    """The MLM head that maps hidden states to vocabulary logits (BERT: cls, RoBERTa: lm_head)."""
    for name in ("cls", "lm_head"):
        if hasattr(model, name):
            return getattr(model, name)
    raise RlhfkitError(
        f"{type(model).__name__}: no MLM head (cls or lm_head) found; use a BERT- or "
        "RoBERTa-style encoder"
    )
