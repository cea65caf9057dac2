"""Supervised fine-tuning on demonstrations: learn to write the completion given the prompt.

Each step:
  1. render prompt + completion + EOS as tokens (chat template when it applies)
  2. log-probs of the completion tokens under the model (the prompt carries no loss)
  3. masked negative log-likelihood, averaged over completion tokens
  4. the shared offline step: accumulate, clip, update; evaluate held-out NLL; checkpoint

Data: ``{prompt, completion}`` rows or chat ``{messages}`` rows (the last, assistant, message is
the completion), from a file or a saved Hugging Face dataset; see ``rlhfkit.data.feedback``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from rlhfkit.config import Problem, default
from rlhfkit.train import kit
from rlhfkit.train.offline import OfflineConfig, SampledEvalCfg, no_classes_to_balance


@dataclass(frozen=True)
class Config(OfflineConfig):
    """Supervised fine-tuning on demonstrations ({prompt, completion} or chat messages)."""

    eval: SampledEvalCfg = default(SampledEvalCfg)

    def check(self) -> Iterable[Problem]:
        yield from no_classes_to_balance(self.data, "demonstrations")


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    result = train(cfg)
    print_summary(result.run, result.summary)


def train(cfg: Config) -> kit.TrainResult:
    import torch

    from rlhfkit.data import sequences
    from rlhfkit.data.feedback import load_demonstrations
    from rlhfkit.losses.preference import sft_loss
    from rlhfkit.train import offline
    from rlhfkit.train.runs import seed_everything

    # before any random init: the head, LoRA adapters
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    model, tokenizer, _ = kit.load_policy_and_reference(cfg.model, cfg.lora, need_reference=False)
    device = next(model.parameters()).device
    chat = sequences.uses_chat_template(tokenizer, cfg.train.chat_template)

    def encode_all(rows: list) -> list[sequences.Encoded]:
        return [
            sequences.encode(
                tokenizer,
                row.prompt,
                row.completion,
                chat and bool(row.prompt),
                cfg.train.max_length,
                row.weight,
                ends=row.finished,
            )
            for row in rows
        ]

    examples = encode_all(load_demonstrations(cfg.data, "train"))
    offline.report_truncated(
        sum(e.truncated for e in examples), len(examples), cfg.train.max_length
    )
    held_out = load_demonstrations(cfg.data, "eval")
    eval_examples = encode_all(_capped(held_out, cfg.train.max_eval))
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )

    def nll(batch: list[sequences.Encoded]) -> tuple[torch.Tensor, dict[str, float]]:
        tokens = sequences.collate(batch, pad_id).to(device)
        logprobs, mask = sequences.completion_logprobs(model, tokens)  # (B, T-1) each
        weight = torch.tensor([e.weight for e in batch], device=device)
        loss, stats = sft_loss(logprobs, mask, weight)
        return loss, {"tokens": float(stats.tokens)}

    def evaluate() -> dict[str, float]:
        if not eval_examples:
            return {}
        total_nll, total_tokens = 0.0, 0
        size = cfg.train.eval_batch_size
        for start in range(0, len(eval_examples), size):
            tokens = sequences.collate(eval_examples[start : start + size], pad_id).to(device)
            logprobs, mask = sequences.completion_logprobs(model, tokens)
            total_nll -= float(logprobs[mask].sum())
            total_tokens += int(mask.sum())
        mean = total_nll / max(total_tokens, 1)
        return {"nll": mean, "perplexity": math.exp(min(mean, 50.0))}

    def completion_tokens(example: sequences.Encoded) -> float:
        """What an example weighs in sft_loss's token-level mean: its completion's tokens (the
        first token predicts nothing) times its weight."""
        return example.weight * (len(example.ids) - max(example.completion_start, 1))

    lengths = [len(e.ids) for e in examples]
    answers = (cfg.eval, tokenizer, [row.prompt for row in held_out]) if cfg.eval.reward else None
    with offline.Fitting(
        cfg, "sft", model, examples, lengths, evaluate, completion_tokens, answers
    ) as fitting:
        for step, batches in fitting.steps():
            metrics = fitting.accumulate(batches, nll)
            grad_norm = fitting.learner.step()[0]  # clip, NaN/inf guard, optimiser step
            fitting.end_step(step, metrics, grad_norm)  # log, evaluate, checkpoint
    run = fitting.run
    kit.export(run.path / "model", model, tokenizer)
    summary = {
        "steps": fitting.total_steps,
        "seconds": fitting.seconds,
        "train_loss_last": fitting.last.get("loss"),
        "eval_nll_before": fitting.eval_before.get("eval/nll"),
        "eval_nll_after": fitting.eval_after.get("eval/nll"),
        "skipped_steps": fitting.learner.guard.skipped,
        "model": str(run.path / "model"),
        **fitting.answers_summary(),
    }
    run.finish(summary)
    return kit.TrainResult(run, model, tokenizer, summary)


def _capped(rows: list, limit: int) -> list:
    return rows[:limit] if limit else rows
