"""Goal relabelling: every sample is a success for the goal it actually reached.

Hindsight experience replay (Andrychowicz et al. 2017, arXiv 1707.01495) for language models.
The policy learns a goal-conditioned task ("[positive] The movie was ...",
"[length 12 words] ..."): a sample asked for one goal that reached another is rewritten as an
answer to the goal it reached, measured from the reward's score, and trained on as a success.
No sample is wasted, and no reward model gradient is needed: the reward only measures. Asked
for the top goal afterwards, the model writes what reached it (``data/relabelling.py`` lists
the goal kinds and which rewards measure them).

Each round:
  1. take prompts and draw a commanded goal for each, uniformly over the goals
  2. sample one completion each from the current policy, asked for its commanded goal
  3. score with the reward and read off the goal each sample reached
     (steps 1-3: ``sample_toward_goals``, shared with ``hindsight-foresight``)
  4. relabel: each prompt asks for the goal its sample reached
  5. train offline: maximum likelihood of the relabelled samples (``losses.preference.sft_loss``)
  6. log the goal hit rate (reached == commanded), the reward of samples asked for the desired
     goal, and the loss; checkpoint
The exported model records the desired goal (``conditioning.json``; the top level or length
unless ``goal.desired`` says otherwise), so ``generate`` and evaluation ask for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from rlhfkit.config import NonNegativeInt, PositiveInt, Problem, default
from rlhfkit.train import kit
from rlhfkit.train.hindsight.rounds import RoundsConfig, own_method


@dataclass(frozen=True)
class GoalCfg:
    """The goals a prompt can ask for, and the one the trained model is asked for."""

    kind: Literal["sentiment", "length", "number"] = "sentiment"
    """sentiment: level k of goal.levels, measured by reward sentiment or vader; length: a word
    count up to goal.max_words, measured by reward length; number: a whole number up to
    goal.max_number, measured by reward number (the first number written in digits)."""
    levels: PositiveInt = 4
    """sentiment: how many levels the -1..1 score is cut into (equal-width bins)."""
    names: tuple[str, ...] = ()
    """sentiment: each level in words, most negative first; empty: "very negative", "negative",
    "positive", "very positive" for 4 levels (2, 3, 5 levels likewise; others "sentiment level
    k of K"). Words the model already reads give relabelling a head start over codes."""
    max_words: PositiveInt = 16
    """length: the longest goal; longer samples reach "max_words or more words"."""
    max_number: NonNegativeInt = 9
    """number: the largest goal; a sample with a larger number reaches "a number above it"."""
    template: str = "[{goal}] {prompt}"
    """How a prompt asks for a goal: {goal} is its description, {prompt} the original prompt."""
    desired: NonNegativeInt = 0
    """The goal the exported model is asked for: a level, a word count or a number (0 = the top
    one, so a number goal cannot desire the number 0)."""

    def check(self) -> Iterable[Problem]:
        for key in ("{goal}", "{prompt}"):
            if self.template.count(key) != 1:
                yield Problem(
                    "template",
                    self.template,
                    f"must contain {key} exactly once, as in '[{{goal}}] {{prompt}}'",
                )
        if self.kind == "sentiment" and self.levels < 2:
            yield Problem("levels", self.levels, "one level is no goal to choose; use 2 or more")
        if self.kind == "sentiment" and self.names and len(self.names) != self.levels:
            yield Problem(
                "names",
                list(self.names),
                f"names {len(self.names)} levels but "
                f"goal.levels = {self.levels}; give one name per level, most negative "
                "first",
            )
        from rlhfkit.data.relabelling import goal_range

        top = goal_range(self.kind, self.levels, self.max_words, self.max_number)[-1]
        if self.desired > top:
            yield Problem(
                "desired",
                self.desired,
                f"is beyond the top goal {top}; use 1..{top} (0 = the top one)",
            )

    def space(self, reward: str) -> Any:
        """The ``relabelling.GoalSpace``; a ConfigError when ``reward`` cannot measure the goals."""
        from rlhfkit.data.relabelling import GoalSpace

        return GoalSpace.for_reward(
            self.kind,
            reward,
            levels=self.levels,
            max_words=self.max_words,
            max_number=self.max_number,
            template=self.template,
            names=self.names,
        )

    def desired_goal(self, space: Any) -> int:
        return self.desired or space.top


def goal_problems(kind: str, reward: str) -> Iterable[Problem]:
    """Pre-flight: the reward must measure the goal kind."""
    from rlhfkit.data.relabelling import measure_problem

    problem = measure_problem(kind, reward)
    if problem:
        yield Problem("goal.kind", kind, problem)


class GoalSamples(NamedTuple):
    """A round's samples, each asked for one goal, and the goal each reached."""

    rows: list[dict[str, Any]]  # the prompt rows, unconditioned
    commanded: list[int]  # the goal each prompt asked for
    rollout: Any  # batch.Rollout of the goal-conditioned prompts
    scores: list[float]  # the reward's score of each completion
    reached: list[int]  # the goal each completion reached

    def hit_rate(self) -> float:
        return sum(r == c for r, c in zip(self.reached, self.commanded, strict=True)) / len(
            self.rows
        )

    def reward_when_asked(self, goal: int) -> float:
        """Mean score of the samples asked for ``goal`` (NaN when none was this round)."""
        scores = [s for s, c in zip(self.scores, self.commanded, strict=True) if c == goal]
        return sum(scores) / len(scores) if scores else float("nan")

    def distance(self, space: Any) -> list[float]:
        """How far each sample fell from its commanded goal, 0 .. 1."""
        return [space.distance(r, c) for r, c in zip(self.reached, self.commanded, strict=True)]


def sample_toward_goals(rounds: Any, space: Any, round_: int) -> GoalSamples:
    """Steps 1-3 of a goal round, shared by ``relabel`` and ``hindsight-foresight``."""
    import random

    # 1. prompts, each with a commanded goal drawn uniformly (data-parallel: the round's goals
    # are drawn for every prompt, and each rank takes those of its share)
    rows = rounds.prompts()
    draw = random.Random(rounds.cfg.run.seed * 1_000_003 + round_)
    commanded = kit.rank_share(
        [draw.choice(space.goals) for _ in range(rounds.cfg.rounds.prompts_per_round)]
    )
    # 2. sample from the current policy, asked for the commanded goals
    rollout = rounds.sample(
        [space.ask(row["prompt"], goal) for row, goal in zip(rows, commanded, strict=True)], round_
    )
    # 3. score, and the goal each sample reached
    scores = rounds.score(rows, rollout.completions)
    return GoalSamples(rows, commanded, rollout, scores, [space.reached(s) for s in scores])


@dataclass(frozen=True)
class Config(RoundsConfig):
    """Goal relabelling: sample toward random goals, relabel with the goal reached, train; repeat."""

    method: str = "relabel"
    """The hindsight method; a recipe may name it here."""
    goal: GoalCfg = default(GoalCfg)

    def check(self) -> Iterable[Problem]:
        yield from own_method(self.method, "relabel")
        yield from goal_problems(self.goal.kind, self.reward)


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    result = train(cfg)
    print_summary(result.run, result.summary)


def train(cfg: Config) -> kit.TrainResult:
    from rlhfkit.data import sequences
    from rlhfkit.losses.preference import sft_loss
    from rlhfkit.progress import progress
    from rlhfkit.train.hindsight.rounds import Rounds, mean

    space = cfg.goal.space(cfg.reward)
    desired = cfg.goal.desired_goal(space)
    with Rounds(cfg, "hindsight-relabel", space.conditioning(desired, "relabel")) as rounds:

        def loss_fn(batch: list[sequences.Encoded]) -> tuple[Any, dict[str, float]]:
            logprobs, mask = sequences.completion_logprobs(rounds.policy, rounds.collate(batch))
            loss, _ = sft_loss(logprobs, mask)
            return loss, {}

        done = rounds.resume()
        with progress("rounds", total=cfg.rounds.rounds) as (bar, task):
            bar.update(task, completed=done)
            for round_ in rounds.left(done):
                # 1-3. prompts with goals drawn uniformly, samples asked for them, goals reached
                sampled = sample_toward_goals(rounds, space, round_)

                # 4. relabel: ask each prompt for the goal its sample reached
                examples = [
                    rounds.encode(space.ask(row["prompt"], goal), completion, ends)
                    for row, goal, completion, ends in zip(
                        sampled.rows,
                        sampled.reached,
                        sampled.rollout.completions,
                        sampled.rollout.finished.tolist(),
                        strict=True,
                    )
                ]

                # 5. train offline: maximum likelihood of the relabelled samples
                losses = rounds.optimise(examples, loss_fn, round_)

                # 6. log, checkpoint
                metrics = {
                    "goal_hit_rate": sampled.hit_rate(),
                    "goal_distance": mean(sampled.distance(space)),
                    "reward": mean(sampled.scores),
                    "reward_asked_desired": sampled.reward_when_asked(desired),
                    "length": float(sampled.rollout.response_mask.sum(dim=1).float().mean()),
                    **losses,
                }
                rounds.end_round(round_, metrics)
                bar.update(
                    task,
                    advance=1,
                    info=f"goal hit {metrics['goal_hit_rate']:.2f}  loss {metrics['loss']:.3f}",
                )
        history = [row for row in rounds.run.metrics() if "goal_hit_rate" in row]
        return rounds.finish(
            space.conditioning(desired, "relabel"),
            {
                "goal_hit_rate_first": history[0]["goal_hit_rate"] if history else None,
                "goal_hit_rate_last": history[-1]["goal_hit_rate"] if history else None,
            },
        )
