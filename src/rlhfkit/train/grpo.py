"""Critic-free online RL: GRPO, RLOO, REINFORCE and REINFORCE++ with a KL penalty.

One loop, top to bottom. Each step:
  1. take prompts, repeat each ``group_size`` times (a group answers one prompt)
  2. sample completions from the current policy
  3. score them with the reward
  4. reference log-probs (KL) and, when several updates reuse the batch, old log-probs
  5. advantages from the registered estimator (``--algo.advantage``)
  6. clipped policy-gradient updates: epochs x minibatches x gradient accumulation
  7. adapt the KL coefficient, log, checkpoint

References: GRPO (Shao et al. 2024, DeepSeekMath), Dr. GRPO (Liu et al. 2025), RLOO (Ahmadian
et al. 2024), REINFORCE++ (Hu 2025), KL control (Ziegler et al. 2019).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from rlhfkit.config import (
    Fraction,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Problem,
    default,
)
from rlhfkit.data.prompts import PromptStream, prompt_rows
from rlhfkit.models.export import export_model
from rlhfkit.models.lora import reference
from rlhfkit.train import kit

GROUP_ESTIMATORS = ("grpo", "rloo")


@dataclass(frozen=True)
class AlgoCfg:
    """The RL algorithm: estimator, group size, batch shape, clipping and KL."""

    advantage: str = "grpo"
    """Advantage estimator: grpo, rloo, reinforce, reinforce++ (or a registered plug-in)."""
    group_size: PositiveInt = 4
    """Completions sampled per prompt (grpo and rloo need at least 2 to form a baseline)."""
    prompts_per_step: PositiveInt = 4
    """Prompts per step; a step samples prompts_per_step x group_size completions."""
    micro_batch_size: PositiveInt = 16
    """Completions per forward/backward pass; an optimiser step takes micro_batch_size x
    optim.grad_accum_steps completions."""
    epochs: PositiveInt = 1
    """Passes of updates over each sampled batch (1 is on-policy: no old log-probs needed)."""
    clip_eps: PositiveFloat = 0.2
    """PPO ratio clip range."""
    clip_eps_high: NonNegativeFloat = 0.0
    """Upper clip range (DAPO's clip-higher, e.g. 0.28); 0 uses clip_eps."""
    kl_coef: NonNegativeFloat = 0.05
    """Weight of the KL to the reference (0 = no reference model)."""
    kl_target: NonNegativeFloat = 0.0
    """0 keeps kl_coef fixed; otherwise adapt it toward this KL per completion (Ziegler 2019)."""
    kl_horizon: PositiveInt = 10_000
    """Adaptive KL: completions over which the coefficient closes the gap to the target."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator in the loss (Schulman 2020); the reward penalty always uses k1."""
    kl_in: Literal["loss", "reward"] = "loss"
    """Where KL enters: a loss term (GRPO) or a per-token reward penalty (InstructGPT)."""
    scale_by_std: bool = True
    """grpo: divide by the group std; false is Dr. GRPO."""
    aggregation: Literal["token", "sequence", "sequence-sum"] = "token"
    """How per-token losses become one number (token: every token weighs the same)."""
    gamma: Fraction = 1.0
    """Discount per token (reinforce++)."""
    reward_clip: NonNegativeFloat = 0.0
    """Clip scores to [-reward_clip, reward_clip] (0 = off)."""
    whiten_scores: bool = False
    """Whiten scores over the batch before the estimator."""

    def check(self) -> Iterable[Problem]:
        from rlhfkit.advantages import advantage_names

        if self.advantage not in advantage_names():
            yield Problem(
                "advantage",
                self.advantage,
                f"is not an estimator; choose one of {', '.join(advantage_names())}",
            )
        elif self.advantage == "gae":
            yield Problem("advantage", self.advantage, "needs a critic; use `rlhfkit ppo`")
        if self.advantage in GROUP_ESTIMATORS and self.group_size < 2:
            yield Problem(
                "group_size",
                self.group_size,
                f"{self.advantage} compares completions of the same prompt, so a group "
                "of 1 has no baseline (every advantage would be 0); use 2 or more",
            )


@dataclass(frozen=True)
class Config(kit.OnlineConfig):
    """Online RL without a critic: GRPO, RLOO, REINFORCE or REINFORCE++ with KL to a reference."""

    algo: AlgoCfg = default(AlgoCfg)

    def check(self) -> Iterable[Problem]:
        rollout = self.algo.prompts_per_step * self.algo.group_size
        minibatch = self.algo.micro_batch_size * self.optim.grad_accum_steps
        if rollout % minibatch:
            yield Problem(
                "algo.prompts_per_step",
                self.algo.prompts_per_step,
                f"x algo.group_size {self.algo.group_size} = {rollout} completions per "
                f"step is not a multiple of algo.micro_batch_size x "
                f"optim.grad_accum_steps = {minibatch}; make it one",
            )


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    outcome = train(cfg)
    print_summary(outcome.run, outcome.summary)


def train(cfg: Config) -> kit.Outcome:
    import torch

    from rlhfkit.advantages import (
        AdvantageInputs,
        AdvantageSettings,
        RunningMean,
        get_advantage,
        token_rewards,
    )
    from rlhfkit.generation import get_backend
    from rlhfkit.losses.policy import aggregate, kl_estimate, masked_mean, ppo_clip_loss
    from rlhfkit.models import token_logprobs
    from rlhfkit.progress import progress
    from rlhfkit.rewards import load_reward
    from rlhfkit.train.runs import Run, seed_everything

    algo, optim = cfg.algo, cfg.optim
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    estimator = get_advantage(algo.advantage)
    reward = load_reward(cfg.reward)
    stream = PromptStream(prompt_rows(cfg.data, "train"), cfg.run.seed)
    policy, tokenizer, frozen_ref = kit.load_policy_and_reference(
        cfg.model, cfg.lora, need_reference=algo.kl_coef > 0
    )
    backend = get_backend(cfg.gen.backend, policy, tokenizer)
    optimizer, scheduler = kit.build_optimizer(policy, optim, cfg.steps * _updates_per_step(cfg))
    kl_ctl = kit.kl_controller(algo)
    baseline = RunningMean()
    guard = kit.NonFiniteGuard(optim.max_nonfinite_steps)
    settings = AdvantageSettings(gamma=algo.gamma, scale_by_std=algo.scale_by_std)
    run = Run.start(cfg, "grpo")
    # everything besides the weights that an exact resume needs back
    stateful = {
        "optimizer": optimizer,
        "scheduler": scheduler,
        "stream": stream,
        "kl": kl_ctl,
        "baseline": baseline,
    }
    start_step = 0
    if cfg.run.resume and (checkpoint := run.latest_checkpoint()) is not None:
        start_step = kit.restore(kit.load_training_state(checkpoint, policy), stateful)
        run.truncate_metrics(start_step)

    def save(step: int) -> None:
        state = kit.snapshot(step, stateful)
        run.save_checkpoint(step, lambda d: kit.save_training_state(d, policy, state))

    started = time.perf_counter()
    try:
        with progress("training", total=cfg.steps) as (bar, task):
            bar.update(task, completed=start_step)
            for step in range(start_step + 1, cfg.steps + 1):
                step_started = time.perf_counter()
                # 1. prompts, each repeated group_size times (contiguous groups)
                rows = [
                    row
                    for row in stream.take(algo.prompts_per_step)
                    for _ in range(algo.group_size)
                ]
                prompts = [row["prompt"] for row in rows]

                # 2. sample from the current policy
                rollout = kit.sample(
                    policy, backend, prompts, cfg.gen, seed=cfg.run.seed * 1_000_003 + step
                )
                input_ids, attention_mask = rollout.input_ids, rollout.attention_mask  # (B, P+R)
                mask = rollout.response_mask.float()  # (B, R)
                start = rollout.prompt_ids.shape[1]
                temperature = cfg.gen.temperature

                # 3. score
                raw_scores, scores = kit.score(
                    reward,
                    rows,
                    rollout.completions,
                    mask.device,
                    algo.reward_clip,
                    algo.whiten_scores,
                )  # (B,)

                # 4. reference and old log-probs, without gradients
                with torch.no_grad():
                    ref_logprobs = None
                    if algo.kl_coef > 0:
                        with reference(policy, frozen_ref) as ref_model:
                            ref_logprobs = kit.in_chunks(
                                partial(
                                    token_logprobs,
                                    ref_model,
                                    response_start=start,
                                    temperature=temperature,
                                ),
                                input_ids,
                                attention_mask,
                                algo.micro_batch_size,
                            )  # (B, R)
                    old_logprobs = None
                    if _updates_per_step(cfg) > 1:
                        old_logprobs = kit.in_chunks(
                            partial(
                                token_logprobs,
                                policy,
                                response_start=start,
                                temperature=temperature,
                            ),
                            input_ids,
                            attention_mask,
                            algo.micro_batch_size,
                        )  # (B, R)
                sample_logprobs = old_logprobs if old_logprobs is not None else rollout.logprobs
                kl_tokens = (
                    kl_estimate(sample_logprobs, ref_logprobs, "k1") * mask
                    if ref_logprobs is not None
                    else torch.zeros_like(mask)
                )  # (B, R)

                # 5. advantages; with KL in the reward, each token pays its own KL
                rewards_t = token_rewards(
                    scores, mask, kl_tokens if algo.kl_in == "reward" else None, kl_ctl.coef
                )  # (B, R)
                inputs = AdvantageInputs(
                    response_mask=mask,
                    scores=rewards_t.sum(dim=1),
                    token_rewards=rewards_t,
                    group_size=algo.group_size,
                    baseline=baseline,
                )
                advantages = estimator(inputs, settings).advantages  # (B, R)

                # 6. updates: epochs x minibatches x micro-batches
                stats = _Stats()
                minibatch = algo.micro_batch_size * optim.grad_accum_steps
                for _ in range(algo.epochs):
                    order = torch.randperm(len(rollout))
                    for mb_start in range(0, len(rollout), minibatch):
                        mb_index = order[mb_start : mb_start + minibatch]
                        mb_mask = mask[mb_index]
                        for micro_start in range(0, minibatch, algo.micro_batch_size):
                            index = mb_index[micro_start : micro_start + algo.micro_batch_size]
                            logprobs = token_logprobs(
                                policy, input_ids[index], attention_mask[index], start, temperature
                            )  # (b, R)
                            old = (
                                old_logprobs[index]
                                if old_logprobs is not None
                                else logprobs.detach()
                            )
                            loss, pstats = ppo_clip_loss(
                                logprobs,
                                old,
                                advantages[index],
                                mask[index],
                                algo.clip_eps,
                                algo.clip_eps_high or None,
                                algo.aggregation,
                                cfg.gen.max_new_tokens,
                            )
                            kl_loss = torch.zeros(())
                            if algo.kl_in == "loss" and ref_logprobs is not None:
                                kl_loss = aggregate(
                                    kl_estimate(logprobs, ref_logprobs[index], algo.kl_estimator),
                                    mask[index],
                                    algo.aggregation,
                                    cfg.gen.max_new_tokens,
                                )
                            weight = kit.accumulation_weight(mask[index], mb_mask, algo.aggregation)
                            total = (loss + kl_ctl.coef * kl_loss) * weight
                            if torch.isfinite(total):
                                total.backward()
                            else:
                                _poison_grads(policy)  # let the guard count it and skip the step
                            stats.add(
                                loss=float(loss.detach()) * weight,
                                kl_loss=float(kl_loss.detach()) * weight,
                                clip_fraction=float(pstats.clip_fraction) * weight,
                            )
                        ok, grad_norm = guard.clip_and_check(policy, optim.max_grad_norm)
                        if ok:
                            optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        scheduler.step()
                        stats.add(grad_norm=grad_norm, updates=1)

                # 7. KL controller, metrics, checkpoint
                kl_per_completion = float((kl_tokens.sum(dim=1)).mean())
                kl_ctl.update(kl_per_completion, len(rollout))
                elapsed = time.perf_counter() - step_started
                tokens = int(rollout.response_mask.sum())
                metrics = {
                    "reward": float(raw_scores.mean()),
                    "reward_std": float(raw_scores.std()),
                    "kl": kl_per_completion,
                    "kl_coef": kl_ctl.coef,
                    "length": float(rollout.response_lengths.float().mean()),
                    "finished": float(rollout.finished.float().mean()),
                    "entropy_proxy": float(-masked_mean(sample_logprobs, mask)),
                    "lr": scheduler.get_last_lr()[0],
                    "step_seconds": elapsed,
                    "tokens_per_second": tokens / elapsed,
                    "skipped_steps": guard.skipped,
                    **stats.means(),
                }
                if step % cfg.log.every == 0 or step == cfg.steps:
                    run.log(step, metrics)
                bar.update(
                    task, advance=1, info=f"reward {metrics['reward']:+.3f}  kl {metrics['kl']:.3f}"
                )
                if cfg.run.checkpoint_every and step % cfg.run.checkpoint_every == 0:
                    save(step)
        if not cfg.run.checkpoint_every or cfg.steps % cfg.run.checkpoint_every:
            save(cfg.steps)
        export_model(run.path / "model", policy, tokenizer)
    finally:
        run.close()
    history = run.metrics()
    summary = {
        "steps": cfg.steps,
        "seconds": round(time.perf_counter() - started, 1),
        "reward_first": history[0]["reward"] if history else None,
        "reward_last": history[-1]["reward"] if history else None,
        "kl_last": history[-1]["kl"] if history else None,
        "skipped_steps": guard.skipped,
        "model": str(run.path / "model"),
    }
    run.finish(summary)
    return kit.Outcome(
        run=run, policy=policy, tokenizer=tokenizer, reference=frozen_ref, summary=summary
    )


def _updates_per_step(cfg: Config) -> int:
    rollout = cfg.algo.prompts_per_step * cfg.algo.group_size
    return cfg.algo.epochs * rollout // (cfg.algo.micro_batch_size * cfg.optim.grad_accum_steps)


def _poison_grads(model: Any) -> None:
    """Mark the gradients non-finite so the guard skips this step (a NaN loss had no backward)."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad = p.new_full(p.shape, float("nan"))
            return


class _Stats:
    """Sums of per-update diagnostics, reported as means per optimiser step."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}

    def add(self, **values: float) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def means(self) -> dict[str, float]:
        updates = max(self.sums.pop("updates", 1.0), 1.0)
        return {key: value / updates for key, value in self.sums.items()}
