"""The loop every offline trainer shares: data -> batch -> loss -> step -> eval -> checkpoint.

``sft``, ``reward`` and ``dpo`` differ only in their examples, how a batch of them becomes a
loss, and what they evaluate; each command file supplies those and calls ``fit``, which owns the
rest: a seeded, length-grouped batch order, gradient accumulation, clipping and the NaN/inf
guard, the schedule, metrics, held-out evaluation, and checkpoints that resume exactly (weights,
optimiser, schedule, RNG states and the position in the data).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rlhfkit.config import (
    FeedbackDataCfg,
    LogCfg,
    LoraCfg,
    ModelCfg,
    NonNegativeInt,
    OptimCfg,
    PositiveInt,
    Problem,
    RunCfg,
    default,
)

LossFn = Callable[[list[Any]], tuple[Any, dict[str, float]]]
"""``examples -> (loss tensor, float metrics)``: one micro-batch's mean loss."""

GROUP_BATCHES = 16  # length grouping sorts windows of this many batches


@dataclass(frozen=True)
class TrainCfg:
    """How long to train and how examples are batched."""

    epochs: PositiveInt = 1
    """Passes over the training data."""
    max_steps: NonNegativeInt = 0
    """Stop after this many optimiser steps (0 = run every epoch)."""
    batch_size: PositiveInt = 8
    """Examples per forward/backward pass; an optimiser step takes batch_size x
    optim.grad_accum_steps examples."""
    eval_batch_size: PositiveInt = 32
    """Examples per forward pass during evaluation."""
    eval_every: NonNegativeInt = 0
    """Evaluate on held-out data every this many steps (0 = before and after training only)."""
    max_eval: NonNegativeInt = 1000
    """Evaluate on at most this many held-out examples (0 = all)."""
    max_length: PositiveInt = 512
    """sft, dpo: most tokens per sequence; longer ones lose prompt tokens from the left
    (counted). The reward model has its own, rm.max_length."""
    group_by_length: bool = True
    """Batch examples of similar length together: less padding, the order still random."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """sft, dpo: render prompts through the tokenizer's chat template; auto uses it when the
    model has one and the prompt is not empty."""


@dataclass(frozen=True)
class OfflineConfig:
    """What every offline trainer configures; each command adds its own group."""

    model: ModelCfg = default(ModelCfg)
    lora: LoraCfg = default(LoraCfg)
    data: FeedbackDataCfg = default(FeedbackDataCfg)
    train: TrainCfg = default(TrainCfg)
    optim: OptimCfg = default(OptimCfg)
    log: LogCfg = default(LogCfg)
    run: RunCfg = default(RunCfg)


class BatchOrder:
    """Which examples form each batch, epoch after epoch: seeded, resumable, length-grouped.

    Each epoch shuffles the examples with a seed derived from (seed, epoch). With length grouping,
    windows of ``GROUP_BATCHES`` batches are sorted by length before being cut into batches and
    the batches are shuffled again, so a batch holds similar lengths (little padding) while the
    order of batches stays random (as Hugging Face's ``group_by_length``). The state is just
    (epoch, batch index), so a resumed run continues with the very next batch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool):
        self.lengths, self.batch_size = list(lengths), batch_size
        self.seed, self.group_by_length = seed, group_by_length
        self.epoch, self.position = 0, 0
        self._batches = self._epoch_batches(0)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        if self.group_by_length:
            window = self.batch_size * GROUP_BATCHES
            order = [
                i
                for start in range(0, len(order), window)
                for i in sorted(order[start : start + window], key=self.lengths.__getitem__)
            ]
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.group_by_length:
            rng.shuffle(batches)
        return batches

    def next(self) -> list[int]:
        """Indices of the next batch (a new epoch starts when one runs out)."""
        if self.position == len(self._batches):
            self.epoch, self.position = self.epoch + 1, 0
            self._batches = self._epoch_batches(self.epoch)
        self.position += 1
        return self._batches[self.position - 1]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._batches = self._epoch_batches(self.epoch)


@dataclass
class Fitted:
    """What ``fit`` hands back to its command."""

    run: Any  # rlhfkit.train.runs.Run (closed for TensorBoard; summary still to write)
    steps: int
    seconds: float
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    skipped_steps: int
    last_train: dict[str, float]


def total_steps(cfg: OfflineConfig, examples: int) -> int:
    """Optimiser steps the run takes: max_steps, or every epoch of ``examples``."""
    per_epoch = math.ceil(math.ceil(examples / cfg.train.batch_size) / cfg.optim.grad_accum_steps)
    return cfg.train.max_steps or cfg.train.epochs * per_epoch


def no_classes_to_balance(data: FeedbackDataCfg, reads: str) -> Iterator[Problem]:
    """``data.balance`` weighs ratings and binary labels by class; other rows have no classes,
    so asking for it there is a mistake to report, not a setting to ignore."""
    if data.balance != "none":
        yield Problem(
            "data.balance",
            data.balance,
            f"weighs ratings and binary labels by class, but this run reads {reads}, "
            "which have none; leave it at none (per-row weights go in a weight column)",
        )


def visited(cfg: OfflineConfig, lengths: Sequence[int]) -> set[int]:
    """Indices of the examples ``fit`` will train on: all of them unless ``max_steps`` ends the
    run within an epoch. Lets a trainer skip one-time work (DPO's reference log-probs) for the
    rest; the batch order is seeded, so this is exactly the set ``fit`` visits."""
    order = BatchOrder(lengths, cfg.train.batch_size, cfg.run.seed, cfg.train.group_by_length)
    batches = total_steps(cfg, len(lengths)) * cfg.optim.grad_accum_steps
    if batches >= order.batches_per_epoch:
        return set(range(len(lengths)))
    return {i for _ in range(batches) for i in order.next()}


def fit(
    cfg: OfflineConfig,
    command: str,
    model: Any,
    examples: Sequence[Any],
    lengths: Sequence[int],
    loss_fn: LossFn,
    evaluate: Callable[[], dict[str, float]] | None = None,
    state: dict[str, Any] | None = None,
) -> Fitted:
    """Train ``model`` on ``examples`` by ``loss_fn``; evaluate before, every ``eval_every`` and after.

    ``lengths`` (one per example) drive length grouping. ``state`` holds extra parts with
    ``state_dict``/``load_state_dict`` that a checkpoint must carry. Metrics go to the run
    directory (``metrics.jsonl``, TensorBoard) with held-out ones under ``eval/``.
    """
    import torch

    from rlhfkit.progress import progress
    from rlhfkit.train import kit
    from rlhfkit.train.runs import Run, seed_everything

    optim, accum = cfg.optim, cfg.optim.grad_accum_steps
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    order = BatchOrder(lengths, cfg.train.batch_size, cfg.run.seed, cfg.train.group_by_length)
    steps = total_steps(cfg, len(examples))
    optimizer, scheduler = kit.build_optimizer(model, optim, steps)
    guard = kit.NonFiniteGuard(optim.max_nonfinite_steps)
    run = Run.start(cfg, command)
    stateful = {"optimizer": optimizer, "scheduler": scheduler, "order": order, **(state or {})}

    def held_out() -> dict[str, float]:
        if evaluate is None:
            return {}
        model.eval()
        with torch.no_grad():
            metrics = evaluate()
        model.train()
        return {f"eval/{key}": value for key, value in metrics.items()}

    def save(step: int) -> None:
        snapshot = kit.snapshot(step, stateful)
        run.save_checkpoint(step, lambda d: kit.save_training_state(d, model, snapshot))

    start, eval_before, eval_after, last = 0, {}, {}, {}
    started = time.perf_counter()
    model.train()
    try:
        if cfg.run.resume and (checkpoint := run.latest_checkpoint()) is not None:
            start = kit.restore(kit.load_training_state(checkpoint, model), stateful)
            run.truncate_metrics(start)
            eval_before = next((_eval_part(row) for row in run.metrics() if row["step"] == 0), {})
        else:
            eval_before = held_out()
            if eval_before:
                run.log(0, eval_before)
        with progress("training", total=steps) as (bar, task):
            bar.update(task, completed=start)
            for step in range(start + 1, steps + 1):
                # 1. this step's micro-batches; each one's mean loss weighs by its share of examples
                batches = [[examples[i] for i in order.next()] for _ in range(accum)]
                # 2. loss and gradients
                loss_finite, sums = accumulate(batches, loss_fn)
                # 3. clip, guard against NaN/inf, step
                ok, (grad_norm,) = guard.clip_and_check_all(
                    [model], optim.max_grad_norm, loss_finite
                )
                if ok:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                # 4. log, evaluate, checkpoint
                last = {
                    **sums,
                    "grad_norm": grad_norm,
                    "lr": scheduler.get_last_lr()[0],
                    "epoch": order.epoch + order.position / max(order.batches_per_epoch, 1),
                    "skipped_steps": guard.skipped,
                }
                if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < steps:
                    last.update(held_out())
                if step % cfg.log.every == 0 or step == steps:
                    run.log(step, last)
                bar.update(task, advance=1, info=f"loss {sums['loss']:.4f}")
                if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0:
                    save(step)
        if start < steps and (not cfg.run.checkpoint_every or steps % cfg.run.checkpoint_every):
            save(steps)
        eval_after = held_out()
        if eval_after:
            run.log(steps, eval_after)
    finally:
        run.close()
    return Fitted(
        run=run,
        steps=steps,
        seconds=round(time.perf_counter() - started, 1),
        eval_before=eval_before,
        eval_after=eval_after,
        skipped_steps=guard.skipped,
        last_train=last,
    )


def accumulate(
    batches: Sequence[Sequence[Any]], loss_fn: Callable[[Any], tuple[Any, dict[str, float]]]
) -> tuple[bool, dict[str, float]]:
    """Backpropagate each micro-batch's mean loss weighted by its share of the examples.

    Returns whether every loss was finite (a non-finite one is not backpropagated) and the
    example-weighted means of the loss and the metrics over the micro-batches.
    """
    import torch

    count = sum(len(batch) for batch in batches)
    sums: dict[str, float] = {}
    loss_finite = True
    for batch in batches:
        loss, metrics = loss_fn(batch)
        weight = len(batch) / count
        if torch.isfinite(loss):
            (loss * weight).backward()
        else:
            loss_finite = False
        for key, value in {"loss": float(loss.detach()), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value * weight
    return loss_finite, sums


def _eval_part(row: dict[str, Any]) -> dict[str, float]:
    return {key: value for key, value in row.items() if key.startswith("eval/")}


def load_model_with_lora(cfg: OfflineConfig) -> tuple[Any, Any]:
    """(causal LM in train mode, tokenizer), with LoRA adapters when ``lora.rank`` is set."""
    from rlhfkit.models import load_causal_lm
    from rlhfkit.models.lora import attach_lora

    model, tokenizer = load_causal_lm(cfg.model)
    if cfg.lora.rank:
        model = attach_lora(model, cfg.lora)
    model.config.use_cache = False  # training forwards need no KV cache
    model.train()
    return model, tokenizer


def report_truncated(count: int, total: int, max_length: int) -> None:
    """Warn once when examples were cut to ``train.max_length``."""
    if count:
        import warnings

        warnings.warn(
            f"{count} of {total} examples are longer than train.max_length = "
            f"{max_length} tokens and were cut (prompt from the left); raise "
            "--train.max_length to keep them whole",
            stacklevel=2,
        )
