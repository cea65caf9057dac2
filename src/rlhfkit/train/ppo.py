"""Online RL with PPO: a policy, a critic with GAE, and a KL penalty to the reference.

One loop, top to bottom. Each step:
  1. take prompts, one completion each (the critic, not a group, supplies the baseline)
  2-3. the shared rollout step (``rollout.collect``): sample completions from the current
     policy, score them, reference log-probs
  4. old log-probs and the critic's values (a separate network, or a value head on the
     policy's trunk: critic.share_policy)
  5. per-token rewards: the score on the last token, -kl_coef KL on every token
  6. GAE advantages and returns (the critic's targets); advantages whitened
  7. updates: epochs x minibatches x micro-batches of the PPO objective
     (``losses.objectives.ppo_objective``) and the clipped value loss
  8. adapt the KL coefficient, log, checkpoint (``kit.Session``)

References: PPO (Schulman et al. 2017), GAE (Schulman et al. 2016), PPO for language models with
a per-token KL penalty (Ziegler et al. 2019; Ouyang et al. 2022, InstructGPT), and "The N+
implementation details of RLHF with PPO" (Huang et al. 2024).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

from rlhfkit import distributed
from rlhfkit.config import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Problem,
    default,
    model_problem,
)
from rlhfkit.data.prompts import PromptStream, prompt_rows
from rlhfkit.models.lora import reference
from rlhfkit.train import kit, rollout


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
    rollout_is: Literal["off", "tis"] = "off"
    """Correct for a sampler whose log-probs differ from the trainer's (another rollout engine
    or precision): tis weights each token's policy gradient by min(pi_trainer / pi_sampler,
    rollout_is_cap). The gap is logged as mismatch_kl either way."""
    rollout_is_cap: PositiveFloat = 2.0
    """rollout_is tis: the largest weight a token gets."""

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
    backward pass serve both (less time per step, one model less in memory: bench/README.md), and
    the value loss also trains the policy's trunk, scaled by trunk_coef. A lone linear head
    wants a higher critic.lr than a whole critic (the demo: 1e-3 against 5e-5)."""
    trunk_coef: NonNegativeFloat = 0.1
    """With share_policy: how much of the value loss's gradient reaches the shared trunk (the
    head always learns at full strength); 0 keeps the trunk the policy's alone."""

    def check(self) -> Iterable[Problem]:
        if self.path and (message := model_problem(self.path)):
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
        if problem := kit.prompts_per_rank_problem(algo.prompts_per_step):
            yield problem
        elif (algo.prompts_per_step // distributed.world_size()) % minibatch:
            per_rank = " per rank" if distributed.world_size() > 1 else ""
            yield Problem(
                "algo.prompts_per_step",
                algo.prompts_per_step,
                f"(one completion each{per_rank}) is not a multiple of the minibatch, "
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
class Result(kit.TrainResult):
    """What a finished run leaves (as ``kit.TrainResult``), plus the critic."""

    critic: Any = None


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    outcome = train(cfg)
    print_summary(outcome.run, outcome.summary)


def train(cfg: Config) -> Result:
    import torch

    from rlhfkit.advantages import AdvantageInputs, AdvantageSettings, get_advantage, token_rewards
    from rlhfkit.generation import get_backend
    from rlhfkit.losses.objectives import ObjectiveInputs, ObjectiveSettings, get_objective
    from rlhfkit.losses.policy import masked_mean, value_loss
    from rlhfkit.models.critic import explained_variance
    from rlhfkit.rewards import load_reward
    from rlhfkit.train.runs import seed_everything

    algo, optim = cfg.algo, cfg.optim
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    gae, objective = get_advantage("gae"), get_objective("ppo")
    reward = load_reward(cfg.reward)
    stream = PromptStream(prompt_rows(cfg.data, "train"), cfg.run.seed)
    policy, tokenizer, frozen_ref = kit.load_policy_and_reference(
        cfg.model, cfg.lora, need_reference=algo.kl_coef > 0
    )
    critic = _critic(cfg, policy, tokenizer)
    evaluate = partial(critic.evaluate, policy)  # (ids, mask, start, T) -> log-probs, values
    backend = get_backend(cfg.gen.backend, policy, tokenizer)
    minibatch = algo.micro_batch_size * optim.grad_accum_steps
    updates_per_step = algo.epochs * algo.prompts_per_step // distributed.world_size() // minibatch
    learner = kit.Learner(
        {
            "policy": (policy, optim),
            "critic": (critic, replace(optim, lr=cfg.critic.lr or optim.lr)),
        },
        cfg.steps * updates_per_step,
        optim.max_grad_norm,
        optim.max_nonfinite_steps,
        cfg.dist,
    )
    kl_ctl = kit.kl_controller(algo)
    settings = AdvantageSettings(gamma=algo.gamma, lam=algo.lam, whiten=algo.whiten_advantages)
    loss_settings = ObjectiveSettings(
        algo.clip_eps, None, algo.kl_estimator, algo.aggregation, cfg.gen.max_new_tokens
    )
    value_clip = algo.value_clip_eps or float("inf")  # an infinite range never clips
    options = rollout.RolloutOptions(
        algo.micro_batch_size, False, algo.reward_clip, algo.whiten_scores
    )
    ref_context = partial(reference, policy, frozen_ref) if algo.kl_coef > 0 else None
    # One forward/backward per step: the critic's values and the policy's log-probs with
    # gradients are the old ones (same weights, same batch), so step 4 needs no separate no-grad
    # pass over the critic. Only with one micro-batch: keeping several micro-batches' graphs
    # alive would undo micro-batching.
    single_pass = updates_per_step == 1 and optim.grad_accum_steps == 1
    # everything besides the weights that an exact resume needs back
    stateful = {**learner.stateful(), "stream": stream, "kl": kl_ctl}
    with kit.Session(
        cfg, "ppo", learner, tokenizer, stateful, (critic,), reward, ref_context, backend
    ) as session:
        for step in session.steps():
            step_started = time.perf_counter()
            # 1-3. prompts (data-parallel: this rank's share), one completion each; sample,
            # score, reference log-probs
            exp = rollout.collect(
                policy,
                backend,
                reward,
                kit.rank_share(stream.take(algo.prompts_per_step)),
                cfg.gen,
                kit.rollout_seed(cfg.run.seed, step),
                options,
                ref_context,
            )
            mask, start, temperature = exp.response_mask, exp.response_start, exp.temperature
            # 4. old log-probs and values: fixed for this step's updates
            if single_pass:  # the one graded pass gives the old values and log-probs
                graded_logprobs, graded_values = evaluate(
                    exp.input_ids, exp.attention_mask, start, temperature
                )  # (B, R) each
                old_values, old_logprobs = graded_values.detach(), graded_logprobs.detach()
            else:
                with torch.no_grad():
                    old_logprobs, old_values = kit.in_chunks(
                        partial(evaluate, response_start=start, temperature=temperature),
                        exp.input_ids,
                        exp.attention_mask,
                        algo.micro_batch_size,
                    )  # (B, R) each
            exp = replace(exp, old_logprobs=old_logprobs)
            kl_tokens = exp.kl_tokens()  # (B, R)

            # 5-6. per-token rewards, with KL in them (Ziegler 2019) or not; GAE advantages and
            # lambda-returns (the critic's targets)
            rewards_t = token_rewards(
                exp.scores, mask, kl_tokens if algo.kl_in == "reward" else None, kl_ctl.coef
            )  # (B, R)
            advantages, returns = gae(
                AdvantageInputs(response_mask=mask, token_rewards=rewards_t, values=old_values),
                settings,
            )  # (B, R) each
            explained = explained_variance(old_values, returns, mask)

            # 7. updates: epochs x minibatches x micro-batches of the policy and value objectives
            ref = exp.ref_logprobs if algo.kl_in == "loss" else None
            stats = kit.Stats()
            for indices in kit.minibatches(len(exp), minibatch, algo.epochs):
                for index in indices.split(algo.micro_batch_size):
                    if single_pass:
                        logprobs, values = graded_logprobs[index], graded_values[index]
                    else:  # (b, R) each
                        logprobs, values = evaluate(
                            exp.input_ids[index], exp.attention_mask[index], start, temperature
                        )
                    is_weights, mismatch_kl = rollout.sampler_gap(
                        exp, index, old_logprobs[index], algo.rollout_is, algo.rollout_is_cap
                    )
                    loss, parts = objective(
                        ObjectiveInputs(
                            logprobs,
                            old_logprobs[index],
                            advantages[index],
                            mask[index],
                            ref[index] if ref is not None else None,
                            kl_ctl.coef,
                            is_weights,
                        ),
                        loss_settings,
                    )
                    critic_loss, value_stats = value_loss(
                        values,
                        old_values[index],
                        returns[index],
                        mask[index],
                        value_clip,
                        algo.aggregation,
                        cfg.gen.max_new_tokens,
                    )
                    # Separate networks, so the sum sends each loss to its own weights. No
                    # vf_coef: the critic's own AdamW cancels a constant loss scale; critic.lr
                    # sets its pace.
                    weight = kit.accumulation_weight(mask[index], mask[indices], algo.aggregation)
                    learner.backward((loss + critic_loss) * weight)
                    stats.add(
                        weight,
                        loss=parts.policy_loss,
                        kl_loss=parts.kl_loss,
                        value_loss=critic_loss.detach(),
                        clip_fraction=parts.clip_fraction,
                        approx_kl=parts.approx_kl,
                        value_clip_fraction=value_stats.clip_fraction,
                        mismatch_kl=mismatch_kl,
                    )
                grad_norm, value_grad_norm = learner.step()
                stats.step(grad_norm=grad_norm, value_grad_norm=value_grad_norm)

            # 8. KL controller, metrics, checkpoint
            kl = kit.batch_mean(kl_tokens.sum(dim=1))
            kl_ctl.update(kl, len(exp) * distributed.world_size())
            elapsed = time.perf_counter() - step_started
            # data-parallel: means over the ranks, each holding an equal share of the batch
            shares = distributed.mean_floats(
                {
                    "explained_variance": explained,
                    "value_mean": float(masked_mean(old_values, mask)),
                    "return_mean": float(masked_mean(returns, mask)),
                    **stats.means(),
                }
            )
            explained = shares["explained_variance"]
            metrics = {
                **rollout.step_metrics(exp, kl, kl_ctl.coef),
                **shares,
                "lr": learner.lrs()[0],
                "critic_lr": learner.lrs()[1],
                "skipped_steps": learner.guard.skipped,
                "step_seconds": elapsed,
                "generation_seconds": exp.sample_seconds,
                "tokens_per_second": kit.batch_sum(mask.sum()) / elapsed,
            }
            session.record_tokens(step, partial(rollout.token_view, exp, advantages, tokenizer))
            session.end_step(
                step, metrics, f"reward {metrics['reward']:+.3f}  kl {kl:.3f}  ev {explained:+.2f}"
            )
    summary = kit.online_summary(session.run.metrics(), learner.guard.skipped, "explained_variance")
    result = session.finish(summary, frozen_ref)
    return Result(**vars(result), critic=critic)


def _critic(cfg: Config, policy: Any, tokenizer: Any) -> Any:
    """A value head on the policy's trunk (critic.share_policy), or a separate value model."""
    from rlhfkit.models.critic import PolicyValueHead, load_value_model

    if cfg.critic.share_policy:
        return PolicyValueHead(
            policy.config.get_text_config().hidden_size, cfg.critic.trunk_coef, policy.device
        )
    return load_value_model(
        cfg.model, tokenizer, cfg.critic.path, cfg.lora, cfg.critic.train_layers
    )
