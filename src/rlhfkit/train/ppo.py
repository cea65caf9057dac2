"""Online RL with PPO: a policy, a critic with GAE, and a KL penalty to the reference.

One loop, top to bottom. Each step:
  1. take prompts, one completion each (the critic, not a group, supplies the baseline)
  2. sample completions from the current policy
  3. score them with the reward
  4. without gradients: reference and old log-probs, and the critic's values (a separate
     network, or a value head on the policy's trunk: critic.share_policy)
  5. per-token rewards: the score on the last token, -kl_coef KL on every token
  6. GAE advantages and returns (the critic's targets); advantages whitened
  7. updates: epochs x minibatches x micro-batches of the clipped policy and value losses
  8. adapt the KL coefficient, log, checkpoint

References: PPO (Schulman et al. 2017), GAE (Schulman et al. 2016), PPO for language models with
a per-token KL penalty (Ziegler et al. 2019; Ouyang et al. 2022, InstructGPT), and "The N+
implementation details of RLHF with PPO" (Huang et al. 2024).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

from rlhfkit.config import (
    Fraction,
    ModelReference,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Problem,
    default,
)
from rlhfkit.data.prompts import PromptStream, prompt_rows
from rlhfkit.models.export import export_model
from rlhfkit.models.lora import reference
from rlhfkit.train import kit


@dataclass(frozen=True)
class AlgoCfg:
    """PPO: batch shape, clipping, GAE and the KL penalty."""

    prompts_per_step: PositiveInt = 16
    """Prompts per step, one completion each."""
    micro_batch_size: PositiveInt = 8
    """Completions per forward/backward pass; a minibatch (one optimiser step) is
    micro_batch_size x optim.grad_accum_steps completions."""
    epochs: PositiveInt = 2
    """Passes of minibatch updates over each sampled batch."""
    clip_eps: PositiveFloat = 0.2
    """Policy ratio clip range."""
    value_clip_eps: NonNegativeFloat = 0.2
    """How far a value may move from its rollout-time estimate per batch, in reward units
    (0 = no value clipping)."""
    gamma: Fraction = 1.0
    """Discount per token; 1 treats a completion as one undiscounted episode."""
    lam: Fraction = 0.95
    """GAE's lambda: 0 trusts the critic (one-step TD), 1 trusts the sampled returns."""
    kl_coef: NonNegativeFloat = 0.05
    """Weight of the KL to the reference (0 = no reference model)."""
    kl_target: NonNegativeFloat = 0.0
    """0 keeps kl_coef fixed; otherwise adapt it toward this KL per completion (Ziegler 2019)."""
    kl_horizon: PositiveInt = 10_000
    """Adaptive KL: completions over which the coefficient closes the gap to the target."""
    kl_in: Literal["reward", "loss"] = "reward"
    """Where KL enters: a per-token reward penalty (InstructGPT) or a loss term (GRPO-style)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """Per-token KL estimator of the loss term (kl_in = loss); the reward penalty uses k1."""
    whiten_advantages: bool = True
    """Whiten advantages over the batch's tokens, so the reward scale does not set the step."""
    reward_clip: NonNegativeFloat = 0.0
    """Clip scores to [-reward_clip, reward_clip] (0 = off)."""
    whiten_scores: bool = False
    """Whiten scores over the batch before they become rewards."""
    aggregation: Literal["token", "sequence", "sequence-sum"] = "token"
    """How per-token losses become one number (token: every token weighs the same)."""

    def check(self) -> Iterable[Problem]:
        if self.kl_target > 0 and self.kl_coef == 0:
            yield Problem(
                "kl_target",
                self.kl_target,
                "adapts algo.kl_coef by multiplying it, so it needs a start above 0; "
                "set algo.kl_coef (e.g. 0.05) or drop algo.kl_target",
            )


@dataclass(frozen=True)
class CriticCfg:
    """The value model: a causal-LM backbone with a scalar head (LoRA follows the lora group)."""

    path: str = ""
    """Model the critic's backbone starts from, with the policy's tokenizer; empty uses
    model.path."""
    lr: NonNegativeFloat = 0.0
    """Critic learning rate (its own AdamW, same schedule); 0 uses optim.lr."""
    train_layers: NonNegativeInt = 0
    """Train only the top this many decoder layers (and the head); the rest stay at their
    starting weights and run without a backward pass. 0 trains every layer."""
    share_policy: bool = False
    """A value head on the policy's own trunk instead of a second network: one forward and
    backward pass serve both (about a fifth less time per step, one model less in memory), and
    the value loss also trains the policy's trunk, scaled by trunk_coef. A lone linear head
    wants a higher critic.lr than a whole critic (the demo: 1e-3 against 5e-5)."""
    trunk_coef: NonNegativeFloat = 0.1
    """With share_policy: how much of the value loss's gradient reaches the shared trunk (the
    head always learns at full strength); 0 keeps the trunk the policy's alone."""

    def check(self) -> Iterable[Problem]:
        if self.path and (message := ModelReference()(self.path)):
            yield Problem("path", self.path, message)
        if self.share_policy and self.path:
            yield Problem(
                "path",
                self.path,
                "names a separate critic's backbone, but "
                "critic.share_policy puts the value head on the policy's; drop one",
            )
        if self.share_policy and self.train_layers:
            yield Problem(
                "train_layers",
                self.train_layers,
                "freezes a separate critic's lower "
                "layers, but with critic.share_policy those are the policy's; set it "
                "to 0 or turn critic.share_policy off",
            )


@dataclass(frozen=True)
class Config(kit.OnlineConfig):
    """Online RL with PPO: policy, critic with GAE, and a KL penalty to the reference."""

    critic: CriticCfg = default(CriticCfg)
    algo: AlgoCfg = default(AlgoCfg)

    def check(self) -> Iterable[Problem]:
        algo = self.algo
        minibatch = algo.micro_batch_size * self.optim.grad_accum_steps
        if algo.prompts_per_step % minibatch:
            yield Problem(
                "algo.prompts_per_step",
                algo.prompts_per_step,
                "(one completion each) is not a multiple of the minibatch, "
                f"algo.micro_batch_size x optim.grad_accum_steps = {minibatch}; "
                "make it one",
            )
        if algo.kl_target > 0 and algo.kl_horizon < algo.prompts_per_step:
            yield Problem(
                "algo.kl_horizon",
                algo.kl_horizon,
                f"is shorter than one step's {algo.prompts_per_step} completions, so "
                "one update could flip the KL coefficient's sign; make it many steps "
                "long (the paper: 10000)",
            )


@dataclass
class Outcome(kit.Outcome):
    """What a finished run leaves (as ``kit.Outcome``, so callers can use either loop), plus the critic."""

    critic: Any = None


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    outcome = train(cfg)
    print_summary(outcome.run, outcome.summary)


def train(cfg: Config) -> Outcome:
    import torch

    from rlhfkit.advantages import (
        AdvantageInputs,
        AdvantageSettings,
        get_advantage,
        token_rewards,
    )
    from rlhfkit.generation import get_backend
    from rlhfkit.losses.policy import aggregate, kl_estimate, masked_mean, ppo_clip_loss, value_loss
    from rlhfkit.models import token_logprobs
    from rlhfkit.models.critic import PolicyValueHead, explained_variance, load_value_model
    from rlhfkit.progress import progress
    from rlhfkit.rewards import load_reward
    from rlhfkit.train.runs import Run, seed_everything

    algo, optim = cfg.algo, cfg.optim
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    gae = get_advantage("gae")
    reward = load_reward(cfg.reward)
    stream = PromptStream(prompt_rows(cfg.data, "train"), cfg.run.seed)
    policy, tokenizer, frozen_ref = kit.load_policy_and_reference(
        cfg.model, cfg.lora, need_reference=algo.kl_coef > 0
    )
    if cfg.critic.share_policy:
        critic = PolicyValueHead(
            policy.config.get_text_config().hidden_size, cfg.critic.trunk_coef, policy.device
        )
    else:
        critic = load_value_model(
            cfg.model, tokenizer, cfg.critic.path, cfg.lora, cfg.critic.train_layers
        )
    evaluate = partial(critic.evaluate, policy)  # (ids, mask, start, T) -> log-probs, values
    backend = get_backend(cfg.gen.backend, policy, tokenizer)
    minibatch = algo.micro_batch_size * optim.grad_accum_steps
    updates_per_step = algo.epochs * algo.prompts_per_step // minibatch
    optimizer, scheduler = kit.build_optimizer(policy, optim, cfg.steps * updates_per_step)
    critic_optimizer, critic_scheduler = kit.build_optimizer(
        critic, replace(optim, lr=cfg.critic.lr or optim.lr), cfg.steps * updates_per_step
    )
    kl_ctl = kit.kl_controller(algo)
    guard = kit.NonFiniteGuard(optim.max_nonfinite_steps)
    settings = AdvantageSettings(gamma=algo.gamma, lam=algo.lam, whiten=algo.whiten_advantages)
    value_clip = algo.value_clip_eps or float("inf")  # an infinite range never clips
    # One forward/backward per step: the critic's values and the policy's log-probs with
    # gradients are the old ones (same weights, same batch), so step 4 needs no separate no-grad
    # pass over the critic. Only with one micro-batch: keeping several micro-batches' graphs
    # alive would undo micro-batching.
    single_pass = updates_per_step == 1 and optim.grad_accum_steps == 1
    run = Run.start(cfg, "ppo")
    # everything besides the weights that an exact resume needs back
    stateful = {
        "optimizer": optimizer,
        "scheduler": scheduler,
        "critic_optimizer": critic_optimizer,
        "critic_scheduler": critic_scheduler,
        "stream": stream,
        "kl": kl_ctl,
    }
    start_step = 0
    if cfg.run.resume and (checkpoint := run.latest_checkpoint()) is not None:
        start_step = kit.restore(kit.load_training_state(checkpoint, policy), stateful)
        critic.load(checkpoint)
        run.truncate_metrics(start_step)

    def save(step: int) -> None:
        state = kit.snapshot(step, stateful)

        def write(directory: Any) -> None:
            kit.save_training_state(directory, policy, state)
            critic.save(directory)

        run.save_checkpoint(step, write)

    started = time.perf_counter()
    try:
        with progress("training", total=cfg.steps) as (bar, task):
            bar.update(task, completed=start_step)
            for step in range(start_step + 1, cfg.steps + 1):
                step_started = time.perf_counter()
                # 1. prompts
                rows = stream.take(algo.prompts_per_step)
                prompts = [row["prompt"] for row in rows]

                # 2. sample from the current policy
                rollout = kit.sample(
                    policy, backend, prompts, cfg.gen, seed=cfg.run.seed * 1_000_003 + step
                )
                generation_seconds = time.perf_counter() - step_started
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

                # 4. reference and old log-probs, old values: fixed for this step's updates
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
                    # Old log-probs come from a forward pass like the reference's, not from
                    # sampling: its incremental decoding rounds differently (~1e-5 per token in
                    # float32, ~0.1 under model.autocast), which the KL would count.
                    if not single_pass:
                        old_logprobs, old_values = kit.in_chunks(
                            partial(evaluate, response_start=start, temperature=temperature),
                            input_ids,
                            attention_mask,
                            algo.micro_batch_size,
                        )  # (B, R) each
                if single_pass:  # the one graded pass gives the old values and log-probs
                    graded_logprobs, graded_values = evaluate(
                        input_ids, attention_mask, start, temperature
                    )  # (B, R) each
                    old_values, old_logprobs = graded_values.detach(), graded_logprobs.detach()
                kl_tokens = (
                    kl_estimate(old_logprobs, ref_logprobs, "k1") * mask
                    if ref_logprobs is not None
                    else torch.zeros_like(mask)
                )  # (B, R)

                # 5. rewards: with KL in the reward, each token pays its own KL (Ziegler 2019)
                rewards_t = token_rewards(
                    scores, mask, kl_tokens if algo.kl_in == "reward" else None, kl_ctl.coef
                )  # (B, R)

                # 6. GAE: advantages for the policy, lambda-returns as the critic's targets
                advantages, returns = gae(
                    AdvantageInputs(response_mask=mask, token_rewards=rewards_t, values=old_values),
                    settings,
                )  # (B, R) each
                explained = explained_variance(old_values, returns, mask)

                # 7. updates: epochs x minibatches x micro-batches
                sums: dict[str, float] = defaultdict(float)
                for _ in range(algo.epochs):
                    order = torch.randperm(len(rollout))
                    for mb_start in range(0, len(rollout), minibatch):
                        mb_index = order[mb_start : mb_start + minibatch]
                        mb_mask = mask[mb_index]
                        loss_finite = True
                        for micro_start in range(0, minibatch, algo.micro_batch_size):
                            index = mb_index[micro_start : micro_start + algo.micro_batch_size]
                            ids, am, mb_tokens = (
                                input_ids[index],
                                attention_mask[index],
                                mask[index],
                            )
                            logprobs, values = (
                                (graded_logprobs[index], graded_values[index])
                                if single_pass
                                else evaluate(ids, am, start, temperature)
                            )  # (b, R)
                            old = old_logprobs[index]
                            policy_loss, policy_stats = ppo_clip_loss(
                                logprobs,
                                old,
                                advantages[index],
                                mb_tokens,
                                algo.clip_eps,
                                None,
                                algo.aggregation,
                                cfg.gen.max_new_tokens,
                            )
                            kl_loss = torch.zeros(())
                            if algo.kl_in == "loss" and ref_logprobs is not None:
                                kl_loss = aggregate(
                                    kl_estimate(logprobs, ref_logprobs[index], algo.kl_estimator),
                                    mb_tokens,
                                    algo.aggregation,
                                    cfg.gen.max_new_tokens,
                                )
                            critic_loss, value_stats = value_loss(
                                values,
                                old_values[index],
                                returns[index],
                                mb_tokens,
                                value_clip,
                                algo.aggregation,
                                cfg.gen.max_new_tokens,
                            )
                            # Separate networks, so the sum sends each loss to its own weights.
                            # No vf_coef: the critic's own AdamW cancels a constant loss scale;
                            # critic.lr sets its pace.
                            weight = kit.accumulation_weight(mb_tokens, mb_mask, algo.aggregation)
                            total = (policy_loss + kl_ctl.coef * kl_loss + critic_loss) * weight
                            if torch.isfinite(total):
                                total.backward()
                            else:
                                loss_finite = False  # the guard skips this optimiser step
                            for key, value in (
                                ("loss", policy_loss),
                                ("kl_loss", kl_loss),
                                ("value_loss", critic_loss),
                                ("clip_fraction", policy_stats.clip_fraction),
                                ("approx_kl", policy_stats.approx_kl),
                                ("value_clip_fraction", value_stats.clip_fraction),
                            ):
                                sums[key] += float(value.detach()) * weight
                        ok, (grad_norm, value_grad_norm) = guard.clip_and_check_all(
                            [policy, critic], optim.max_grad_norm, loss_finite
                        )
                        if ok:
                            optimizer.step()
                            critic_optimizer.step()
                        for opt, sched in (
                            (optimizer, scheduler),
                            (critic_optimizer, critic_scheduler),
                        ):
                            opt.zero_grad(set_to_none=True)
                            sched.step()
                        sums["grad_norm"] += grad_norm
                        sums["value_grad_norm"] += value_grad_norm

                # 8. KL controller, metrics, checkpoint
                kl_per_completion = float(kl_tokens.sum(dim=1).mean())
                kl_ctl.update(kl_per_completion, len(rollout))
                elapsed = time.perf_counter() - step_started
                tokens = int(rollout.response_mask.sum())
                metrics = {
                    "reward": float(raw_scores.mean()),
                    "reward_std": float(raw_scores.std()),
                    "kl": kl_per_completion,
                    "kl_coef": kl_ctl.coef,
                    "explained_variance": explained,
                    "value_mean": float(masked_mean(old_values, mask)),
                    "return_mean": float(masked_mean(returns, mask)),
                    "length": float(rollout.response_lengths.float().mean()),
                    "finished": float(rollout.finished.float().mean()),
                    "entropy_proxy": float(-masked_mean(old_logprobs, mask)),
                    "lr": scheduler.get_last_lr()[0],
                    "critic_lr": critic_scheduler.get_last_lr()[0],
                    **{key: value / updates_per_step for key, value in sums.items()},
                    "skipped_steps": guard.skipped,
                    "step_seconds": elapsed,
                    "generation_seconds": generation_seconds,
                    "tokens_per_second": tokens / elapsed,
                }
                if step % cfg.log.every == 0 or step == cfg.steps:
                    run.log(step, metrics)
                bar.update(
                    task,
                    advance=1,
                    info=f"reward {metrics['reward']:+.3f}  "
                    f"kl {metrics['kl']:.3f}  "
                    f"ev {metrics['explained_variance']:+.2f}",
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
        "explained_variance_last": history[-1]["explained_variance"] if history else None,
        "skipped_steps": guard.skipped,
        "model": str(run.path / "model"),
    }
    run.finish(summary)
    return Outcome(
        run=run,
        policy=policy,
        tokenizer=tokenizer,
        reference=frozen_ref,
        summary=summary,
        critic=critic,
    )
