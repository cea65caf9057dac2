"""What every offline trainer's loop shares: data -> batch -> loss -> step -> eval -> checkpoint.

``sft``, ``reward``, ``dpo`` and ``coh`` differ only in their examples, how a batch of them
becomes a loss, and what they evaluate. Each writes its loop over ``Fitting.steps()``, and
``Fitting`` holds the rest: a seeded, length-grouped batch order, the optimiser and schedule,
clipping and the NaN/inf guard, metrics, held-out evaluation, and checkpoints that resume
exactly (weights, optimiser, schedule, RNG states and the position in the data).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rlhfkit import distributed
from rlhfkit.config import (
    FeedbackDataCfg,
    GenCfg,
    NonNegativeInt,
    PositiveInt,
    Problem,
    default,
)
from rlhfkit.errors import ConfigError
from rlhfkit.train import checkpoints, kit

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
    (counted). pretrain: tokens per packed block (nothing cut). The reward model has its own,
    rm.max_length."""
    group_by_length: bool = True
    """Batch examples of similar length together: less padding, the order still random."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """sft, dpo: render prompts through the tokenizer's chat template; auto uses it when the
    model has one and the prompt is not empty."""


@dataclass(frozen=True)
class SampledEvalCfg:
    """Held-out answers: the policy answers the held-out split's prompts before training, every
    train.eval_every steps and at the end, scored by a reward (docs/eval.md)."""

    reward: str = ""
    """Reward scoring the answers: a reward spec (sentiment, vader, length:N, file.py:fn ...);
    empty: none sampled (the held-out loss and pair metrics still run)."""
    judge: str = ""
    """An independent judge scoring them beside the reward: a reward spec; empty: none."""
    size: NonNegativeInt = 32
    """Distinct held-out prompts answered, in the split's order (0 = all)."""
    gen: GenCfg = default(GenCfg)
    """How the answers are sampled."""

    def check(self) -> Iterable[Problem]:
        from rlhfkit.rewards import spec_problems

        for name in ("reward", "judge"):
            spec = getattr(self, name)
            for message in spec_problems(spec) if spec else ():
                yield Problem(name, spec, message)
        if self.size == 1:
            yield Problem("size", 1, "gives no interval; answer 2 prompts or more")


@dataclass(frozen=True)
class OfflineConfig(kit.TrainConfig):
    """What every offline trainer configures; each command adds its own group."""

    data: FeedbackDataCfg = default(FeedbackDataCfg)
    train: TrainCfg = default(TrainCfg)


class BatchOrder:
    """Which examples form each batch, epoch after epoch: seeded, resumable, length-grouped.

    Each epoch shuffles the examples with a seed derived from (seed, epoch). With length grouping,
    windows of ``GROUP_BATCHES`` batches are sorted by length before being cut into batches and
    the batches are shuffled again, so a batch holds similar lengths (little padding) while the
    order of batches stays random (as Hugging Face's ``group_by_length``). The state is just
    (epoch, batch index), so a resumed run continues with the very next batch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        group_by_length: bool,
        min_size: int = 1,
    ):
        self.lengths, self.batch_size = list(lengths), batch_size
        self.seed, self.group_by_length, self.min_size = seed, group_by_length, min_size
        self.epoch, self.position = 0, 0
        self._batches = self._epoch_batches(0)

    @property
    def batches_per_epoch(self) -> int:
        whole, rest = divmod(len(self.lengths), self.batch_size)
        return whole + (rest >= self.min_size)

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
        # data-parallel, a batch too small to give every rank an example is left out
        batches = [batch for batch in batches if len(batch) >= self.min_size]
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


def batch_order(cfg: OfflineConfig, lengths: Sequence[int]) -> BatchOrder:
    """The run's order of global batches: ``train.batch_size`` examples per rank each."""
    size = distributed.world_size()
    return BatchOrder(
        lengths, cfg.train.batch_size * size, cfg.run.seed, cfg.train.group_by_length, size
    )


def total_steps(cfg: OfflineConfig, examples: int) -> int:
    """Optimiser steps the run takes: max_steps, or every epoch of ``examples``."""
    batches = batch_order(cfg, [0] * examples).batches_per_epoch
    return cfg.train.max_steps or cfg.train.epochs * math.ceil(batches / cfg.optim.grad_accum_steps)


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
    """Indices of the examples the run will train on: all of them unless ``max_steps`` ends the
    run within an epoch. Lets a trainer skip one-time work (DPO's reference log-probs) for the
    rest; the batch order is seeded, so this is exactly the set ``Fitting.steps`` visits."""
    order = batch_order(cfg, lengths)
    batches = total_steps(cfg, len(lengths)) * cfg.optim.grad_accum_steps
    if batches >= order.batches_per_epoch:
        return set(range(len(lengths)))
    return {i for _ in range(batches) for i in order.next()}


class Fitting:
    """One offline run around the loop its trainer writes: the batch order, the optimiser and
    schedule, the NaN/inf guard, the run directory, held-out evaluation and checkpoints that
    resume exactly (weights, optimiser, schedule, RNG states, the position in the data).

    Use as a context manager (the run directory is closed on the way out, even on Ctrl-C)::

        with offline.Fitting(cfg, "sft", model, examples, lengths, evaluate) as fitting:
            for step, batches in fitting.steps():
                metrics = fitting.accumulate(batches, loss_fn)
                grad_norm = fitting.learner.step()[0]
                fitting.end_step(step, metrics, grad_norm)

    ``lengths`` (one per example) drive length grouping; ``weigh`` says what one example
    counts for in a step whose loss is a mean over something else than examples (``accumulate``).
    Metrics go to the run directory (``metrics.jsonl``, TensorBoard) with held-out ones under
    ``eval/``. Under torchrun each step's global batch is ``train.batch_size`` x the world size
    examples, split over the ranks.
    """

    def __init__(
        self,
        cfg: OfflineConfig,
        command: str,
        model: Any,
        examples: Sequence[Any],
        lengths: Sequence[int],
        evaluate: Callable[[], dict[str, float]] | None = None,
        weigh: Callable[[Any], float] | None = None,
        answers: tuple[SampledEvalCfg, Any, Sequence[Any]] | None = None,
    ):
        """``answers``: (its config, the tokenizer, the held-out prompts) to have the policy
        answer them at each evaluation (``SampledEvalCfg``); None or no reward: no answers."""
        from rlhfkit.train.runs import Run, seed_everything

        self.cfg, self.model, self.examples, self.evaluate = cfg, model, examples, evaluate
        seed_everything(cfg.run.seed, cfg.run.deterministic)
        self.order = batch_order(cfg, lengths)
        self.total_steps = total_steps(cfg, len(examples))
        self.learner = kit.Learner(
            {"model": (model, cfg.optim)},
            self.total_steps,
            cfg.optim.max_grad_norm,
            cfg.optim.max_nonfinite_steps,
            cfg.dist,
        )
        self.weigh = weigh
        self.weight_in_step = 0.0  # every rank's examples, weighed: the micro-batches' shares
        self.run = Run.start(cfg, command)
        self.answers = _answers(answers, cfg, self.total_steps, self.run.path)
        self.tokenizer = answers[1] if answers else None
        self.eval_before: dict[str, float] = {}
        self.eval_after: dict[str, float] = {}
        self.last: dict[str, float] = {}  # the last step's training metrics
        self.started = time.perf_counter()
        model.train()

    def __enter__(self) -> Fitting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.run.close(failed=exc[0] is not None)

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 1)

    def steps(self) -> Iterator[tuple[int, list[list[Any]]]]:
        """Each step still to run with its ``optim.grad_accum_steps`` micro-batches (data-parallel,
        this rank's share of each global batch).

        Before the first: resume from the last checkpoint (``--run.resume``) or evaluate the
        starting model. After the last: checkpoint and evaluate the trained model.
        """
        from rlhfkit.progress import progress

        cfg, run, steps = self.cfg, self.run, self.total_steps
        start = 0
        if cfg.run.resume and (checkpoint := run.latest_checkpoint()) is not None:
            start = checkpoints.load_checkpoint(checkpoint, self.learner, self._stateful())
            run.truncate_metrics(start)
            self.eval_before = next(
                (_eval_part(row) for row in run.metrics() if row["step"] == 0), {}
            )
            if self.answers is not None:
                self.answers.resume(start)
        else:
            self.eval_before = self._held_out(0)
            if self.eval_before:
                run.log(0, self.eval_before)
        with progress("training", total=steps) as (bar, task):
            bar.update(task, completed=start)
            for step in range(start + 1, steps + 1):
                batches = [self.order.next() for _ in range(cfg.optim.grad_accum_steps)]
                self.weight_in_step = sum(
                    self.weigh(self.examples[i]) if self.weigh else 1.0
                    for batch in batches
                    for i in batch
                )
                yield step, [[self.examples[i] for i in kit.rank_share(b)] for b in batches]
                bar.update(task, advance=1, info=f"loss {self.last['loss']:.4f}")
        if start < steps and (not cfg.run.checkpoint_every or steps % cfg.run.checkpoint_every):
            self._save(steps)
        self.eval_after = self._held_out(steps)
        if self.eval_after:
            run.log(steps, self.eval_after)

    def end_step(self, step: int, metrics: dict[str, float], grad_norm: float) -> None:
        """Log the step (every ``log.every``), evaluate (every ``train.eval_every``), checkpoint
        (every ``run.checkpoint_every``)."""
        cfg, order = self.cfg, self.order
        self.last = {
            **metrics,
            "grad_norm": grad_norm,
            "lr": self.learner.lrs()[0],
            "epoch": order.epoch + order.position / max(order.batches_per_epoch, 1),
            "skipped_steps": self.learner.guard.skipped,
        }
        if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < self.total_steps:
            self.last.update(self._held_out(step))
        if step % cfg.log.every == 0 or step == self.total_steps:
            self.run.log(step, self.last)
        if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0:
            self._save(step)

    def _held_out(self, step: int) -> dict[str, float]:
        """The held-out metrics of the model as it is at ``step``, each ``eval/<name>``."""
        import torch

        if self.evaluate is None and self.answers is None:
            return {}
        self.model.eval()
        with torch.no_grad():
            metrics = {f"eval/{k}": v for k, v in (self.evaluate or dict)().items()}
            if self.answers is not None:
                metrics.update(self.answers.evaluate(self.model, self.tokenizer, step))
        self.model.train()
        return metrics

    def answers_summary(self) -> dict[str, Any]:
        """``{"eval": ...}``: the first and last held-out answers' figures with intervals and
        the change (``TrainingEval.summary``), for the run's summary; {} without answers."""
        return {"eval": self.answers.summary()} if self.answers is not None else {}

    def _stateful(self) -> dict[str, Any]:
        return {**self.learner.stateful(), "order": self.order}

    def _save(self, step: int) -> None:
        checkpoints.save_checkpoint(self.run, step, self.learner, self._stateful())

    def accumulate(self, batches: Sequence[list[Any]], loss_fn: LossFn) -> dict[str, float]:
        """``accumulate`` this rank's micro-batches of the step into the learner's gradients."""
        return accumulate(batches, loss_fn, self.learner.backward, self.weigh, self.weight_in_step)


def _answers(
    answers: tuple[SampledEvalCfg, Any, Sequence[Any]] | None,
    cfg: OfflineConfig,
    total_steps: int,
    run_dir: Any,
) -> Any:
    """The run's held-out answers (``eval.training.TrainingEval``) on the distinct prompts, or
    None: no reward to score them, or no prompts (a held-out split of texts alone)."""
    import json

    from rlhfkit.eval.training import TrainingEval
    from rlhfkit.rewards import load_reward

    if answers is None or not answers[0].reward:
        return None
    settings, _, prompts = answers
    distinct = {json.dumps(p): p for p in prompts if p}  # a chat prompt is a list: no hash
    rows = [{"prompt": prompt} for prompt in distinct.values()]
    rows = rows[: settings.size] if settings.size else rows
    if len(rows) < 2:
        raise ConfigError(
            f"eval.reward: the held-out split has {len(rows)} distinct prompt(s), and answers "
            "need 2 or more for an interval; hold out more (data.eval_path, data.eval_fraction)"
        )
    rewards = {"reward": load_reward(settings.reward)}
    if settings.judge:
        rewards["judge"] = load_reward(settings.judge)
    every = cfg.train.eval_every
    return TrainingEval(rows, settings.gen, rewards, cfg.run.seed, every, total_steps, run_dir)


def accumulate(
    batches: Sequence[list[Any]],
    loss_fn: LossFn,
    backward: Callable[[Any], None],
    weigh: Callable[[Any], float] | None = None,
    total: float = 0.0,
) -> dict[str, float]:
    """Backpropagate each micro-batch's mean loss weighted by its share of the step, through
    ``backward`` (``kit.Learner.backward``: a NaN/inf loss skips the step).

    A micro-batch's share is its examples' over the step's (``weigh``: what one example counts,
    such as sft's completion tokens for a token-level mean; default 1 each), ``total`` being
    the whole step's, every rank's (0: summed here). So 4 micro-batches of 2 give the step of
    one batch of 8, and 2 ranks of 4 the step of one process of 8.

    Returns the share-weighted means of the loss and the metrics, the same on every rank.
    """
    sizes = [sum(weigh(e) for e in batch) if weigh else float(len(batch)) for batch in batches]
    total = total or distributed.sum_floats([sum(sizes)])[0]
    ranks = distributed.world_size()
    sums: dict[str, float] = {}
    for batch, size in zip(batches, sizes, strict=True):
        loss, metrics = loss_fn(batch)
        share = size / total
        # the gradient reduction averages over the ranks: each rank's sum counts in full
        backward(loss * share * ranks)
        for key, value in {"loss": float(loss.detach()), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value * share
    if not distributed.active():
        return sums
    return dict(zip(sums, distributed.sum_floats(list(sums.values())), strict=True))


def held_out_means(examples: Sequence[Any], batch_size: int, loss_fn: LossFn) -> dict[str, float]:
    """The loss and metrics of ``loss_fn`` over held-out ``examples``, ``batch_size`` at a
    time, each batch's weighed by its examples (call under ``torch.no_grad``)."""
    sums: dict[str, float] = {}
    for start in range(0, len(examples), batch_size):
        part = examples[start : start + batch_size]
        loss, metrics = loss_fn(list(part))
        for key, value in {"loss": float(loss), **metrics}.items():
            sums[key] = sums.get(key, 0.0) + value * len(part)
    return {key: value / len(examples) for key, value in sums.items()}


def _eval_part(row: dict[str, Any]) -> dict[str, float]:
    return {key: value for key, value in row.items() if key.startswith("eval/")}


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
