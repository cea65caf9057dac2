"""What the round-based hindsight methods (hir, relabel, hindsight-foresight) share.

Each of them repeats one round: sample from the current policy -> score -> relabel -> train
offline on the relabelled samples for a few optimiser steps. Their loop files keep those steps
in view; this module holds the plumbing around them: the config groups, loading the policy,
sampling and scoring, encoding sequences, the optimiser steps, and checkpoints.

Rounds are the unit of resumption: a checkpoint (weights, optimisers, schedules, RNG states, the
prompt stream's position) is written after every round, so ``run.checkpoint_every`` does not
apply, and ``--resume`` continues with the next round exactly as an uninterrupted run would.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rlhfkit import distributed
from rlhfkit.batch import Prompt
from rlhfkit.config import GenCfg, OptimCfg, PositiveInt, Problem, PromptDataCfg, default
from rlhfkit.eval.monitors import MonitorCfg
from rlhfkit.train import checkpoints, kit, monitoring, rollout
from rlhfkit.train.offline import BatchOrder, LossFn, accumulate


@dataclass(frozen=True)
class RoundsCfg:
    """How many rounds, how many samples each, and how long to train on them."""

    rounds: PositiveInt = 10
    """Rounds of sample -> score -> relabel -> train."""
    prompts_per_round: PositiveInt = 32
    """Prompts sampled per round, one completion each."""
    steps_per_round: PositiveInt = 8
    """Optimiser steps on each round's relabelled samples."""
    batch_size: PositiveInt = 8
    """Examples per forward/backward pass; an optimiser step takes batch_size x
    optim.grad_accum_steps examples."""
    max_length: PositiveInt = 512
    """Most tokens per training sequence; longer ones lose prompt tokens from the left."""

    def check(self) -> Iterable[Problem]:
        size = distributed.world_size()
        if self.prompts_per_round % size:
            yield Problem(
                "prompts_per_round",
                self.prompts_per_round,
                f"does not divide over {size} ranks (torchrun's world size); make it a "
                f"multiple of {size}",
            )


@dataclass(frozen=True)
class RoundsConfig(kit.TrainConfig):
    """What every round-based hindsight method configures; each adds its own group."""

    reward: str = "sentiment"
    """Reward or verifier scoring each sample: a registered name (sentiment, vader,
    reasoning_gym:TASK, length, ...) or your own file.py:fn / package.module:fn."""
    data: PromptDataCfg = default(PromptDataCfg)
    gen: GenCfg = default(GenCfg)
    rounds: RoundsCfg = default(RoundsCfg)
    eval: kit.EvalCfg = default(kit.EvalCfg)
    monitor: MonitorCfg = default(MonitorCfg)


def own_method(method: str, expected: str) -> Iterable[Problem]:
    """A recipe's ``method`` must name the module that reads it."""
    if method != expected:
        yield Problem(
            "method",
            method,
            f"this config is the {expected!r} method's; run "
            f"`rlhfkit hindsight --method {method}` or set method = {expected!r}",
        )


class Rounds:
    """The policy, sampler, reward, optimiser(s) and run directory of one round-based run.

    Use as a context manager: the run directory is closed on the way out, even on Ctrl-C.
    """

    def __init__(self, cfg: RoundsConfig, command: str, conditioning: Any = None):
        """``conditioning``: how the trained policy is asked (its ``conditioning.json``), which
        the held-out evaluation asks it too."""
        from rlhfkit.data import sequences
        from rlhfkit.data.prompts import PromptStream, prompt_rows
        from rlhfkit.generation import get_backend
        from rlhfkit.rewards import load_reward
        from rlhfkit.train.runs import Run, seed_everything

        self.cfg = cfg
        seed_everything(cfg.run.seed, cfg.run.deterministic)
        self.reward = load_reward(cfg.reward)
        self.stream = PromptStream(prompt_rows(cfg.data, "train"), cfg.run.seed)
        self.policy, self.tokenizer, _ = kit.load_policy_and_reference(
            cfg.model, cfg.lora, need_reference=False
        )
        self.device = next(self.policy.parameters()).device
        self.backend = get_backend(cfg.gen.backend, self.policy, self.tokenizer)
        self.chat = sequences.uses_chat_template(self.tokenizer, cfg.gen.chat_template)
        self.pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        self.total_steps = cfg.rounds.rounds * cfg.rounds.steps_per_round
        self.learner = self._learner({"policy": (self.policy, cfg.optim)})
        self.critic: Any = None
        self.run = Run.start(cfg, command)
        held_out = kit.held_out_eval(
            cfg, self.reward, self.run.path, cfg.rounds.rounds, None, self.backend, conditioning
        )
        # no reference model: the KL monitors have nothing to watch
        self.oversight = monitoring.Oversight(
            cfg, self.run.path, held_out, self.reward, False, cfg.rounds.rounds
        )
        self.started = time.perf_counter()

    def __enter__(self) -> Rounds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.run.close(failed=exc[0] is not None)

    def _learner(self, models: dict[str, tuple[Any, OptimCfg]]) -> kit.Learner:
        optim = self.cfg.optim
        return kit.Learner(
            models, self.total_steps, optim.max_grad_norm, optim.max_nonfinite_steps, self.cfg.dist
        )

    def add_critic(self, critic: Any, optim: OptimCfg) -> None:
        """Train ``critic`` (a ``critic.ValueModel``) alongside the policy, with its own AdamW
        (before the first step: the policy's optimiser is built afresh beside it)."""
        self.critic = critic
        self.learner = self._learner(
            {"policy": (self.policy, self.cfg.optim), "critic": (critic, optim)}
        )

    # --- resume and checkpoints ------------------------------------------------------------------

    def _stateful(self) -> dict[str, Any]:
        return {"stream": self.stream, **self.learner.stateful(), **self.oversight.stateful()}

    def resume(self) -> int:
        """The last finished round (0 on a fresh run, whose starting policy is evaluated held
        out); with ``--resume``, its state restored."""
        if not self.cfg.run.resume or (checkpoint := self.run.latest_checkpoint()) is None:
            if start := self.oversight.start(self.policy, self.tokenizer):
                self.run.log(0, start)
            return 0
        done = checkpoints.load_checkpoint(
            checkpoint, self.learner, self._stateful(), self._parts()
        )
        self.run.truncate_metrics(done)
        self.oversight.resume(done)
        return done

    def left(self, done: int) -> Iterator[int]:
        """The rounds after ``done``; none after a monitor's alert with monitor.stop_on_alert."""
        return self.oversight.left(done)

    def end_round(self, round_: int, metrics: dict[str, float]) -> None:
        """Log the round's metrics (and held-out figures, every ``eval.every`` rounds and the
        last, or the one an alert ends the run at), check the monitors and checkpoint it."""
        metrics = {
            **distributed.mean_floats(metrics),  # data-parallel: over the ranks' shares
            "skipped_steps": self.learner.guard.skipped,
            "lr": self.learner.lrs()[0],
        }
        metrics, _ = self.oversight.after(round_, metrics, self.policy, self.tokenizer)
        self.run.log(round_, metrics)
        checkpoints.save_checkpoint(self.run, round_, self.learner, self._stateful(), self._parts())

    def _parts(self) -> tuple[Any, ...]:
        return () if self.critic is None else (self.critic,)

    def prompts(self) -> list[dict[str, Any]]:
        """This round's prompt rows (data-parallel: this rank's share of them)."""
        return kit.rank_share(self.stream.take(self.cfg.rounds.prompts_per_round))

    # --- sampling --------------------------------------------------------------------------------

    def sample(self, prompts: list[Prompt], round_: int) -> Any:
        """One completion per prompt from the current policy (a ``batch.Rollout``)."""
        return rollout.sample(
            self.policy,
            self.backend,
            prompts,
            self.cfg.gen,
            seed=kit.rollout_seed(self.cfg.run.seed, round_),
        )

    def score(self, rows: list[dict[str, Any]], completions: list[str]) -> list[float]:
        """The reward's raw score of each completion (the original, unconditioned prompts)."""
        raw, _ = rollout.score(self.reward, rows, completions, self.device)
        return raw.tolist()

    def encode(self, prompt: Prompt, completion: str, ends: bool = True) -> Any:
        """``prompt`` + ``completion`` (+ EOS when it ``ends``) as a ``sequences.Encoded``, rendered
        as sampled. Pass ``rollout.finished``: a sample cut off by max_new_tokens did not end."""
        from rlhfkit.data import sequences

        return sequences.encode(
            self.tokenizer, prompt, completion, self.chat, self.cfg.rounds.max_length, ends=ends
        )

    def collate(self, encoded: Sequence[Any]) -> Any:
        from rlhfkit.data import sequences

        return sequences.collate(encoded, self.pad_id).to(self.device)

    # --- offline training ------------------------------------------------------------------------

    def optimise(self, examples: Sequence[Any], loss_fn: LossFn, round_: int) -> dict[str, float]:
        """``rounds.steps_per_round`` optimiser steps on ``examples``; the mean metrics.

        Batches are drawn in a seeded random order (a new one each round); each micro-batch's
        mean loss weighs by its share of the step's examples, so accumulation does not change
        the step. A NaN/inf loss or gradient skips the step (``kit.Learner``).
        """
        cfg = self.cfg
        order = BatchOrder(
            [0] * len(examples),
            cfg.rounds.batch_size,
            cfg.run.seed * 1_000_003 + round_,
            group_by_length=False,
        )
        steps = cfg.rounds.steps_per_round
        means: dict[str, float] = {}
        for _ in range(steps):
            batches = [
                [examples[i] for i in order.next()] for _ in range(cfg.optim.grad_accum_steps)
            ]
            step_means = accumulate(batches, loss_fn, self.learner.backward)
            for key, value in step_means.items():
                means[key] = means.get(key, 0.0) + value / steps
            norms = self.learner.step()
            means["grad_norm"] = means.get("grad_norm", 0.0) + norms[0] / steps
        return means

    # --- the end ---------------------------------------------------------------------------------

    def finish(self, conditioning: Any, summary: dict[str, Any]) -> kit.TrainResult:
        """Export the policy to ``<run>/model`` with its conditioning; write the summary."""
        model_dir = kit.export(self.run.path / "model", self.policy, self.tokenizer)
        if distributed.is_main():
            conditioning.save(model_dir)
        summary = {
            "rounds": self.oversight.last,
            "seconds": round(time.perf_counter() - self.started, 1),
            **summary,
            "skipped_steps": self.learner.guard.skipped,
            **self.oversight.summary("round"),
            "model": str(model_dir),
        }
        self.run.finish(summary, report=kit.write_report)
        return kit.TrainResult(self.run, self.policy, self.tokenizer, summary)


def completion_logprobs_and_entropy(model: Any, batch: Any) -> tuple[Any, Any, Any]:
    """(log-probs, token entropy, mask) of a ``sequences.SequenceBatch``'s completion tokens.

    Each (B, T-1), aligned as ``sequences.completion_logprobs``. The entropy needs the whole
    distribution at every position, so unlike that function this materialises (B, T-1, V)
    logits: used only when an entropy term is asked for.
    """
    from rlhfkit.losses.policy import entropy_from_logits

    logits = (
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        .logits[:, :-1]
        .float()
    )  # (B, T-1, V)
    targets = batch.input_ids[:, 1:]  # (B, T-1)
    logprobs = logits.gather(-1, targets[..., None]).squeeze(-1) - logits.logsumexp(-1)
    return logprobs, entropy_from_logits(logits), batch.loss_mask[:, 1:]  # (B, T-1) each


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
