"""Hindsight Instruction Relabeling (HIR): learn from failures by relabelling their instruction.

Zhang, Liu, Yang, Gonzalez, Abbeel 2023, "The Wisdom of Hindsight Makes Language Models Better
Instruction Followers" (arXiv 2302.05206). A sample that fails the instruction "answer
correctly" is still a perfect example of following "answer incorrectly"; relabelled that way,
every sample is supervised data, and no reward model, value function or PPO is needed.

Each round:
  1. take prompts and ask each with the success instruction
  2. sample one completion each from the current policy (at gen.temperature, 1 by default)
  3. score with the verifier or reward; success = a verdict of 1, or score >= hir.threshold
  4. relabel: each sample's prompt gets the instruction it fulfilled (and, for the contrastive
     term, the opposite one)
  5. train offline on the relabelled pairs: cross-entropy + contrastive term - entropy bonus
     (``losses.hindsight.hir_loss``)
  6. log the success rate and the loss parts; checkpoint
The exported model records the success instruction (``conditioning.json``), so ``generate``
and evaluation ask for correct answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from rlhfkit.config import NonNegativeFloat, Problem, default
from rlhfkit.train import kit
from rlhfkit.train.hindsight.rounds import RoundsConfig, own_method


@dataclass(frozen=True)
class HIRCfg:
    """HIR's instructions, success threshold and loss weights."""

    success_instruction: str = "{prompt} Answer correctly."
    """Prompt template asking for a correct output; {prompt} marks the original prompt."""
    failure_instruction: str = "{prompt} Answer incorrectly."
    """Prompt template a failed sample is relabelled with."""
    threshold: float | None = None
    """Success when the score is >= this; unset, the reward must be a verifier scoring 0 or 1."""
    contrastive_coef: NonNegativeFloat = 1.0
    """Weight of the contrastive term between the matching and the opposite instruction."""
    entropy_coef: float = 0.01
    """Weight of the policy's token entropy, subtracted from the loss (0 = off; it keeps the
    next round's samples diverse)."""

    def check(self) -> Iterable[Problem]:
        for name in ("success_instruction", "failure_instruction"):
            if getattr(self, name).count("{prompt}") != 1:
                yield Problem(
                    name,
                    getattr(self, name),
                    "must contain {prompt} exactly once, where the original prompt goes",
                )
        if self.success_instruction == self.failure_instruction:
            yield Problem(
                "failure_instruction",
                self.failure_instruction,
                "is the success instruction; relabelling needs two different ones",
            )


@dataclass(frozen=True)
class Config(RoundsConfig):
    """Hindsight Instruction Relabeling: sample, verify, relabel the instruction, train; repeat."""

    method: str = "hir"
    """The hindsight method; a recipe may name it here."""
    reward: str = "reasoning_gym:basic_arithmetic"
    """Verifier (0/1 verdicts) or reward scoring each sample; a non-binary reward needs
    hir.threshold."""
    hir: HIRCfg = default(HIRCfg)

    def check(self) -> Iterable[Problem]:
        yield from own_method(self.method, "hir")


class Relabelled(NamedTuple):
    """One sample as training data: under the instruction it fulfilled, and the opposite one."""

    matching: Any  # sequences.Encoded
    opposite: Any  # sequences.Encoded


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    result = train(cfg)
    print_summary(result.run, result.summary)


def train(cfg: Config) -> kit.TrainResult:
    from rlhfkit.conditioning import Conditioning
    from rlhfkit.data import sequences
    from rlhfkit.data.relabelling import binary_outcomes, relabel_instructions
    from rlhfkit.losses.hindsight import hir_loss
    from rlhfkit.progress import progress
    from rlhfkit.train.hindsight.rounds import Rounds, completion_logprobs_and_entropy, mean

    hir = cfg.hir
    success = Conditioning("hir", instruction=hir.success_instruction)
    failure = Conditioning("hir", instruction=hir.failure_instruction)
    with Rounds(cfg, "hindsight-hir", success) as rounds:
        policy = rounds.policy

        def loss_fn(batch: list[Relabelled]) -> tuple[Any, dict[str, float]]:
            matching = rounds.collate([example.matching for example in batch])
            opposite = rounds.collate([example.opposite for example in batch])
            entropy = None
            if hir.entropy_coef:
                logprobs, entropy, mask = completion_logprobs_and_entropy(policy, matching)
            else:
                logprobs, mask = sequences.completion_logprobs(policy, matching)  # (B, T-1)
            opposite_logprobs = sequences.sequence_logprob(
                *sequences.completion_logprobs(policy, opposite)
            )  # (B,)
            loss, stats = hir_loss(
                logprobs, mask, opposite_logprobs, entropy, hir.contrastive_coef, hir.entropy_coef
            )
            return loss, {name: float(value) for name, value in stats._asdict().items()}

        done = rounds.resume()
        with progress("rounds", total=cfg.rounds.rounds) as (bar, task):
            bar.update(task, completed=done)
            for round_ in rounds.left(done):
                # 1. prompts, each asked with the success instruction
                rows = rounds.prompts()
                prompts = [row["prompt"] for row in rows]

                # 2. sample from the current policy
                rollout = rounds.sample([success.apply(p) for p in prompts], round_)

                # 3. score, and read success or failure off the scores
                scores = rounds.score(rows, rollout.completions)
                successes = binary_outcomes(scores, hir.threshold, cfg.reward)

                # 4. relabel each prompt with the instruction its sample fulfilled
                matching, opposite = relabel_instructions(prompts, successes, success, failure)
                examples = [
                    Relabelled(rounds.encode(m, c, ends), rounds.encode(o, c, ends))
                    for m, o, c, ends in zip(
                        matching,
                        opposite,
                        rollout.completions,
                        rollout.finished.tolist(),
                        strict=True,
                    )
                ]

                # 5. train offline on the relabelled samples
                losses = rounds.optimise(examples, loss_fn, round_)

                # 6. log, checkpoint
                metrics = {
                    "success_rate": mean([float(ok) for ok in successes]),
                    "reward": mean(scores),
                    "length": float(rollout.response_mask.sum(dim=1).float().mean()),
                    **losses,
                }
                rounds.end_round(round_, metrics)
                bar.update(
                    task,
                    advance=1,
                    info=f"success {metrics['success_rate']:.2f}  loss {metrics['loss']:.3f}",
                )
        history = [row for row in rounds.run.metrics() if "success_rate" in row]
        return rounds.finish(
            success,
            {
                "success_rate_first": history[0]["success_rate"] if history else None,
                "success_rate_last": history[-1]["success_rate"] if history else None,
            },
        )
