"""Critic-free online RL: GRPO, RLOO, REINFORCE and REINFORCE++ with a KL penalty.

One loop, top to bottom. Each step:
  1. take prompts, repeat each ``group_size`` times (a group answers one prompt)
  2-4. the shared rollout step (``rollout.collect``): sample completions from the current
     policy, score them, reference log-probs (KL) and, when several updates reuse the batch,
     old log-probs
  5. advantages from the registered estimator (``--algo.advantage``)
  6. updates on the registered objective (``--algo.objective``: GRPO's clipped token ratios +
     KL term, or GSPO's sequence ratio): epochs x minibatches x gradient accumulation
  7. adapt the KL coefficient, log, checkpoint (``kit.Session``)

DAPO (Yu et al. 2025) is options: clip-higher (``clip_eps_high``), dynamic sampling (steps 1-4
sample more prompts until every group disagrees, ``rollout.sample_informative``), the soft
overlong punishment (``overlong_buffer``) and token-level aggregation (``aggregation token``).

References: GRPO (Shao et al. 2024, DeepSeekMath), Dr. GRPO (Liu et al. 2025), RLOO (Ahmadian
et al. 2024), REINFORCE++ (Hu 2025), DAPO (Yu et al. 2025), GSPO (Zheng et al. 2025), KL
control (Ziegler et al. 2019).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Literal

from rlhfkit import distributed
from rlhfkit.config import (
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Problem,
    default,
)
from rlhfkit.data.prompts import PromptStream, prompt_rows
from rlhfkit.models.lora import reference
from rlhfkit.train import kit, rollout

GROUP_ESTIMATORS = ("grpo", "rloo")


@dataclass(frozen=True)
class AlgoCfg:
    """The RL algorithm: estimator, group size, batch shape, clipping and KL."""

    advantage: str = "grpo"
    """Advantage estimator: grpo, rloo, reinforce, reinforce++ (or a registered plug-in)."""
    objective: str = "grpo"
    """Policy objective: grpo (per-token ratios clipped) or gspo (one ratio per sequence, its
    tokens' geometric mean, clipped: Zheng et al. 2025; use a clip_eps near 3e-4 and
    aggregation sequence), or a registered plug-in."""
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
    rollout_is: Literal["off", "tis"] = "off"
    """Correct for a sampler whose log-probs differ from the trainer's (another rollout engine
    or precision): tis weights each token's policy gradient by min(pi_trainer / pi_sampler,
    rollout_is_cap). The gap is logged as mismatch_kl either way."""
    rollout_is_cap: PositiveFloat = 2.0
    """rollout_is tis: the largest weight a token gets."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling: drop groups whose scores are all equal (no advantage, no
    gradient) and sample more prompts until the batch is full of groups that disagree
    (grpo and rloo; logged as sampling_rounds)."""
    max_extra_rounds: NonNegativeInt = 3
    """dynamic_sampling: extra sampling rounds a step may take; a batch still short after them
    is filled with equal-score groups (logged as equal_groups)."""
    overlong_buffer: NonNegativeInt = 0
    """DAPO's soft overlong punishment: a completion within this many tokens of
    gen.max_new_tokens loses up to overlong_penalty from its score, linearly, the whole
    penalty at the budget (0 = off)."""
    overlong_penalty: PositiveFloat = 1.0
    """overlong_buffer: the score lost by a completion that reaches gen.max_new_tokens."""

    def check(self) -> Iterable[Problem]:
        from rlhfkit.advantages import advantage_names
        from rlhfkit.losses.objectives import objective_names

        if self.objective not in objective_names():
            yield Problem(
                "objective",
                self.objective,
                f"is not an objective; choose one of {', '.join(objective_names())}",
            )
        if self.dynamic_sampling and self.advantage not in GROUP_ESTIMATORS:
            yield Problem(
                "dynamic_sampling",
                self.dynamic_sampling,
                f"drops groups that all scored alike, which only a group baseline ("
                f"{', '.join(GROUP_ESTIMATORS)}) learns nothing from; not {self.advantage}",
            )
        if self.dynamic_sampling and self.whiten_scores:
            yield Problem(
                "whiten_scores",
                self.whiten_scores,
                "with dynamic_sampling would whiten each sampling round on its own scale; "
                "turn one off",
            )
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
        if problem := kit.prompts_per_rank_problem(self.algo.prompts_per_step):
            yield problem
            return
        if self.algo.overlong_buffer > self.gen.max_new_tokens:
            yield Problem(
                "algo.overlong_buffer",
                self.algo.overlong_buffer,
                f"exceeds gen.max_new_tokens = {self.gen.max_new_tokens}; the penalty ramps "
                "over the last tokens of the budget, so make it at most that",
            )
        rollout = self.algo.prompts_per_step * self.algo.group_size
        minibatch = self.algo.micro_batch_size * self.optim.grad_accum_steps
        if (rollout // distributed.world_size()) % minibatch:
            per_rank = " per rank" if distributed.world_size() > 1 else ""
            yield Problem(
                "algo.prompts_per_step",
                self.algo.prompts_per_step,
                f"x algo.group_size {self.algo.group_size} = {rollout} completions per "
                f"step{per_rank} is not a multiple of algo.micro_batch_size x "
                f"optim.grad_accum_steps = {minibatch}; make it one",
            )


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    outcome = train(cfg)
    print_summary(outcome.run, outcome.summary)


def train(cfg: Config) -> kit.TrainResult:
    from rlhfkit.advantages import (
        AdvantageInputs,
        AdvantageSettings,
        RunningMean,
        get_advantage,
        token_rewards,
    )
    from rlhfkit.generation import get_backend
    from rlhfkit.losses.objectives import ObjectiveInputs, ObjectiveSettings, get_objective
    from rlhfkit.models import token_logprobs
    from rlhfkit.rewards import load_reward
    from rlhfkit.train.runs import seed_everything

    algo, optim = cfg.algo, cfg.optim
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    estimator, objective = get_advantage(algo.advantage), get_objective(algo.objective)
    reward = load_reward(cfg.reward)
    stream = PromptStream(prompt_rows(cfg.data, "train"), cfg.run.seed)
    policy, tokenizer, frozen_ref = kit.load_policy_and_reference(
        cfg.model, cfg.lora, need_reference=algo.kl_coef > 0
    )
    backend = get_backend(cfg.gen.backend, policy, tokenizer)
    learner = kit.Learner(
        {"policy": (policy, optim)},
        cfg.steps * _updates_per_step(cfg),
        optim.max_grad_norm,
        optim.max_nonfinite_steps,
        cfg.dist,
    )
    kl_ctl = kit.kl_controller(algo)
    baseline = RunningMean()
    settings = AdvantageSettings(gamma=algo.gamma, scale_by_std=algo.scale_by_std)
    loss_settings = ObjectiveSettings(
        algo.clip_eps,
        algo.clip_eps_high or None,
        algo.kl_estimator,
        algo.aggregation,
        cfg.gen.max_new_tokens,
    )
    options = rollout.RolloutOptions(
        algo.micro_batch_size,
        _updates_per_step(cfg) > 1,
        algo.reward_clip,
        algo.whiten_scores,
        algo.overlong_buffer,
        algo.overlong_penalty,
    )

    def sample_round(step: int, extra: int) -> rollout.Scored:
        """A round of the step's prompts (data-parallel: this rank's share), each repeated
        group_size times (contiguous groups), sampled and scored; each round new prompts."""
        rows = [
            row
            for row in kit.rank_share(stream.take(algo.prompts_per_step))
            for _ in range(algo.group_size)
        ]
        seed = kit.rollout_seed(cfg.run.seed, step, extra)
        return rollout.sample_and_score(policy, backend, reward, rows, cfg.gen, seed, options)

    ref_context = partial(reference, policy, frozen_ref) if algo.kl_coef > 0 else None
    # everything besides the weights that an exact resume needs back
    stateful = {**learner.stateful(), "stream": stream, "kl": kl_ctl, "baseline": baseline}
    with kit.Session(
        cfg, "grpo", learner, tokenizer, stateful, (), reward, ref_context, backend
    ) as session:
        for step in session.steps():
            step_started = time.perf_counter()
            # 1-4. prompts in groups, sampled and scored (with dynamic sampling, more rounds
            # until every group disagrees); reference and old log-probs
            rounds = 1
            if algo.dynamic_sampling:
                scored, rounds = rollout.sample_informative(
                    partial(sample_round, step),
                    algo.group_size,
                    len(kit.rank_share(list(range(algo.prompts_per_step)))),
                    algo.max_extra_rounds,
                    backend.pad_id,  # what the backend pads its rollouts with
                )
            else:
                scored = sample_round(step, 0)
            exp = rollout.experience(policy, scored, cfg.gen, options, ref_context)
            mask, kl_tokens = exp.response_mask, exp.kl_tokens()  # (B, R) each

            # 5. advantages; with KL in the reward, each token pays its own KL
            rewards_t = token_rewards(
                exp.scores, mask, kl_tokens if algo.kl_in == "reward" else None, kl_ctl.coef
            )  # (B, R)
            advantages = estimator(
                AdvantageInputs(
                    response_mask=mask,
                    scores=rewards_t.sum(dim=1),
                    token_rewards=rewards_t,
                    group_size=algo.group_size,
                    baseline=baseline,
                ),
                settings,
            ).advantages  # (B, R)

            # 6. updates: epochs x minibatches x micro-batches of the GRPO objective
            ref = exp.ref_logprobs if algo.kl_in == "loss" else None
            stats = kit.Stats()
            for minibatch in kit.minibatches(
                len(exp), algo.micro_batch_size * optim.grad_accum_steps, algo.epochs
            ):
                for index in minibatch.split(algo.micro_batch_size):
                    logprobs = token_logprobs(
                        policy,
                        exp.input_ids[index],
                        exp.attention_mask[index],
                        exp.response_start,
                        exp.temperature,
                    )  # (b, R)
                    old = (
                        exp.old_logprobs[index]
                        if exp.old_logprobs is not None
                        else logprobs.detach()
                    )
                    is_weights, mismatch_kl = rollout.sampler_gap(
                        exp, index, old, algo.rollout_is, algo.rollout_is_cap
                    )
                    loss, parts = objective(
                        ObjectiveInputs(
                            logprobs,
                            old,
                            advantages[index],
                            mask[index],
                            ref[index] if ref is not None else None,
                            kl_ctl.coef,
                            is_weights,
                        ),
                        loss_settings,
                    )
                    weight = kit.accumulation_weight(mask[index], mask[minibatch], algo.aggregation)
                    learner.backward(loss * weight)
                    stats.add(
                        weight,
                        loss=parts.policy_loss,
                        kl_loss=parts.kl_loss,
                        clip_fraction=parts.clip_fraction,
                        mismatch_kl=mismatch_kl,
                    )
                stats.step(grad_norm=learner.step()[0])

            # 7. KL controller, metrics, checkpoint
            kl = kit.batch_mean(kl_tokens.sum(dim=1))
            kl_ctl.update(kl, len(exp) * distributed.world_size())
            elapsed = time.perf_counter() - step_started
            metrics = {
                **rollout.step_metrics(exp, kl, kl_ctl.coef),
                **_group_metrics(exp, algo, rounds),
                "lr": learner.lrs()[0],
                "step_seconds": elapsed,
                "tokens_per_second": kit.batch_sum(mask.sum()) / elapsed,
                "skipped_steps": learner.guard.skipped,
                **distributed.mean_floats(stats.means()),
            }
            session.record_tokens(step, partial(rollout.token_view, exp, advantages, tokenizer))
            session.end_step(step, metrics, f"reward {metrics['reward']:+.3f}  kl {kl:.3f}")
    history = session.run.metrics()
    return session.finish(kit.online_summary(history, learner.guard.skipped), frozen_ref)


def _updates_per_step(cfg: Config) -> int:
    rollout = cfg.algo.prompts_per_step * cfg.algo.group_size // distributed.world_size()
    return cfg.algo.epochs * rollout // (cfg.algo.micro_batch_size * cfg.optim.grad_accum_steps)


def _group_metrics(exp: rollout.Experience, algo: AlgoCfg, rounds: int) -> dict[str, float]:
    """equal_groups: the share of the batch's groups that all scored alike (no signal under a
    group baseline); sampling_rounds with dynamic sampling (over every rank's groups)."""
    from rlhfkit.advantages import informative_groups

    if algo.advantage not in GROUP_ESTIMATORS:
        return {}
    informative = informative_groups(exp.scores, algo.group_size)  # (groups,)
    metrics = {"equal_groups": kit.batch_mean((~informative).float())}
    if algo.dynamic_sampling:
        metrics["sampling_rounds"] = float(rounds)
    return metrics
