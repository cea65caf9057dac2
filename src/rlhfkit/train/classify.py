"""Text classification with a task head: a pretrained backbone and a linear head over K classes.

Each step:
  1. tokenise a batch of texts (right-padded, cut to head.max_length)
  2. one forward pass: pooled hidden states (last token for decoders, mean for encoders) -> logits
  3. cross-entropy, each text weighed by its class weight (data.balance inverse-frequency:
     every class counts the same in total, however rare)
  4. the shared offline step: accumulate, clip, update; held-out accuracy and macro-F1; checkpoint

After training the model is evaluated on the test split (wiki_topics) or the held-out split (a
user's file): accuracy, per-class precision/recall/F1, macro-F1 and the confusion matrix, written
to ``classification.json`` and ``classification.txt`` in the run directory and shown in its
report. The saved model (RUN/model) loads with ``rlhfkit.models.classifier.load_classifier`` and
plugs into grpo / ppo / eval as the reward ``classifier:RUN/model:LABEL`` (P(LABEL | text)).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from rlhfkit.config import ClassifyDataCfg, ModelCfg, PositiveInt, default
from rlhfkit.train import kit
from rlhfkit.train.offline import OfflineConfig
from rlhfkit.train.reward import encoder_model

REPORT_JSON = "classification.json"
REPORT_TEXT = "classification.txt"


@dataclass(frozen=True)
class HeadCfg:
    """The classification head and what it reads."""

    pooling: Literal["auto", "last", "mean"] = "auto"
    """Which hidden states feed the head: the last real token (decoders such as SmolLM2), the
    mean over tokens (encoders such as MiniLM), or auto by the backbone's kind."""
    max_length: PositiveInt = 256
    """Most tokens of a text the model reads (longer texts lose their end)."""


@dataclass(frozen=True)
class Config(OfflineConfig):
    """Train and evaluate a text classifier head on a local LM or encoder (accuracy, macro-F1)."""

    model: ModelCfg = field(default_factory=encoder_model)
    data: ClassifyDataCfg = default(ClassifyDataCfg)  # type: ignore[assignment]
    head: HeadCfg = default(HeadCfg)


def main(cfg: Config) -> None:
    from rlhfkit.eval.classification import table
    from rlhfkit.eval.report import print_summary

    result = train(cfg)
    if (written := result.run.path / REPORT_JSON).is_file():
        print(table(json.loads(written.read_text(encoding="utf-8"))))
    print_summary(result.run, result.summary)


def train(cfg: Config) -> kit.TrainResult:
    import torch
    import torch.nn.functional as F

    from rlhfkit.data.labelled import class_names, load_labelled
    from rlhfkit.models.classifier import Classifier
    from rlhfkit.train import offline, sharding
    from rlhfkit.train.runs import seed_everything, write_text_atomic

    examples = load_labelled(cfg.data, "train")
    held_out = load_labelled(cfg.data, "eval")
    names = class_names(examples, held_out, cfg.data.path)
    index = {name: k for k, name in enumerate(names)}
    eval_rows = held_out[: cfg.train.max_eval] if cfg.train.max_eval else held_out

    # before any random init: the head, LoRA adapters
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    model = Classifier.from_backbone(
        cfg.model.path,
        names,
        pooling=cfg.head.pooling,
        max_length=cfg.head.max_length,
        device=cfg.model.device,
        dtype=cfg.model.dtype,
        autocast=cfg.model.autocast,
    )
    model.backbone = kit.adapt_trunk(model.backbone, cfg.model, cfg.lora)
    device = next(model.parameters()).device

    # 1-3. tokenise, forward, class-weighted cross-entropy
    def step_loss(batch: list[Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(**model.encode([e.text for e in batch]))  # (B, K)
        target = torch.tensor([index[e.label] for e in batch], device=device)  # (B,)
        weight = torch.tensor([e.weight for e in batch], device=device)  # (B,)
        loss = (F.cross_entropy(logits, target, reduction="none") * weight).mean()
        accuracy = (logits.argmax(-1) == target).float().mean()
        return loss, {"accuracy": float(accuracy)}

    def evaluate() -> dict[str, float]:
        result = classification(eval_rows)
        return {"accuracy": result["accuracy"], "macro_f1": result["macro_f1"]}

    def classification(rows: list[Any]) -> dict[str, Any]:
        from rlhfkit.eval.classification import report

        predicted = model.probabilities([r.text for r in rows], cfg.train.eval_batch_size)
        return report([index[r.label] for r in rows], predicted.argmax(-1).tolist(), names)

    lengths = [len(e.text) for e in examples]
    with offline.Fitting(
        cfg, "classify", model, examples, lengths, evaluate if eval_rows else None
    ) as fitting:
        for step, batches in fitting.steps():
            metrics = fitting.accumulate(batches, step_loss)
            grad_norm = fitting.learner.step()[0]  # clip, NaN/inf guard, optimiser step
            fitting.end_step(step, metrics, grad_norm)  # log, evaluate, checkpoint
    run = fitting.run

    # 4. the final report: test split where the data have one, else the held-out split
    test = load_labelled(cfg.data, "test")
    split = "test" if test else "eval"
    final = {"split": split, **classification(test or held_out)} if test or held_out else {}
    summary = {
        "steps": fitting.total_steps,
        "seconds": fitting.seconds,
        "train_texts": len(examples),
        "classes": len(names),
        "train_loss_last": fitting.last.get("loss"),
        **{key.replace("eval/", "validation_"): value for key, value in fitting.eval_after.items()},
        **(
            {f"{split}_accuracy": final["accuracy"], f"{split}_macro_f1": final["macro_f1"]}
            if final
            else {}
        ),
        "skipped_steps": fitting.learner.guard.skipped,
        "model": str(run.path / "model"),
    }
    if final:
        from rlhfkit.eval.classification import table

        write_text_atomic(run.path / REPORT_JSON, json.dumps(final, indent=2) + "\n")
        write_text_atomic(run.path / REPORT_TEXT, table(final) + "\n")
    plain = sharding.plain_copy(model)  # data-parallel: gathered whole on rank 0, else None
    if plain is not None:
        plain.save(run.path / "model", info={"data": cfg.data.path, "summary": summary})
    run.finish(summary, report=kit.write_report)
    return kit.TrainResult(run, model, model.tokenizer, summary)
