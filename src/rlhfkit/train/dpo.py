"""Offline preference optimisation: DPO, IPO, ORPO, SimPO, CPO (pairs) and KTO (single
completions labelled good/bad).

Each step:
  1. render each example's sequences (chosen and rejected; or the completion and a mismatched
     completion for KTO's KL baseline) as tokens
  2. one forward pass over all of them: the policy's log-probability of every completion
  3. the loss against reference log-probs computed once, before training, by the starting model
     (so no reference model stays in memory: half the weights and a third less compute per step);
     the reference-free losses (ORPO, SimPO, CPO) skip that pass altogether
  4. the shared offline step: accumulate, clip, update; evaluate held-out; checkpoint

References: DPO (Rafailov et al. 2023), conservative DPO / label smoothing (Mitchell 2023),
IPO (Azar et al. 2023), KTO (Ethayarajh et al. 2024), ORPO (Hong et al. 2024), SimPO (Meng et
al. 2024), CPO (Xu et al. 2024). What the logged metrics mean, and what healthy curves look
like: docs/preference-metrics.md.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from rlhfkit.config import NonNegativeFloat, PositiveFloat, Problem, default
from rlhfkit.data.sequences import Encoded
from rlhfkit.train import kit
from rlhfkit.train.offline import OfflineConfig, SampledEvalCfg, no_classes_to_balance

REFERENCE_FREE = ("orpo", "simpo", "cpo")
"""Losses of the policy's log-probs alone: no reference log-probs, no reference model."""
MEAN_LOGPROB = ("ipo", "orpo", "simpo")
"""Losses that compare per-token mean log-probs; the others take the sum over the completion."""


@dataclass(frozen=True)
class PairLossCfg:
    """A loss on preference pairs and its strength (dpo, and online-dpo's base)."""

    loss: Literal["dpo", "ipo", "orpo", "simpo", "cpo"] = "dpo"
    """dpo, ipo, or the reference-free orpo, simpo, cpo (no reference model or pass)."""
    beta: PositiveFloat = 0.1
    """Strength of the pull toward the reference: higher stays closer (the KL weight). orpo:
    the odds-ratio term's weight lambda (0.1); simpo: the reward scale (2.0 to 2.5); cpo: the
    log-likelihood difference's scale (0.1)."""
    gamma: NonNegativeFloat = 0.5
    """simpo: the target margin the chosen completion's reward must win by."""
    label_smoothing: NonNegativeFloat = 0.0
    """dpo: assumed fraction of flipped preference labels (conservative DPO); 0 = off."""

    def check(self) -> Iterable[Problem]:
        if self.label_smoothing >= 0.5:
            yield Problem(
                "label_smoothing",
                self.label_smoothing,
                "must be below 0.5 (at 0.5 the labels carry no information)",
            )
        if self.label_smoothing and self.loss != "dpo":
            yield Problem(
                "label_smoothing",
                self.label_smoothing,
                f"applies to the dpo loss only, not {self.loss}; set it to 0",
            )
        if self.gamma != PairLossCfg.gamma and self.loss != "simpo":
            yield Problem(
                "gamma",
                self.gamma,
                f"is simpo's target margin and does nothing for {self.loss}; leave it out or "
                "use --algo.loss simpo",
            )


@dataclass(frozen=True)
class AlgoCfg(PairLossCfg):
    """The preference loss and its strength."""

    loss: Literal["dpo", "ipo", "orpo", "simpo", "cpo", "kto"] = "dpo"
    """dpo, ipo, or the reference-free orpo, simpo, cpo (no reference pass) on {prompt, chosen,
    rejected} pairs; kto on {prompt, completion, label} rows."""
    desirable_weight: PositiveFloat = 1.0
    """kto: weight of desirable examples (lambda_D)."""
    undesirable_weight: PositiveFloat = 1.0
    """kto: weight of undesirable examples (lambda_U)."""


@dataclass(frozen=True)
class Config(OfflineConfig):
    """Offline preference optimisation on human feedback: DPO, IPO, ORPO, SimPO, CPO or KTO."""

    algo: AlgoCfg = default(AlgoCfg)
    eval: SampledEvalCfg = default(SampledEvalCfg)

    def check(self) -> Iterable[Problem]:
        if self.algo.loss != "kto":
            yield from no_classes_to_balance(self.data, "preference pairs")


@dataclass(frozen=True)
class PairExample:
    chosen: Encoded
    rejected: Encoded
    ref_chosen: float = 0.0  # the starting model's log-prob of the chosen completion
    ref_rejected: float = 0.0
    weight: float = 1.0


@dataclass(frozen=True)
class LabeledExample:
    completion: Encoded
    mismatched: Encoded  # this prompt with another row's completion: KTO's KL baseline
    desirable: bool
    ref: float = 0.0
    ref_mismatched: float = 0.0
    weight: float = 1.0


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    result = train(cfg)
    print_summary(result.run, result.summary)


def train(cfg: Config) -> kit.TrainResult:
    import torch

    from rlhfkit.data import sequences
    from rlhfkit.losses import preference as losses
    from rlhfkit.progress import progress
    from rlhfkit.train import offline
    from rlhfkit.train.runs import seed_everything

    algo = cfg.algo
    # before any random init: the head, LoRA adapters
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    model, tokenizer, _ = kit.load_policy_and_reference(cfg.model, cfg.lora, need_reference=False)
    device = next(model.parameters()).device
    chat = sequences.uses_chat_template(tokenizer, cfg.train.chat_template)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    reference_free = algo.loss in REFERENCE_FREE

    def encode(prompt: Any, completion: str, weight: float = 1.0, ends: bool = True) -> Encoded:
        return sequences.encode(
            tokenizer, prompt, completion, chat and bool(prompt), cfg.train.max_length, weight, ends
        )

    def logprobs_of(encoded: Sequence[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's log-probability of each completion (summed, or the per-token mean for
        the losses that take it) and its token count, one forward pass. (N,) each"""
        tokens = sequences.collate(encoded, pad_id).to(device)
        logprobs, mask = sequences.completion_logprobs(model, tokens)
        summed, counts = sequences.sequence_logprob(logprobs, mask), mask.sum(dim=1)
        return (summed / counts.clamp(min=1) if algo.loss in MEAN_LOGPROB else summed), counts

    def with_reference(examples: list[Any]) -> list[Any]:
        """Fill in the starting model's log-probs, once, in eval mode, before any update."""
        model.eval()
        size, filled = cfg.train.eval_batch_size, []
        with torch.no_grad(), progress("reference log-probs", total=len(examples)) as (bar, task):
            for start in range(0, len(examples), size):
                part = examples[start : start + size]
                first, second = zip(*(_sequences(e) for e in part), strict=True)
                logps = logprobs_of([*first, *second])[0].tolist()
                filled += [
                    _with_refs(e, a, b)
                    for e, a, b in zip(part, logps[: len(part)], logps[len(part) :], strict=True)
                ]
                bar.update(task, advance=len(part))
        model.train()
        return filled

    # 1. examples, each with reference log-probs from the starting model
    if algo.loss == "kto":
        examples = _labeled_examples(cfg, "train", encode)
        eval_examples = _labeled_examples(cfg, "eval", encode)
    else:
        examples = _pair_examples(cfg, "train", encode)
        eval_examples = _pair_examples(cfg, "eval", encode)
    eval_examples = eval_examples[: cfg.train.max_eval] if cfg.train.max_eval else eval_examples
    truncated = sum(s.truncated for e in examples for s in _sequences(e))
    offline.report_truncated(truncated, 2 * len(examples), cfg.train.max_length)
    lengths = [max(len(s.ids) for s in _sequences(e)) for e in examples]
    # reference log-probs only for the examples this run trains on (max_steps may end it early);
    # the others keep NaN, which the NaN guard would stop loudly if one were ever used
    if not reference_free:
        used = sorted(offline.visited(cfg, lengths))
        examples = [_with_refs(e, math.nan, math.nan) for e in examples]
        for i, filled in zip(used, with_reference([examples[i] for i in used]), strict=True):
            examples[i] = filled
        eval_examples = with_reference(eval_examples)

    # 2-3. one forward over both sequences of every example, then the loss
    def loss_of(batch: list[Any]) -> tuple[torch.Tensor, Any]:
        first, second = zip(*(_sequences(e) for e in batch), strict=True)
        logps, counts = logprobs_of([*first, *second])  # (2B,) each
        policy_a, policy_b = logps[: len(batch)], logps[len(batch) :]
        ref_a, ref_b = (
            torch.tensor(v, device=device) for v in zip(*(_refs(e) for e in batch), strict=True)
        )
        weight = torch.tensor([e.weight for e in batch], device=device)
        if algo.loss != "kto":
            return pair_loss(algo, policy_a, policy_b, ref_a, ref_b, counts[: len(batch)], weight)
        desirable = torch.tensor([e.desirable for e in batch], device=device)
        baseline = losses.kto_kl_baseline(policy_b, ref_b)
        return losses.kto_loss(
            policy_a,
            ref_a,
            desirable,
            algo.beta,
            baseline,
            algo.desirable_weight,
            algo.undesirable_weight,
            weight,
        )

    def step_loss(batch: list[Any]) -> tuple[torch.Tensor, dict[str, float]]:
        loss, stats = loss_of(batch)
        return loss, {key: float(value) for key, value in stats._asdict().items()}

    def evaluate() -> dict[str, float]:
        return offline.held_out_means(eval_examples, cfg.train.eval_batch_size, step_loss)

    # 4. the update: accumulate, clip, guard, step; evaluate held-out; checkpoint
    answers = (cfg.eval, tokenizer, _held_out_prompts(cfg)) if cfg.eval.reward else None
    with offline.Fitting(
        cfg, "dpo", model, examples, lengths, evaluate if eval_examples else None, None, answers
    ) as fitting:
        for step, batches in fitting.steps():
            metrics = fitting.accumulate(batches, step_loss)
            grad_norm = fitting.learner.step()[0]  # clip, NaN/inf guard, optimiser step
            fitting.end_step(step, metrics, grad_norm)  # log, evaluate, checkpoint
    run = fitting.run
    kit.export(run.path / "model", model, tokenizer)
    summary = {
        "loss": algo.loss,
        "steps": fitting.total_steps,
        "seconds": fitting.seconds,
        "train_loss_last": fitting.last.get("loss"),
        **{f"{key}_before": value for key, value in fitting.eval_before.items()},
        **{f"{key}_after": value for key, value in fitting.eval_after.items()},
        "skipped_steps": fitting.learner.guard.skipped,
        "model": str(run.path / "model"),
        **fitting.answers_summary(),
    }
    run.finish(summary)
    return kit.TrainResult(run, model, tokenizer, summary)


def _held_out_prompts(cfg: Config) -> list[Any]:
    """The held-out split's prompts, for the policy to answer (``eval.reward``)."""
    from rlhfkit.data.feedback import load_labeled, load_pairs

    rows = (load_labeled if cfg.algo.loss == "kto" else load_pairs)(cfg.data, "eval")
    return [row.prompt for row in rows]


def pair_loss(
    algo: PairLossCfg,
    chosen: Any,
    rejected: Any,
    ref_chosen: Any,
    ref_rejected: Any,
    chosen_tokens: Any,
    weight: Any = None,
) -> tuple[Any, Any]:
    """``algo.loss`` on ``(B,)`` log-probs of pairs: summed, or per-token means for the losses
    in ``MEAN_LOGPROB``; the reference's are not read by the reference-free losses."""
    from rlhfkit.losses import preference as losses

    if algo.loss == "orpo":
        return losses.orpo_loss(chosen, rejected, algo.beta, weight)
    if algo.loss == "simpo":
        return losses.simpo_loss(chosen, rejected, algo.beta, algo.gamma, weight)
    if algo.loss == "cpo":
        return losses.cpo_loss(chosen, rejected, chosen_tokens, algo.beta, weight)
    if algo.loss == "ipo":
        return losses.ipo_loss(chosen, rejected, ref_chosen, ref_rejected, algo.beta, weight)
    return losses.dpo_loss(
        chosen, rejected, ref_chosen, ref_rejected, algo.beta, algo.label_smoothing, weight
    )


def _pair_examples(cfg: Config, split: str, encode: Any) -> list[PairExample]:
    from rlhfkit.data.feedback import load_pairs

    return [
        PairExample(
            encode(p.prompt, p.chosen, ends=p.chosen_finished),
            encode(p.prompt, p.rejected, ends=p.rejected_finished),
            weight=p.weight,
        )
        for p in load_pairs(cfg.data, split)
    ]


def _labeled_examples(cfg: Config, split: str, encode: Any) -> list[LabeledExample]:
    """KTO rows; each prompt is also paired with another row's completion (a fixed, seeded
    derangement) so the KL baseline compares policy and reference on unrelated text."""
    from rlhfkit.data.feedback import load_labeled

    rows = load_labeled(cfg.data, split)
    order = list(range(len(rows)))
    random.Random(cfg.run.seed).shuffle(order)
    # each row takes the completion of the next one in a shuffled cycle: never its own
    partner = {i: order[(k + 1) % len(order)] for k, i in enumerate(order)}
    return [
        LabeledExample(
            encode(row.prompt, row.completion, row.weight),
            encode(row.prompt, rows[partner[i]].completion),
            row.desirable,
            weight=row.weight,
        )
        for i, row in enumerate(rows)
    ]


def _sequences(example: PairExample | LabeledExample) -> tuple[Encoded, Encoded]:
    if isinstance(example, PairExample):
        return example.chosen, example.rejected
    return example.completion, example.mismatched


def _refs(example: PairExample | LabeledExample) -> tuple[float, float]:
    if isinstance(example, PairExample):
        return example.ref_chosen, example.ref_rejected
    return example.ref, example.ref_mismatched


def _with_refs(example: Any, first: float, second: float) -> Any:
    if isinstance(example, PairExample):
        return replace(example, ref_chosen=first, ref_rejected=second)
    return replace(example, ref=first, ref_mismatched=second)
