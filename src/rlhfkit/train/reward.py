"""Reward modelling: learn a scalar score of a text from human judgements.

Each step:
  1. the texts a batch needs (prompt + completion joined as ``rlhfkit.data.feedback.join_text``)
  2. one forward pass of the reward model (a backbone with a scalar head) over all of them
  3. the objective's loss:
       pairs       Bradley-Terry on {prompt, chosen, rejected} (pair data, or pairs derived
                   from ratings whose gap is at least data.min_gap), optional margin
       soft-pairs  the same pairs, the target being the probability that a random human rater
                   prefers the chosen text (from the individual ratings: multi-annotator data)
       ratings     regression on {prompt, completion, rating}
  4. the shared offline step; evaluation on held-out pairs

The report puts the model's held-out pairwise accuracy next to the human agreement ceiling: how
often one random rater orders a held-out pair as the consensus of all raters does. A model near
that ceiling agrees with the consensus as well as a single person does.

The saved directory loads with ``rlhfkit.models.reward_model.load_reward_model`` and plugs into
``ppo`` / ``grpo`` / ``score`` as ``--reward rm:PATH``. Scores are normalised to mean 0 and
standard deviation 1 over training texts, so RL sees rewards of the same scale whatever the
backbone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from rlhfkit.config import ModelCfg, NonNegativeFloat, PositiveInt, Problem, default
from rlhfkit.train import kit
from rlhfkit.train.offline import OfflineConfig, no_classes_to_balance

NORMALISE_SAMPLE = 2000  # training texts scored to set the output scale
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class RewardCfg:
    """The reward model's objective and shape."""

    objective: Literal["pairs", "soft-pairs", "ratings"] = "pairs"
    """pairs (Bradley-Terry), soft-pairs (multi-annotator soft targets) or ratings (regression)."""
    use_margin: bool = False
    """pairs: subtract each pair's margin column inside the sigmoid (Llama 2's margin loss)."""
    pooling: Literal["auto", "last", "mean"] = "auto"
    """Which hidden states give the score: last token (decoders), mean of tokens (encoders), or
    auto by the backbone's kind."""
    max_length: PositiveInt = 256
    """Most tokens of a text the model reads (longer texts are cut on the right)."""
    report_gap: NonNegativeFloat = 2.0
    """Also report accuracy on held-out pairs whose human mean ratings differ by at least this."""


def encoder_model() -> ModelCfg:
    return ModelCfg(path="minilm")


@dataclass(frozen=True)
class Config(OfflineConfig):
    """Train a reward model on human feedback: pairs, ratings or multi-annotator ratings."""

    model: ModelCfg = field(default_factory=encoder_model)
    rm: RewardCfg = default(RewardCfg)

    def check(self) -> Iterable[Problem]:
        if self.rm.objective != "ratings":
            yield from no_classes_to_balance(self.data, "preference pairs")


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    result = train(cfg)
    print_summary(result.run, result.summary)


def train(cfg: Config) -> kit.TrainResult:
    import torch

    from rlhfkit.data.feedback import join_text, load_pairs, load_ratings
    from rlhfkit.losses import preference as losses
    from rlhfkit.models.reward_model import RewardModel
    from rlhfkit.train import offline, sharding
    from rlhfkit.train.runs import seed_everything

    rm_cfg = cfg.rm
    # before any random init: the head, LoRA adapters
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    model = RewardModel.from_backbone(
        cfg.model.path,
        pooling=rm_cfg.pooling,
        max_length=rm_cfg.max_length,
        device=cfg.model.device,
        dtype=cfg.model.dtype,
        autocast=cfg.model.autocast,
    )
    model.backbone = kit.adapt_trunk(model.backbone, cfg.model, cfg.lora)
    device = next(model.parameters()).device

    # 1. examples: pairs (chosen text, rejected text, margin, soft target) or rated texts
    if rm_cfg.objective == "ratings":
        examples: list[Any] = [
            _Rated(join_text(r.prompt, r.completion), r.rating, r.weight)
            for r in load_ratings(cfg.data, "train")
        ]
        lengths = [len(e.text) for e in examples]
    else:
        examples = [
            _pair(p, join_text, rm_cfg.objective == "soft-pairs")
            for p in load_pairs(cfg.data, "train")
        ]
        lengths = [len(e.chosen) + len(e.rejected) for e in examples]
    eval_pairs = [_pair(p, join_text, soft=False) for p in load_pairs(cfg.data, "eval")]
    if cfg.train.max_eval:
        eval_pairs = eval_pairs[: cfg.train.max_eval]

    def scores(texts: list[str]) -> torch.Tensor:
        encoded = model.encode(texts).to(device)
        return model(encoded["input_ids"], encoded["attention_mask"])  # (N,) raw scores

    # 2-3. one forward over every text of the batch, then the objective's loss
    def step_loss(batch: list[Any]) -> tuple[torch.Tensor, dict[str, float]]:
        weight = torch.tensor([e.weight for e in batch], device=device)
        if rm_cfg.objective == "ratings":
            predicted = scores([e.text for e in batch])
            target = torch.tensor([e.rating for e in batch], device=device)
            loss, stats = losses.rating_loss(predicted, target, weight)
        else:
            both = scores([e.chosen for e in batch] + [e.rejected for e in batch])
            chosen, rejected = both[: len(batch)], both[len(batch) :]
            if rm_cfg.objective == "soft-pairs":
                target = torch.tensor([e.target for e in batch], device=device)
                loss, stats = losses.soft_preference_loss(chosen, rejected, target, weight)
            else:
                margin = (
                    torch.tensor([e.margin for e in batch], device=device)
                    if rm_cfg.use_margin
                    else None
                )
                loss, stats = losses.bradley_terry_loss(chosen, rejected, margin, weight)
        return loss, {key: float(value) for key, value in stats._asdict().items()}

    def evaluate() -> dict[str, float]:
        return pair_report(eval_pairs, model, rm_cfg.report_gap, cfg.train.eval_batch_size)

    with offline.Fitting(
        cfg, "reward", model, examples, lengths, evaluate if eval_pairs else None
    ) as fitting:
        for step, batches in fitting.steps():
            metrics = fitting.accumulate(batches, step_loss)
            grad_norm = fitting.learner.step()[0]  # clip, NaN/inf guard, optimiser step
            fitting.end_step(step, metrics, grad_norm)  # log, evaluate, checkpoint
    run = fitting.run

    # 4. held-out test report (built-in sets have a test split), output scale, save
    model.eval()
    test = _test_pairs(cfg, join_text)
    test_report = pair_report(test, model, rm_cfg.report_gap, cfg.train.eval_batch_size)
    sample_texts = [t for e in examples[: NORMALISE_SAMPLE // 2] for t in _texts(e)]
    raw = model.score_texts(sample_texts, batch_size=cfg.train.eval_batch_size, normalised=False)
    model.offset, model.scale = statistics.fmean(raw), statistics.pstdev(raw) or 1.0
    # the scores seen on training texts: beyond them the model extrapolates (monitor)
    model.score_range = (
        (min(raw) - model.offset) / model.scale,
        (max(raw) - model.offset) / model.scale,
    )
    summary = {
        "objective": rm_cfg.objective,
        "steps": fitting.total_steps,
        "seconds": fitting.seconds,
        "train_examples": len(examples),
        **{key.replace("eval/", "validation_"): value for key, value in fitting.eval_after.items()},
        **{f"test_{key}": value for key, value in test_report.items()},
        "skipped_steps": fitting.learner.guard.skipped,
        "model": str(run.path / "model"),
    }
    plain = sharding.plain_copy(model)  # data-parallel: gathered whole on rank 0, else None
    if plain is not None:
        plain.offset, plain.scale = model.offset, model.scale
        plain.score_range = model.score_range
        plain.save(run.path / "model", info={"data": cfg.data.path, "summary": summary})
    run.finish(summary)
    return kit.TrainResult(run, model, model.tokenizer, summary)


@dataclass(frozen=True)
class _PairTexts:
    chosen: str
    rejected: str
    margin: float = 0.0
    target: float = 1.0  # probability a random rater prefers ``chosen`` (soft-pairs)
    gap: float | None = None  # difference of the human mean ratings, when known
    rater_accuracy: float | None = None  # how often one random rater agrees with the consensus
    weight: float = 1.0


@dataclass(frozen=True)
class _Rated:
    text: str
    rating: float
    weight: float = 1.0


def _pair(pair: Any, join: Any, soft: bool) -> _PairTexts:
    """A pair's two texts plus what the human ratings behind it say, when they are known."""
    from rlhfkit.losses.preference import rater_preference_probability

    chosen_ratings = pair.meta.get("chosen_ratings")
    rejected_ratings = pair.meta.get("rejected_ratings")
    gap = agree = None
    if chosen_ratings and rejected_ratings:
        gap = statistics.fmean(chosen_ratings) - statistics.fmean(rejected_ratings)
    if len(chosen_ratings or ()) >= 2 and len(rejected_ratings or ()) >= 2:
        # one rating per text would make "a random rater agrees with the consensus" trivially 1
        agree = rater_preference_probability(chosen_ratings, rejected_ratings)
    elif soft:
        from rlhfkit.errors import DataError

        raise DataError(
            "rm.objective soft-pairs needs several individual ratings per text (a "
            "ratings file with one row per annotator, or a built-in vader:<corpus>); "
            "these pairs have fewer: use rm.objective pairs"
        )
    return _PairTexts(
        join(pair.prompt, pair.chosen),
        join(pair.prompt, pair.rejected),
        pair.margin,
        agree if soft else 1.0,
        gap,
        agree,
        pair.weight,
    )


def _texts(example: Any) -> tuple[str, ...]:
    return (example.text,) if isinstance(example, _Rated) else (example.chosen, example.rejected)


def _test_pairs(cfg: Config, join: Any) -> list[_PairTexts]:
    from rlhfkit.data.feedback import load_pairs

    if not cfg.data.path.startswith("vader:"):
        return []  # a user's file has train and eval only; the eval report is the held-out one
    return [_pair(p, join, soft=False) for p in load_pairs(cfg.data, "test")]


def pair_report(
    pairs: list[_PairTexts], model: Any, gap: float, batch_size: int
) -> dict[str, float]:
    """Held-out pairwise accuracy, calibration and the human agreement ceiling.

    - ``accuracy``: fraction of pairs the model orders as people did (ties count half);
    - ``accuracy_gap``: the same on pairs whose mean human ratings differ by >= ``gap``;
    - ``ece``: expected calibration error of P(chosen) = sigmoid(r_c - r_r), over
      ``CALIBRATION_BINS`` confidence bins (meaningful for the pairwise objectives);
    - ``human_single_rater``: how often one random rater orders a pair as the consensus does
      (the ceiling a model trained on the consensus is compared with), and ``human_agreement``:
      how often two random raters agree with each other.
    """
    if not pairs:
        return {}
    texts = [t for p in pairs for t in (p.chosen, p.rejected)]
    raw = model.score_texts(texts, batch_size=batch_size, normalised=False)
    margins = [raw[2 * i] - raw[2 * i + 1] for i in range(len(pairs))]
    correct = [1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins]
    report = {
        "accuracy": statistics.fmean(correct),
        "pairs": float(len(pairs)),
        "ece": _calibration_error(margins, correct),
    }
    wide = [c for c, p in zip(correct, pairs, strict=True) if p.gap is not None and p.gap >= gap]
    if wide:
        report.update(accuracy_gap=statistics.fmean(wide), pairs_gap=float(len(wide)))
    rater = [p.rater_accuracy for p in pairs if p.rater_accuracy is not None]
    if rater:
        report.update(
            human_single_rater=statistics.fmean(rater),
            human_agreement=statistics.fmean(a * a + (1 - a) * (1 - a) for a in rater),
        )
        wide_rater = [
            p.rater_accuracy
            for p in pairs
            if p.rater_accuracy is not None and p.gap is not None and p.gap >= gap
        ]
        if wide_rater:
            report["human_single_rater_gap"] = statistics.fmean(wide_rater)
    return report


def _calibration_error(margins: list[float], correct: list[float]) -> float:
    """Expected calibration error: confidence max(p, 1-p) against how often that side was right."""
    bins: list[list[tuple[float, float]]] = [[] for _ in range(CALIBRATION_BINS)]
    for margin, right in zip(margins, correct, strict=True):
        p = 1.0 / (1.0 + math.exp(-max(min(margin, 50.0), -50.0)))
        confidence, hit = (p, right) if p >= 0.5 else (1.0 - p, 1.0 - right)
        bins[min(int((confidence - 0.5) * 2 * CALIBRATION_BINS), CALIBRATION_BINS - 1)].append(
            (confidence, hit)
        )
    total = len(margins)
    return sum(
        len(b) / total * abs(statistics.fmean(c for c, _ in b) - statistics.fmean(h for _, h in b))
        for b in bins
        if b
    )
