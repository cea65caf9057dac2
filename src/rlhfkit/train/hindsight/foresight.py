"""Hindsight + foresight: goal relabelling and a value-baselined policy gradient in one objective.

Goal relabelling (``relabel.py``) learns from what each sample reached, in hindsight, but it
never learns how far a sample fell from the goal it was asked for. A policy gradient does, in
foresight: each sample's return R scores it against its commanded goal, and a learned value
head V (``critic.ValueModel``, as in PPO) predicts that return from the prompt and the tokens so
far, so the advantage A = R - V says which outputs did better than expected. One objective
(``losses.hindsight.hindsight_foresight_loss``) weighs the two:

    J = J_hindsight + foresight.coef * J_foresight

foresight.coef = 0 is goal relabelling alone; a large value is REINFORCE with a learned baseline.

Each round:
  1. take prompts and draw a commanded goal for each, uniformly over the goals
  2. sample one completion each from the current policy, asked for its commanded goal
  3. score with the reward, read off the goal each sample reached (steps 1-3 as ``relabel``),
     and its return R = -|reached - commanded| / (goal range): 0 on a hit, -1 at the far end
  4. the value head's estimates at sampling time (the reference of its clipped loss)
  5. relabel: each prompt also asks for the goal its sample reached
  6. train offline: J on the policy, the clipped value loss on the value head
  7. log the goal hit rate, return and loss parts; checkpoint (policy and value head)
The exported model records the desired goal, as ``relabel`` does.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from rlhfkit.config import NonNegativeFloat, PositiveFloat, Problem, default
from rlhfkit.train import kit
from rlhfkit.train.hindsight.relabel import GoalCfg, goal_problems, sample_toward_goals
from rlhfkit.train.hindsight.rounds import RoundsConfig, own_method


@dataclass(frozen=True)
class ForesightCfg:
    """The foresight term's weight and the value head that supplies its baseline."""

    coef: NonNegativeFloat = 1.0
    """lambda in J = J_hindsight + lambda * J_foresight (0 = goal relabelling alone)."""
    critic_lr: NonNegativeFloat = 0.0
    """Value head's learning rate (0 = optim.lr); it starts from the policy's weights."""
    value_clip: PositiveFloat = 0.2
    """Clip range of the value loss around the estimates at sampling time."""


@dataclass(frozen=True)
class Config(RoundsConfig):
    """Hindsight + foresight: goal relabelling plus a value-baselined policy gradient."""

    method: str = "hindsight-foresight"
    """The hindsight method; a recipe may name it here."""
    goal: GoalCfg = default(GoalCfg)
    foresight: ForesightCfg = default(ForesightCfg)

    def check(self) -> Iterable[Problem]:
        yield from own_method(self.method, "hindsight-foresight")
        yield from goal_problems(self.goal.kind, self.reward)


class Example(NamedTuple):
    """One sample of a round: as sampled (for the foresight term) and relabelled (hindsight)."""

    relabelled: Any  # sequences.Encoded: asked for the goal it reached
    input_ids: Any  # (P+R,) as sampled: prompt asking for the commanded goal, then the output
    attention_mask: Any  # (P+R,)
    response_mask: Any  # (R,)
    response_start: int  # P, the same for every sample of a round
    return_: Any  # () the return against the commanded goal
    old_values: Any  # (R,) the value head's estimates at sampling time


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    result = train(cfg)
    print_summary(result.run, result.summary)


def train(cfg: Config) -> kit.TrainResult:
    from dataclasses import replace
    from functools import partial

    import torch

    from rlhfkit.data import sequences
    from rlhfkit.losses.hindsight import hindsight_foresight_loss
    from rlhfkit.losses.policy import value_loss
    from rlhfkit.models import token_logprobs
    from rlhfkit.models.critic import explained_variance, load_value_model
    from rlhfkit.progress import progress
    from rlhfkit.train.hindsight.rounds import Rounds, mean

    space = cfg.goal.space(cfg.reward)
    desired = cfg.goal.desired_goal(space)
    with Rounds(
        cfg, "hindsight-foresight", space.conditioning(desired, "hindsight-foresight")
    ) as rounds:
        policy = rounds.policy
        critic = load_value_model(cfg.model, rounds.tokenizer, lora=cfg.lora)
        rounds.add_critic(critic, replace(cfg.optim, lr=cfg.foresight.critic_lr or cfg.optim.lr))

        def loss_fn(batch: list[Example]) -> tuple[Any, dict[str, float]]:
            relabelled_logprobs, relabelled_mask = sequences.completion_logprobs(
                policy, rounds.collate([e.relabelled for e in batch])
            )  # (b, T-1)
            b_ids, b_attention = (
                torch.stack([getattr(e, name) for e in batch])
                for name in ("input_ids", "attention_mask")
            )  # (b, P+R)
            b_mask = torch.stack([e.response_mask for e in batch])  # (b, R)
            b_returns = torch.stack([e.return_ for e in batch])  # (b,)
            start = batch[0].response_start
            logprobs = token_logprobs(policy, b_ids, b_attention, start)  # (b, R)
            values = critic(b_ids, b_attention, start)  # (b, R)
            loss, stats = hindsight_foresight_loss(
                relabelled_logprobs,
                relabelled_mask,
                logprobs,
                b_mask,
                b_returns,
                values,
                cfg.foresight.coef,
            )
            critic_loss, _ = value_loss(
                values,
                torch.stack([e.old_values for e in batch]),
                b_returns[:, None].expand_as(values),
                b_mask,
                cfg.foresight.value_clip,
            )
            parts = {name: float(value) for name, value in stats._asdict().items()}
            return loss + critic_loss, {**parts, "value_loss": float(critic_loss.detach())}

        done = rounds.resume()
        with progress("rounds", total=cfg.rounds.rounds) as (bar, task):
            bar.update(task, completed=done)
            for round_ in rounds.left(done):
                # 1-3. prompts with goals drawn uniformly, samples asked for them, goals reached
                sampled = sample_toward_goals(rounds, space, round_)
                rollout = sampled.rollout
                input_ids, attention_mask = rollout.input_ids, rollout.attention_mask  # (B, P+R)
                mask = rollout.response_mask  # (B, R)
                start = rollout.prompt_ids.shape[1]
                # the return against the goal commanded: 0 on a hit, -1 at the opposite end
                returns = -torch.tensor(sampled.distance(space), device=rounds.device)  # (B,)

                # 4. the value head's estimates at sampling time
                with torch.no_grad():
                    old_values = kit.in_chunks(
                        partial(critic, response_start=start),
                        input_ids,
                        attention_mask,
                        cfg.rounds.batch_size,
                    )  # (B, R)

                # 5. relabel: each prompt also asks for the goal its sample reached
                ends = rollout.finished.tolist()
                examples = [
                    Example(
                        rounds.encode(
                            space.ask(sampled.rows[i]["prompt"], sampled.reached[i]),
                            rollout.completions[i],
                            ends[i],
                        ),
                        input_ids[i],
                        attention_mask[i],
                        mask[i],
                        start,
                        returns[i],
                        old_values[i],
                    )
                    for i in range(len(rollout))
                ]

                # 6. train offline: J on the policy, the value loss on the value head
                losses = rounds.optimise(examples, loss_fn, round_)

                # 7. log, checkpoint
                returns_t = returns[:, None].expand_as(old_values)  # (B, R) no discount
                metrics = {
                    "goal_hit_rate": sampled.hit_rate(),
                    "return": float(returns.mean()),
                    "explained_variance": explained_variance(old_values, returns_t, mask),
                    "reward": mean(sampled.scores),
                    "reward_asked_desired": sampled.reward_when_asked(desired),
                    "length": float(mask.sum(dim=1).float().mean()),
                    **losses,
                }
                rounds.end_round(round_, metrics)
                bar.update(
                    task,
                    advance=1,
                    info=f"goal hit {metrics['goal_hit_rate']:.2f}  "
                    f"return {metrics['return']:+.3f}",
                )
        history = [row for row in rounds.run.metrics() if "goal_hit_rate" in row]
        return rounds.finish(
            space.conditioning(desired, "hindsight-foresight"),
            {
                "goal_hit_rate_first": history[0]["goal_hit_rate"] if history else None,
                "goal_hit_rate_last": history[-1]["goal_hit_rate"] if history else None,
            },
        )
