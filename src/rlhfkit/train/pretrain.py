"""Continued pre-training on raw text: causal LM for decoders, masked LM for encoders.

Each step:
  1. a batch of packed blocks (``rlhfkit.data.raw_text``): documents end to end with a boundary
     token between them, cut into train.max_length tokens; each document piece of a block runs
     as its own row, so attention never crosses documents (on CPU a decoder's rows run packed,
     no padding computed: ``rlhfkit.packing``)
  2. causal: log-probs of every token after the first of its piece; masked: 15% of the tokens
     chosen, 80% [MASK] / 10% random / 10% kept (``rlhfkit.models.masked_lm``), logits there
  3. the mean negative log-likelihood over the predicted tokens
  4. the shared offline step: accumulate, clip, update; evaluate held out; checkpoint

Held out: perplexity (causal) or masked-token accuracy and loss on the same fixed masks before
and after (masked), on documents never trained on (data.eval_path, a built-in corpus's
validation split, or data.eval_fraction of the documents chosen by a hash of their text).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from rlhfkit.config import Fraction, Problem, default
from rlhfkit.train import kit
from rlhfkit.train.offline import OfflineConfig


@dataclass(frozen=True)
class TextDataCfg:
    """Raw text: a .txt/.jsonl/.json/.parquet file, a directory of them, or a built-in corpus."""

    shorthand: ClassVar[str] = "path"  # `--data X` sets `--data.path X`

    path: str = "vader:movies"
    """A .txt, .jsonl/.json or .parquet file, a directory holding such files (all of them,
    recursively), or a built-in corpus: vader:movies|tweets|amazon|nyt (its train split)."""
    eval_path: str = ""
    """Held-out text in the same forms; empty takes a built-in corpus's validation split, or
    else eval_fraction of path's documents, chosen by a hash of each one's text."""
    eval_fraction: Fraction = 0.05
    """Share of path's documents held out when eval_path is empty."""
    text_field: str = "text"
    """Column holding each document in .jsonl/.json/.parquet files."""
    txt_documents: Literal["paragraph", "line", "file"] = "paragraph"
    """What one document is in a .txt file: a paragraph (lines up to a blank line), a line,
    or the whole file."""

    def check(self) -> Iterable[Problem]:
        for name in ("path", "eval_path"):
            value = getattr(self, name)
            if (value or name == "path") and (message := _source_problem(value)):
                yield Problem(name, value, message)


def _source_problem(value: str) -> str | None:
    from pathlib import Path

    from rlhfkit.config import CORPORA

    if value.startswith("vader:"):
        corpus = value.removeprefix("vader:")
        if corpus not in CORPORA:
            return f"unknown corpus; use one of {', '.join('vader:' + c for c in CORPORA)}"
        return None
    if not value:
        return "is empty; give a text file, a directory of them or vader:movies"
    if not Path(value).expanduser().exists():
        return "no such file or directory; check the path"
    return None


@dataclass(frozen=True)
class LmCfg:
    """The language-modelling objective. Blocks are train.max_length tokens long."""

    objective: Literal["auto", "causal", "masked"] = "auto"
    """causal (next token, decoders), masked (MLM, encoders), or auto: from the model's kind."""
    mlm_probability: Fraction = 0.15
    """Masked: share of tokens chosen for prediction (of them 80% [MASK], 10% random, 10%
    kept)."""

    def check(self) -> Iterable[Problem]:
        if self.mlm_probability == 0:
            yield Problem("mlm_probability", 0, "chooses no token to predict; use 0.15")


@dataclass(frozen=True)
class Config(OfflineConfig):
    """Continued pre-training on raw text (causal LM for decoders, masked LM for encoders)."""

    data: TextDataCfg = default(TextDataCfg)  # type: ignore[assignment]
    lm: LmCfg = default(LmCfg)

    def check(self) -> Iterable[Problem]:
        if self.train.chat_template != "auto":
            yield Problem(
                "train.chat_template",
                self.train.chat_template,
                "does nothing for pretrain, which reads raw text without a template; leave it out",
            )


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    result = train(cfg)
    print_summary(result.run, result.summary)


def train(cfg: Config) -> kit.TrainResult:
    import torch
    import torch.nn.functional as F

    from rlhfkit.data import raw_text
    from rlhfkit.train import offline
    from rlhfkit.train.runs import seed_everything

    # before any random init: LoRA adapters
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    model, tokenizer, masked = _load(cfg)
    device = next(model.parameters()).device
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )

    # 1. documents -> tokens -> blocks, train and held out apart
    blocks, counts = {}, {}
    for split in ("train", "eval"):
        documents = raw_text.load_documents(
            cfg.data.path,
            split,
            eval_path=cfg.data.eval_path,
            eval_fraction=cfg.data.eval_fraction,
            text_field=cfg.data.text_field,
            txt_documents=cfg.data.txt_documents,
        )
        tokens = raw_text.tokenize_documents(tokenizer, documents)
        blocks[split] = raw_text.pack(tokens, cfg.train.max_length)
        counts[split] = raw_text.summary(tokens, blocks[split])
    _report_counts(counts, cfg.train.max_length)
    if not blocks["train"]:
        from rlhfkit.errors import DataError

        raise DataError(f"data.path = {cfg.data.path!r}: no training documents left")
    eval_blocks = blocks["eval"][: cfg.train.max_eval] if cfg.train.max_eval else blocks["eval"]

    def causal_nll(batch: list[raw_text.Block]) -> tuple[torch.Tensor, dict[str, float]]:
        from rlhfkit.models import token_logprobs

        ids, attention = (t.to(device) for t in raw_text.piece_rows(batch, pad_id))  # (R, W)
        logprobs = token_logprobs(model, ids, attention, response_start=1)  # (R, W-1)
        predicted = (attention[:, 1:] * attention[:, :-1]).sum()
        return -logprobs.sum() / predicted.clamp(min=1), {"tokens": float(predicted)}

    def masked_nll(
        ids: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        from rlhfkit.models.masked_lm import masked_logits

        ids, attention, labels = ids.to(device), attention.to(device), labels.to(device)
        chosen = labels != -100  # (R, W) the tokens to predict
        logits = masked_logits(model, ids, attention, chosen).float()  # (M, V)
        targets = labels[chosen]  # (M,)
        # a batch with nothing chosen (a few short pieces) still backpropagates, a zero
        loss = F.cross_entropy(logits, targets) if len(targets) else logits.sum() * 0.0
        correct = float((logits.argmax(-1) == targets).sum())
        return loss, {"tokens": float(len(targets)), "correct": correct}

    if masked:
        from rlhfkit.models.masked_lm import mask, masker

        # held out: masks drawn once from their own seed, the same before and after training
        eval_collator = masker(tokenizer, cfg.lm.mlm_probability, seed=cfg.run.seed)
        eval_batches = [
            (ids, attention, mask(eval_collator, ids, attention))
            for ids, attention in _eval_rows(eval_blocks, cfg.train.eval_batch_size, pad_id)
        ]
        # training: drawn from torch's RNG, which a checkpoint saves, so a resume masks alike
        train_collator = masker(tokenizer, cfg.lm.mlm_probability)

        def step_loss(batch: list[raw_text.Block]) -> tuple[torch.Tensor, dict[str, float]]:
            ids, attention = raw_text.piece_rows(batch, pad_id)
            inputs, labels = mask(train_collator, ids, attention)
            return masked_nll(inputs, attention, labels)

        weigh: Any = _maskable_tokens(tokenizer)
    else:
        step_loss, weigh = causal_nll, raw_text.predicted_tokens

    def evaluate() -> dict[str, float]:
        if not eval_blocks:
            return {}
        if masked:
            results = [masked_nll(inputs, att, labels) for _, att, (inputs, labels) in eval_batches]
        else:
            size = cfg.train.eval_batch_size
            results = [
                causal_nll(eval_blocks[i : i + size]) for i in range(0, len(eval_blocks), size)
            ]
        tokens = sum(metrics["tokens"] for _, metrics in results)
        mean = sum(float(loss) * metrics["tokens"] for loss, metrics in results) / max(tokens, 1)
        if masked:
            correct = sum(metrics["correct"] for _, metrics in results)
            return {"mlm_loss": mean, "masked_accuracy": correct / max(tokens, 1), "tokens": tokens}
        return {"nll": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": tokens}

    train_blocks = blocks["train"]
    lengths = [len(block.ids) for block in train_blocks]
    with offline.Fitting(cfg, "pretrain", model, train_blocks, lengths, evaluate, weigh) as fitting:
        for step, batches in fitting.steps():
            metrics = fitting.accumulate(batches, step_loss)
            grad_norm = fitting.learner.step()[0]  # clip, NaN/inf guard, optimiser step
            fitting.end_step(step, metrics, grad_norm)  # log, evaluate, checkpoint
    run = fitting.run
    kit.export(run.path / "model", model, tokenizer)
    summary = {
        "steps": fitting.total_steps,
        "seconds": fitting.seconds,
        "objective": "masked" if masked else "causal",
        "train_loss_last": fitting.last.get("loss"),
        **_before_after(fitting.eval_before, fitting.eval_after),
        "skipped_steps": fitting.learner.guard.skipped,
        **{f"{split}_{key}": value for split, c in counts.items() for key, value in c.items()},
        "model": str(run.path / "model"),
    }
    run.finish(summary)
    return kit.TrainResult(run, model, tokenizer, summary)


def _load(cfg: Config) -> tuple[Any, Any, bool]:
    """(model in train mode, tokenizer, masked): a causal LM, or an encoder as a masked LM."""
    from rlhfkit.errors import ConfigError
    from rlhfkit.models import resolve_model_dir
    from rlhfkit.models.reward_model import default_pooling

    masked = cfg.lm.objective == "masked"
    if cfg.lm.objective == "auto":
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            resolve_model_dir(cfg.model.path), local_files_only=True
        )
        masked = default_pooling(config) != "last"  # not a decoder: an encoder
    if masked:
        from rlhfkit.models.masked_lm import load_masked_lm

        model, tokenizer = load_masked_lm(cfg.model.path, cfg.model.device, cfg.model.dtype)
        model = kit.adapt_trunk(model, cfg.model, cfg.lora)
        model.train()
    else:
        model, tokenizer, _ = kit.load_policy_and_reference(cfg.model, cfg.lora, False)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and cfg.train.max_length > limit:
        raise ConfigError(
            f"train.max_length = {cfg.train.max_length}: longer than the model's "
            f"{limit} positions; use a block of {limit} tokens or fewer"
        )
    return model, tokenizer, masked


def _eval_rows(blocks: list[Any], size: int, pad_id: int) -> list[tuple[Any, Any]]:
    from rlhfkit.data.raw_text import piece_rows

    return [piece_rows(blocks[i : i + size], pad_id) for i in range(0, len(blocks), size)]


def _maskable_tokens(tokenizer: Any) -> Any:
    """What a block weighs in a step's masked loss: its tokens that may be chosen, whose
    expected share of the step's chosen tokens is its share of these."""
    special = set(tokenizer.all_special_ids)

    def count(block: Any) -> float:
        return float(sum(token not in special for token in block.ids))

    return count


def _report_counts(counts: dict[str, dict[str, int]], block_size: int) -> None:
    """One line per split: what was read and how it packed (nothing is cut)."""
    from rlhfkit import distributed
    from rlhfkit.progress import console

    if not distributed.is_main():
        return
    for split, c in counts.items():
        console.print(
            f"{split}: {c['documents']:,} documents, {c['tokens']:,} tokens -> {c['blocks']:,} "
            f"blocks of {block_size} ({c['continued_pieces']:,} pieces continue a document "
            "from the block before)",
            highlight=False,
        )


def _before_after(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """``eval_<metric>_before`` / ``_after`` for each held-out metric (``eval/<metric>``)."""
    return {
        f"eval_{key.removeprefix('eval/')}_{when}": value
        for when, metrics in (("before", before), ("after", after))
        for key, value in metrics.items()
    }
