"""What every training loop shares: configs and result, optimiser, guard, run, data parallelism.

A loop's ``train(cfg)`` reads top to bottom and keeps only its algorithm; the rest is here:

- ``TrainConfig`` / ``OnlineConfig`` and ``TrainResult``: the shared config groups, the one
  result type.
- ``Learner``: the models a loop trains, each with its AdamW and schedule, behind one
  ``NonFiniteGuard``. ``backward`` and ``step`` are the only places a loop touches gradients.
- ``Session``: a run's life around the loop: start or resume (RNG, data position, optimiser
  state), progress, metric logging, atomic checkpoints, the exported model and the summary.
- ``Stats``, ``minibatches``, ``accumulation_weight``, ``in_chunks``: the update loop's pieces.

What a checkpoint holds, and reading it back, is ``train/checkpoints.py``.

Data parallelism (torchrun, ``train/sharding.py``) lives here and not in the loops: ``Learner``
shards the models it trains before building their optimisers (``fully_shard`` works in place:
the loops keep calling their models), ``Session`` writes sharded checkpoints
(``checkpoints.py``), and the helpers under "data parallelism" give each rank its share
of prompts, its sampling seed and the global batch's statistics. In one process they are the
identity.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rlhfkit import distributed
from rlhfkit.config import (
    DistCfg,
    GenCfg,
    LogCfg,
    LoraCfg,
    ModelCfg,
    NonNegativeInt,
    OptimCfg,
    PositiveInt,
    Problem,
    PromptDataCfg,
    RunCfg,
    default,
)
from rlhfkit.errors import RlhfkitError
from rlhfkit.eval.monitors import MonitorCfg
from rlhfkit.models.lora import attach_lora
from rlhfkit.train import checkpoints, monitoring
from rlhfkit.train.runs import TOKENS_FILE, write_text_atomic


@dataclass(frozen=True)
class TrainConfig:
    """What every trainer configures; each command's Config adds its data and algorithm groups."""

    model: ModelCfg = default(ModelCfg)
    lora: LoraCfg = default(LoraCfg)
    optim: OptimCfg = default(OptimCfg)
    log: LogCfg = default(LogCfg)
    run: RunCfg = default(RunCfg)
    dist: DistCfg = default(DistCfg)


@dataclass
class TrainResult:
    """What every ``train(cfg)`` returns: the run directory, the trained model, its summary."""

    run: Any  # rlhfkit.train.runs.Run, closed; summary.json written
    model: Any  # the trained policy, reward model or value model (LoRA still attached)
    tokenizer: Any
    summary: dict[str, Any]
    reference: Any | None = None  # online RL: the frozen reference copy (None with LoRA)


@dataclass(frozen=True)
class EvalCfg:
    """Held-out evaluation during training: the policy samples the held-out prompts (data.eval_prompts,
    data.eval_size) before the first step, every `every` steps and at the end (docs/eval.md)."""

    every: NonNegativeInt = 20
    """Evaluate every this many steps (rounds, for the hindsight methods); 0: before and after
    training only. Its cost: bench/README.md."""
    judge: str = ""
    """An independent judge scoring the held-out samples beside the training reward, so a
    reward the policy games shows as a gap: a reward spec (vader, judge:MODEL,
    judge:MODEL@http://HOST/v1, file.py:fn); empty: none."""
    split: Literal["test", "validation"] = "test"
    """The split of a built-in prompt set evaluated on: test for the report; validation while
    choosing settings (rlhfkit tune), which must not see the test prompts."""

    def check(self) -> Iterable[Problem]:
        if self.judge:
            from rlhfkit.rewards import spec_problems

            for message in spec_problems(self.judge):
                yield Problem("judge", self.judge, message)


@dataclass(frozen=True)
class OnlineConfig(TrainConfig):
    """What every online RL command configures; each loop's Config adds its ``algo`` group."""

    reward: str = "sentiment"
    """Reward: a registered name (sentiment, vader, reasoning_gym:TASK, length, format, ...) or
    your own file.py:fn / package.module:fn."""
    steps: PositiveInt = 50
    """RL steps (each samples a batch and updates on it)."""
    data: PromptDataCfg = default(PromptDataCfg)
    gen: GenCfg = default(GenCfg)
    eval: EvalCfg = default(EvalCfg)
    monitor: MonitorCfg = default(MonitorCfg)


def accumulation_weight(micro_mask: Any, minibatch_mask: Any, aggregation: str) -> float:
    """Scale of one micro-batch's mean loss so the accumulated sum is the minibatch's mean.

    Token-level: each micro-batch's mean counts by its share of the minibatch's tokens; the
    sequence modes count by share of completions. This is what makes 8 x 1 equal 4 x 2.
    Data-parallel, the minibatch is every rank's (the gradient reduction averages over the
    ranks, hence the world size): 2 ranks x 4 equal 1 x 8.
    """
    if aggregation == "token":
        if not distributed.active():
            return float(micro_mask.sum() / minibatch_mask.sum().clamp(min=1))
        tokens = distributed.sum_tensor(minibatch_mask.sum()).clamp(min=1)
        return float(micro_mask.sum() * distributed.world_size() / tokens)
    return len(micro_mask) / len(minibatch_mask)


# --- data parallelism: each rank's share, statistics of the whole batch ---------------------------


def prompts_per_rank_problem(prompts_per_step: int) -> Problem | None:
    """A step's prompts must split evenly over the ranks."""
    size = distributed.world_size()
    if prompts_per_step % size:
        return Problem(
            "algo.prompts_per_step",
            prompts_per_step,
            f"does not divide over {size} ranks (torchrun's world size); make it a multiple "
            f"of {size}",
        )
    return None


def rank_share(items: list[Any]) -> list[Any]:
    """This rank's contiguous share of a step's prompts (all of them in one process)."""
    return items[distributed.share(len(items))]


def rollout_seed(seed: int, step: int, extra_round: int = 0) -> int:
    """The sampling seed of ``step``: its own random stream per rank (rank 0 of one process:
    the seed single-process runs always used); ``extra_round`` r > 0 (dynamic sampling's
    refills) adds r * 2^32, beyond any other step's or rank's seed."""
    base = (seed * 1_000_003 + step) * distributed.world_size() + distributed.rank()
    return base + extra_round * 2**32


def batch_mean(values: torch.Tensor) -> float:
    """The mean over every rank's ``values`` (ranks hold equally many)."""
    return distributed.sum_floats([float(values.float().mean())])[0] / distributed.world_size()


def batch_sum(values: torch.Tensor) -> float:
    """The sum over every rank's ``values``."""
    return distributed.sum_floats([float(values.sum())])[0]


# --- policy, reference ---------------------------------------------------------------------------


def load_policy_and_reference(
    model_cfg: Any, lora: LoraCfg, need_reference: bool
) -> tuple[Any, Any, Any | None]:
    """(policy in train mode, tokenizer, frozen reference copy or None)."""
    from rlhfkit.models import freeze, load_causal_lm

    policy, tokenizer = load_causal_lm(model_cfg)
    frozen = None
    if lora.rank:
        policy = attach_lora(policy, lora)
    elif need_reference:
        frozen = freeze(load_causal_lm(model_cfg)[0])
    policy.train()
    # Generation uses the KV cache; training forwards need no cache.
    policy.config.use_cache = False
    return policy, tokenizer, frozen


def adapt_trunk(trunk: Any, model_cfg: Any, lora: LoraCfg) -> Any:
    """A loaded trunk that is not a policy (a reward model's or classifier's backbone, a masked
    LM) made trainable as the config asks: activation checkpointing, then LoRA adapters (with
    no task head of peft's: the head on top is rlhfkit's own)."""
    from rlhfkit.models import checkpoint_activations

    if model_cfg.gradient_checkpointing:
        checkpoint_activations(trunk)
    return attach_lora(trunk, lora, task_type=None) if lora.rank else trunk


# --- optimiser -----------------------------------------------------------------------------------


def build_optimizer(
    model: Any, optim: OptimCfg, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over trainable parameters and a warm-up + decay schedule over ``total_steps``."""
    params = [p for p in model.parameters() if p.requires_grad]
    # The fused kernel is ~4x faster than the per-tensor loop on CPU as well as on CUDA
    # (bench/README.md); it needs every parameter in floating point on one device type.
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    optimizer = torch.optim.AdamW(
        params,
        lr=optim.lr,
        betas=(optim.adam_beta1, optim.adam_beta2),
        eps=optim.adam_eps,
        weight_decay=optim.weight_decay,
        fused=fused or None,
    )

    def factor(step: int) -> float:
        if step < optim.warmup_steps:
            return (step + 1) / optim.warmup_steps
        progress = (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps)
        progress = min(progress, 1.0)
        if optim.schedule == "linear":
            return 1.0 - progress
        if optim.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class NonFiniteGuard:
    """Skips an optimiser step whose loss or gradient is NaN/inf; aborts after too many in a row."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.skipped = limit, 0, 0

    def clip_and_check(
        self, models: list[Any], max_grad_norm: float, loss_finite: bool = True
    ) -> tuple[bool, list[float]]:
        """Clip each of the models updated together (PPO's policy and critic) to its own norm;
        a non-finite loss or any non-finite gradient skips the step for all and drops their
        gradients.

        ``loss_finite=False`` reports a micro-batch whose loss was NaN/inf and so never had a
        backward pass. Returns (step is safe, each model's gradient norm before clipping).
        """
        params = [[p for p in model.parameters() if p.grad is not None] for model in models]
        from rlhfkit.train.sharding import full_norm

        norms = [  # sharded parameters give a DTensor norm, the same on every rank
            full_norm(
                torch.nn.utils.clip_grad_norm_(
                    group, max_grad_norm if max_grad_norm > 0 else float("inf")
                )
            )
            for group in params
        ]
        if loss_finite and all(torch.isfinite(norm) for norm in norms):
            self.in_a_row = 0
            return True, [float(norm) for norm in norms]
        for p in (p for group in params for p in group):
            p.grad = None
        self.in_a_row += 1
        self.skipped += 1
        shown = ", ".join(f"{float(norm)}" for norm in norms)
        cause = "gradient" if loss_finite else "loss"
        warnings.warn(
            f"non-finite {cause} (norm {shown}): step skipped ({self.in_a_row} in a row)",
            stacklevel=2,
        )
        if self.in_a_row >= self.limit:
            raise RlhfkitError(
                f"{self.in_a_row} optimiser steps in a row had a NaN/inf loss or gradient "
                f"(optim.max_nonfinite_steps = {self.limit}); lower optim.lr, keep "
                "optim.max_grad_norm on, or check the reward for extreme values"
            )
        return False, [float(norm) for norm in norms]


class Learner:
    """The models a loop trains, each with its own AdamW and schedule, stepped together.

    ``models`` maps a name to ``(model, optim)``; the first is the policy. A non-finite loss or
    gradient skips the step for all of them (``NonFiniteGuard``). The optimiser states are saved
    as ``optimizer`` / ``scheduler`` for the first model and ``{name}_optimizer`` /
    ``{name}_scheduler`` for the others.
    """

    def __init__(
        self,
        models: dict[str, tuple[Any, OptimCfg]],
        total_steps: int,
        max_grad_norm: float,
        max_nonfinite_steps: int,
        dist: DistCfg | None = None,
    ):
        from rlhfkit.train import sharding

        self.models = [model for model, _ in models.values()]
        self.names = list(models)
        # under torchrun every trained model becomes data-parallel before its optimiser is built
        # over the (then sharded) parameters; the loops go on calling the same modules
        self.distributed = distributed.active()
        if self.distributed:
            for model in self.models:
                sharding.shard(model, dist or DistCfg())
        built = [build_optimizer(model, optim, total_steps) for model, optim in models.values()]
        self.optimizers = [optimizer for optimizer, _ in built]
        self.schedulers = [scheduler for _, scheduler in built]
        self.guard = NonFiniteGuard(max_nonfinite_steps)
        self.max_grad_norm = max_grad_norm
        self.loss_finite = True  # every backward since the last step had a finite loss

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate ``loss``'s gradients; a NaN/inf loss gets no backward and skips the step.

        Data-parallel, every rank runs every backward (gradients are reduced inside it, so a
        rank that skipped one would leave the others waiting); a NaN/inf loss on any rank
        makes the gradient norm NaN/inf on all of them, and all skip the step together.
        """
        if not torch.isfinite(loss):
            self.loss_finite = False
            if not self.distributed:
                return
        loss.backward()

    def step(self) -> list[float]:
        """Clip, check and apply the accumulated gradients; each model's norm before clipping."""
        loss_finite = self.loss_finite
        if self.distributed:  # the same decision on every rank
            loss_finite = distributed.sum_floats([float(not loss_finite)])[0] == 0
        ok, norms = self.guard.clip_and_check(self.models, self.max_grad_norm, loss_finite)
        if ok:
            for optimizer in self.optimizers:
                optimizer.step()
        for optimizer, scheduler in zip(self.optimizers, self.schedulers, strict=True):
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        self.loss_finite = True
        return norms

    def lrs(self) -> list[float]:
        """Each model's learning rate for the next step."""
        return [scheduler.get_last_lr()[0] for scheduler in self.schedulers]

    def stateful(self) -> dict[str, Any]:
        """The optimisers and schedules under their checkpoint names."""
        prefixes = ["", *(f"{name}_" for name in self.names[1:])]
        return {
            f"{prefix}{kind}": part
            for prefix, optimizer, scheduler in zip(
                prefixes, self.optimizers, self.schedulers, strict=True
            )
            for kind, part in (("optimizer", optimizer), ("scheduler", scheduler))
        }


class Stats:
    """Sums of per-update diagnostics, reported as means per optimiser step."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.updates = 0

    def add(self, weight: float = 1.0, **values: Any) -> None:
        """Add each value (a float or a one-element tensor) times ``weight``."""
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value) * weight

    def step(self, **values: Any) -> None:
        """Add one optimiser step's values and count the step."""
        self.add(**values)
        self.updates += 1

    def means(self) -> dict[str, float]:
        return {key: value / max(self.updates, 1) for key, value in self.sums.items()}


def minibatches(size: int, minibatch: int, epochs: int) -> Iterator[torch.Tensor]:
    """Row indices of each optimiser step: ``epochs`` shuffled passes over ``size`` rows."""
    for _ in range(epochs):
        order = torch.randperm(size)
        for start in range(0, size, minibatch):
            yield order[start : start + minibatch]


def in_chunks(
    forward: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, size: int
) -> Any:
    """``forward(ids, mask)`` over the batch, ``size`` rows at a time, concatenated on rows (each
    tensor on its own when ``forward`` returns a tuple of them)."""
    parts = [
        forward(input_ids[i : i + size], attention_mask[i : i + size])
        for i in range(0, len(input_ids), size)
    ]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))
    return torch.cat(parts)


def kl_controller(algo: Any) -> Any:
    """Adaptive KL toward ``algo.kl_target`` when it is set, else a fixed ``algo.kl_coef``."""
    from rlhfkit.kl_control import AdaptiveKL, FixedKL

    if algo.kl_target > 0:
        return AdaptiveKL(algo.kl_coef, algo.kl_target, algo.kl_horizon)
    return FixedKL(algo.kl_coef)


# --- the run -------------------------------------------------------------------------------------


class Session:
    """A run's life around its loop, used as ``with Session(...) as session:``.

    It starts the run directory (or resumes it: the ``learner``'s weights and optimisers, the
    ``stateful`` parts, RNG, ``parts`` with their own ``save(dir)`` / ``load(dir)`` such as
    PPO's critic), shows progress, logs each step's metrics every ``log.every`` steps,
    checkpoints every ``run.checkpoint_every`` steps and at the end, and exports the policy (the
    learner's first model) when the loop completes.
    """

    def __init__(
        self,
        cfg: Any,
        command: str,
        learner: Learner,
        tokenizer: Any,
        stateful: dict[str, Any],
        parts: tuple[Any, ...] = (),
        reward: Any = None,
        reference: Any = None,
        backend: Any = None,
    ):
        from rlhfkit.train.runs import Run

        self.cfg, self.learner, self.tokenizer = cfg, learner, tokenizer
        self.model = learner.models[0]
        self.stateful, self.parts = stateful, parts
        self.run = Run.start(cfg, command)
        # held out: scored by the training reward (and eval.judge), KL to ``reference``
        held_out = (
            held_out_eval(cfg, reward, self.run.path, cfg.steps, reference, backend)
            if reward is not None
            else None
        )
        self.oversight = monitoring.Oversight(
            cfg, self.run.path, held_out, reward, reference is not None, cfg.steps
        )
        self.stateful = {**stateful, **self.oversight.stateful()}
        self.start_step = 0
        if cfg.run.resume and (checkpoint := self.run.latest_checkpoint()) is not None:
            self.start_step = checkpoints.load_checkpoint(checkpoint, learner, self.stateful, parts)
            self.run.truncate_metrics(self.start_step)
            self.oversight.resume(self.start_step)

    def __enter__(self) -> Session:
        from rlhfkit.progress import progress

        if self.start_step == 0 and (start := self.oversight.start(self.model, self.tokenizer)):
            self.run.log(0, start)  # the starting model, held out
        self.started = time.perf_counter()
        self._progress = progress("training", total=self.cfg.steps)
        self.bar, self.task = self._progress.__enter__()
        self.bar.update(self.task, completed=self.start_step)
        return self

    def __exit__(self, *error: Any) -> None:
        try:
            self._progress.__exit__(*error)
            if error[0] is None:  # the loop ran to its end (or an alert's): checkpoint, model
                every = self.cfg.run.checkpoint_every
                last = self.oversight.last
                if last and (not every or last % every):  # 0: the start
                    self.save(last)
                export(self.run.path / "model", self.model, self.tokenizer)
        finally:
            self.run.close(failed=error[0] is not None)

    def steps(self) -> Iterator[int]:
        """The steps left to run: all of them, or those after the resumed checkpoint; none after
        a monitor's alert with ``monitor.stop_on_alert``."""
        return self.oversight.left(self.start_step)

    def record_tokens(self, step: int, samples: Callable[[], list[dict[str, Any]]]) -> None:
        """Keep a few completions token by token (``rollout.token_view``) at the first step and
        at each held-out evaluation's, in ``tokens.json`` for the report: what each token's
        advantage and KL were as the policy learned from it. ``samples`` runs only then."""
        held_out = self.oversight.held_out
        due = held_out.due(step) if held_out is not None else step == self.cfg.steps
        if not (due or step == 1) or not distributed.is_main():
            return
        path = self.run.path / TOKENS_FILE
        kept = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        kept = [entry for entry in kept if entry["step"] < step]  # a resumed run redoes later steps
        write_text_atomic(path, json.dumps([*kept, {"step": step, "samples": samples()}]))

    def end_step(self, step: int, metrics: dict[str, Any], info: str) -> None:
        """Evaluate held out (every ``eval.every`` steps and the last), check the monitors, log
        ``metrics`` (on the log cadence, the last step, with an evaluation or an alert), move the
        bar, checkpoint."""
        metrics, evaluated = self.oversight.after(step, metrics, self.model, self.tokenizer)
        stopping = self.oversight.stopping
        if step % self.cfg.log.every == 0 or step == self.cfg.steps or evaluated or stopping:
            self.run.log(step, metrics)
        self.bar.update(self.task, advance=1, info=info)
        if self.cfg.run.checkpoint_every and step % self.cfg.run.checkpoint_every == 0:
            self.save(step)

    def save(self, step: int) -> None:
        """Checkpoint the weights, the ``stateful`` parts, RNG and ``parts`` at ``step``."""
        checkpoints.save_checkpoint(self.run, step, self.learner, self.stateful, self.parts)

    def finish(self, summary: dict[str, Any], reference: Any | None = None) -> TrainResult:
        """Write ``summary.json`` (steps, seconds, then ``summary``, then the model's path)."""
        summary = {
            "steps": self.oversight.last,
            "seconds": round(time.perf_counter() - self.started, 1),
            **summary,
            **self.oversight.summary("step"),
            "model": str(self.run.path / "model"),
        }
        self.run.finish(summary, report=write_report)
        return TrainResult(
            run=self.run,
            model=self.model,
            tokenizer=self.tokenizer,
            summary=summary,
            reference=reference,
        )


def held_out_eval(
    cfg: Any,
    reward: Any,
    run_dir: Path,
    total_steps: int,
    reference: Any = None,
    backend: Any = None,
    conditioning: Any = None,
) -> Any:
    """The run's held-out evaluation (``eval.training.TrainingEval``) on ``cfg.data``'s held-out
    prompts, scored by ``reward`` and ``cfg.eval.judge``; None when there are none to evaluate
    (data.eval_size 0, or a prompt file without data.eval_prompts)."""
    from rlhfkit.data.prompts import prompt_rows
    from rlhfkit.eval.training import TrainingEval
    from rlhfkit.rewards import load_reward

    rows = prompt_rows(cfg.data, cfg.eval.split) if cfg.data.eval_size else []
    if not rows:
        return None
    rewards = {"reward": reward}
    if cfg.eval.judge:
        rewards["judge"] = load_reward(cfg.eval.judge)
    return TrainingEval(
        rows,
        cfg.gen,
        rewards,
        cfg.run.seed,
        cfg.eval.every,
        total_steps,
        run_dir,
        reference,
        conditioning,
        backend,
    )


def write_report(run_dir: Path) -> None:
    """report.html in the run directory (rank 0), from what the run wrote (``eval.run_report``)."""
    if distributed.is_main():
        from rlhfkit.eval.run_report import write_run_report

        write_run_report(run_dir)


def export(directory: Path, model: Any, tokenizer: Any) -> Path:
    """The trained policy as a plain Hugging Face directory (LoRA merged). Data-parallel, its
    weights are gathered whole on rank 0, which writes it; every rank must call this."""
    from rlhfkit.models.export import export_model
    from rlhfkit.train import sharding

    plain = sharding.plain_copy(model)
    if plain is not None:
        export_model(directory, plain, tokenizer)
    distributed.barrier()  # the directory exists when any rank returns
    return directory


def online_summary(history: list[dict[str, Any]], skipped_steps: int, *last: str) -> dict[str, Any]:
    """An online RL run's summary: first and last reward, last KL and each of ``last``."""
    history = [row for row in history if "reward" in row]  # not step 0's held-out row
    final = history[-1] if history else {}
    return {
        "reward_first": history[0]["reward"] if history else None,
        "reward_last": final.get("reward"),
        "kl_last": final.get("kl"),
        **{f"{key}_last": final.get(key) for key in last},
        "skipped_steps": skipped_steps,
    }
