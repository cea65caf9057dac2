"""Chain of Hindsight: learn from good and bad outputs by writing each after its feedback.

Chain of Hindsight (Liu, Sferrazza & Abbeel 2023, arXiv 2302.02676) needs no reward model and no
RL. Feedback becomes text: "A good response: <chosen>", "A bad response: <rejected>", in one
sequence in both orders, and the model is fine-tuned on it with cross-entropy on the output
tokens only. It learns what the phrases ask for; afterwards the positive phrase asks for a good
output (the exported model records it in ``conditioning.json``, so ``generate``, evaluation and
``demo`` say it for you).

Each step:
  1. feedback -> chains: pairs (a pair file, or human ratings paired by ``data.min_gap``),
     ratings (good at least ``coh.good_min``, bad at most ``coh.bad_max``) or critiques (the
     critique text is the phrase); chains of two outputs in both orders and single outputs
  2. chains -> tokens, one segment per output: phrase and prompt (no loss), output + EOS (loss);
     see ``rlhfkit.data.chain_of_hindsight`` for the rendering
  3. hide a random ``coh.mask_fraction`` of past tokens from attention, so the model cannot just
     copy the other output of a chain (the paper masks a few percent)
  4. L = NLL(output tokens | chain) + sft_weight * NLL(good output | plain prompt)
  5. the shared offline step: accumulate, clip, update; evaluate held-out NLL and whether the
     phrases separate good from bad outputs; checkpoint
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from rlhfkit import distributed
from rlhfkit.config import Fraction, NonNegativeFloat, Problem, default
from rlhfkit.data.chain_of_hindsight import NEGATIVE, POSITIVE
from rlhfkit.train import kit
from rlhfkit.train.offline import OfflineConfig, no_classes_to_balance

if TYPE_CHECKING:
    from rlhfkit.data.chain_of_hindsight import Chain, CohSequence, Judged
    from rlhfkit.data.sequences import Encoded


@dataclass(frozen=True)
class CohCfg:
    """Chain of Hindsight: the feedback read, the phrases written before outputs, the forms."""

    data: Literal["pairs", "ratings", "critiques"] = "pairs"
    """Feedback the sequences are made from: pairs (a pair file, or ratings paired by
    data.min_gap), ratings (each text good or bad by coh.good_min / coh.bad_max) or critiques
    ({prompt, completion, critique} rows, as rlhfkit label export --as critiques writes)."""
    phrases: Literal["lists", "critique"] = "lists"
    """The words before each output: one of coh.positive / coh.negative (picked at random, seeded),
    or each row's own critique text (needs coh.data critiques)."""
    positive: tuple[str, ...] = POSITIVE
    """Phrasings before a good output; the first is what the trained model is asked with."""
    negative: tuple[str, ...] = NEGATIVE
    """Phrasings before a bad output."""
    chains: bool = True
    """Sequences holding two outputs of a prompt, good then bad and bad then good."""
    singles: bool = True
    """Sequences holding one output after its phrase (the form sampling uses)."""
    good_min: float = 0.5
    """coh.data ratings: a text rated at least this is a good output."""
    bad_max: float = -0.5
    """coh.data ratings: a text rated at most this is a bad output (between the two: left out)."""
    critique_field: str = "critique"
    """coh.data critiques: the column holding the critique text."""
    mask_fraction: Fraction = 0.0
    """Share of past tokens hidden from attention during training, at random (0 = off; the paper
    used a few percent), so the model learns from the feedback instead of copying."""
    sft_weight: NonNegativeFloat = 0.0
    """Weight of an SFT term on plain prompt -> good output (no phrase), a regulariser that keeps
    unconditioned behaviour close to the good outputs (0 = off)."""

    def check(self) -> Iterable[Problem]:
        if self.phrases == "critique" and self.data != "critiques":
            yield Problem(
                "phrases",
                self.phrases,
                "uses each row's critique text, but coh.data "
                f"= {self.data!r} has none; set --coh.data critiques or --coh.phrases "
                "lists",
            )
        if self.data == "critiques" and self.phrases != "critique":
            yield Problem(
                "data",
                self.data,
                "critiques say neither good nor bad; their text is "
                "the phrase: set --coh.phrases critique",
            )
        for name in ("positive", "negative"):
            phrases = getattr(self, name)
            if not phrases or not all(p.strip() for p in phrases):
                yield Problem(name, phrases, "give at least one phrase, none of them empty")
        if not (self.chains or self.singles):
            yield Problem(
                "chains", self.chains, "and coh.singles are both off: no sequences; turn one on"
            )
        if self.mask_fraction >= 1:
            yield Problem(
                "mask_fraction",
                self.mask_fraction,
                "would hide every past token; give a value below 1 (a few percent)",
            )
        if self.good_min < self.bad_max:
            yield Problem(
                "good_min",
                self.good_min,
                f"is below coh.bad_max = {self.bad_max:g}; a text would be both good and bad",
            )


@dataclass(frozen=True)
class Config(OfflineConfig):
    """Chain of Hindsight: fine-tune on outputs written after their feedback (arXiv 2302.02676)."""

    method: str = "coh"
    """The hindsight method; a recipe may name it here."""
    coh: CohCfg = default(CohCfg)

    def check(self) -> Iterable[Problem]:
        if self.method != "coh":
            yield Problem(
                "method",
                self.method,
                "this is the coh config; run rlhfkit hindsight "
                f"--method {self.method} for that method",
            )
        if self.coh.data != "ratings":
            yield from no_classes_to_balance(self.data, self.coh.data)


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    result = train(cfg)
    print_summary(result.run, result.summary)


def train(cfg: Config) -> kit.TrainResult:
    import torch

    from rlhfkit.data import chain_of_hindsight as coh
    from rlhfkit.data import sequences
    from rlhfkit.losses.preference import sft_loss
    from rlhfkit.train import offline
    from rlhfkit.train.runs import seed_everything

    seed_everything(cfg.run.seed, cfg.run.deterministic)  # before any random init: LoRA adapters
    model, tokenizer, _ = kit.load_policy_and_reference(cfg.model, cfg.lora, need_reference=False)
    device = next(model.parameters()).device
    chat = sequences.uses_chat_template(tokenizer, cfg.train.chat_template)
    pad_id = _pad_id(tokenizer)
    phrases = coh.Phrases(cfg.coh.positive, cfg.coh.negative, cfg.coh.phrases == "critique")

    # 1-2. feedback -> chains -> token sequences (+ the plain good output for the SFT term)
    def encode_all(chains: list[coh.Chain], seed: int) -> list[Example]:
        rng = random.Random(seed)
        examples = []
        for chain in chains:
            good = next((j for j in chain if j.good), None)
            plain = None
            if cfg.coh.sft_weight and good is not None:
                plain = sequences.encode(
                    tokenizer,
                    good.prompt,
                    good.output,
                    chat and bool(good.prompt),
                    cfg.train.max_length,
                    good.weight,
                )
            examples.append(
                Example(
                    coh.encode_chain(tokenizer, chain, phrases, rng, chat, cfg.train.max_length),
                    plain,
                )
            )
        return examples

    examples = encode_all(load_chains(cfg, "train"), cfg.run.seed)
    offline.report_truncated(
        sum(e.sequence.truncated for e in examples), len(examples), cfg.train.max_length
    )
    eval_chains = load_chains(cfg, "eval", every_form=True)  # contrasts whatever the forms
    contrasts = _capped(
        [(c[0], c[1]) for c in eval_chains if len(c) == 2 and c[0].good and c[1].good is False],
        cfg.train.max_eval,
    )
    eval_chains = [c for c in eval_chains if (cfg.coh.chains if len(c) == 2 else cfg.coh.singles)]
    eval_examples = encode_all(_capped(eval_chains, cfg.train.max_eval), cfg.run.seed + 1)

    # 3-4. hide random past tokens; NLL of the outputs, plus the SFT regulariser
    def loss_fn(batch: list[Example]) -> tuple[torch.Tensor, dict[str, float]]:
        tokens = coh.collate([e.sequence for e in batch], pad_id).to(device)
        hidden = coh.sample_hidden(tokens.attention_mask, cfg.coh.mask_fraction)  # (B, T)
        logprobs, mask = coh.output_logprobs(model, tokens, hidden)  # (B, T-1) each
        weight = torch.tensor([e.sequence.weight for e in batch], device=device)
        loss, stats = sft_loss(logprobs, mask, weight)
        metrics = {
            "coh_nll": float(stats.nll),
            "tokens": float(stats.tokens),
            "hidden_tokens": float(hidden.sum()),
        }
        plain = [e.plain for e in batch if e.plain is not None]
        if plain:
            plain_tokens = sequences.collate(plain, pad_id).to(device)
            plain_logprobs, plain_mask = sequences.completion_logprobs(model, plain_tokens)
            plain_weight = torch.tensor([p.weight for p in plain], device=device)
            sft, sft_stats = sft_loss(plain_logprobs, plain_mask, plain_weight)
            loss = loss + cfg.coh.sft_weight * sft
            metrics["sft_nll"] = float(sft_stats.nll)
        return loss, metrics

    # 5. held out: NLL of the outputs, and whether the phrases tell good from bad
    def evaluate() -> dict[str, float]:
        metrics: dict[str, float] = {}
        if eval_examples:
            total_nll, total_tokens = 0.0, 0
            for start in range(0, len(eval_examples), cfg.train.eval_batch_size):
                chunk = eval_examples[start : start + cfg.train.eval_batch_size]
                logprobs, mask = coh.output_logprobs(
                    model, coh.collate([e.sequence for e in chunk], pad_id).to(device)
                )
                total_nll -= float(logprobs[mask].sum())
                total_tokens += int(mask.sum())
            metrics["nll"] = total_nll / max(total_tokens, 1)
        if contrasts:
            margins = phrase_margins(
                model,
                tokenizer,
                contrasts,
                cfg.coh.positive[0],
                cfg.coh.negative[0],
                chat,
                cfg.train.max_length,
                cfg.train.eval_batch_size,
            )
            metrics["contrast_accuracy"] = sum(m > 0 for m in margins) / len(margins)
            metrics["contrast_margin"] = sum(margins) / len(margins)
        return metrics

    with offline.Fitting(
        cfg, "hindsight-coh", model, examples, [len(e.sequence.ids) for e in examples], evaluate
    ) as fitting:
        for step, batches in fitting.steps():
            metrics = fitting.accumulate(batches, loss_fn)
            grad_norm = fitting.learner.step()[0]  # clip, NaN/inf guard, optimiser step
            fitting.end_step(step, metrics, grad_norm)  # log, evaluate, checkpoint
    run, model_dir = fitting.run, fitting.run.path / "model"
    kit.export(model_dir, model, tokenizer)
    conditioning = coh.phrase_conditioning(cfg.coh.positive[0], chat)
    if distributed.is_main():
        conditioning.save(model_dir)
    summary = {
        "steps": fitting.total_steps,
        "seconds": fitting.seconds,
        "sequences": len(examples),
        "train_loss_last": fitting.last.get("loss"),
        **{
            f"{key.removeprefix('eval/')}_before": value
            for key, value in fitting.eval_before.items()
        },
        **{
            f"{key.removeprefix('eval/')}_after": value for key, value in fitting.eval_after.items()
        },
        "skipped_steps": fitting.learner.guard.skipped,
        "model": str(model_dir),
        "asked_with": cfg.coh.positive[0],
    }
    run.finish(summary)
    return kit.TrainResult(run, model, tokenizer, summary)


@dataclass(frozen=True)
class Example:
    """One training sequence and, for the SFT term, its good output after the plain prompt."""

    sequence: CohSequence
    plain: Encoded | None


def load_chains(cfg: Config, split: str, every_form: bool = False) -> list[Chain]:
    """The chains of one split, from the feedback ``coh.data`` names (step 1): the forms
    ``coh.chains`` / ``coh.singles`` ask for, or with ``every_form`` both."""
    from rlhfkit.data import chain_of_hindsight as coh
    from rlhfkit.data.feedback import load_pairs, load_ratings

    forms = {"chains": every_form or cfg.coh.chains, "singles": every_form or cfg.coh.singles}
    if cfg.coh.data == "pairs":
        seed = cfg.run.seed if split == "train" else 0  # the same eval pairs on every run
        return coh.chains_from_pairs(load_pairs(cfg.data, split, seed), **forms)
    if cfg.coh.data == "ratings":
        judged = coh.judged_from_ratings(
            load_ratings(cfg.data, split), cfg.coh.good_min, cfg.coh.bad_max
        )
    else:
        judged = coh.load_critiques(cfg.data, split, cfg.coh.critique_field)
    return coh.chains_from_judged(judged, random.Random(cfg.run.seed), **forms)


def phrase_margins(
    model: Any,
    tokenizer: Any,
    contrasts: Sequence[tuple[Judged, Judged]],
    positive: str,
    negative: str,
    chat: bool,
    max_length: int,
    batch_size: int,
) -> list[float]:
    """For each (good, bad) output pair, r(good) - r(bad) with r(y) = log p(y | positive phrase)
    - log p(y | negative phrase): above 0 when the phrases rank the pair as people did.

    The difference of two conditionals cancels how likely an output is anyway (its length, its
    words), leaving what the feedback phrase adds: the model's implicit preference.
    """
    import torch

    from rlhfkit.data import chain_of_hindsight as coh

    asked = coh.Phrases((positive,), (negative,))
    rng = random.Random(0)  # one phrase each: nothing is drawn
    sequences = [
        coh.encode_chain(
            tokenizer, (coh.Judged(j.prompt, j.output, good),), asked, rng, chat, max_length
        )
        for good_bad in contrasts
        for j in good_bad
        for good in (True, False)
    ]
    pad_id = _pad_id(tokenizer)
    device = next(model.parameters()).device
    totals: list[float] = []
    for start in range(0, len(sequences), batch_size):
        batch = coh.collate(sequences[start : start + batch_size], pad_id).to(device)
        with torch.no_grad():
            logprobs, mask = coh.output_logprobs(model, batch)  # (B, T-1) each
        totals += (logprobs * mask).sum(dim=1).tolist()
    # per contrast: good|pos, good|neg, bad|pos, bad|neg
    return [
        (totals[i] - totals[i + 1]) - (totals[i + 2] - totals[i + 3])
        for i in range(0, len(totals), 4)
    ]


def _capped(rows: list, limit: int) -> list:
    return rows[:limit] if limit else rows


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
