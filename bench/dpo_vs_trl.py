"""rlhfkit's DPO against TRL's DPOTrainer on the same pairs: time per step, start-up, peak RSS.

    python bench/dpo_vs_trl.py --quick     # smoke check: batch 2, 1 measured step
    python bench/dpo_vs_trl.py             # batch 8 pairs, 5 steps after 1 warm-up, 2 repeats
    python bench/dpo_vs_trl.py --trl-precompute-ref   # TRL precomputes reference log-probs too

The same work on both sides, set field by field (``offline_bench.rlhfkit_offline_groups`` and
``offline_bench.trl_training_args``, then ``rlhfkit_config`` and ``trl_config`` here):

- the embedded SmolLM2-135M-Instruct from the same cached directory, fp32, on the same
  device, as the policy and as the reference;
- one pairs file, written once by the parent (``offline_bench.write_pairs_file``):
  (``--warmup`` + ``--steps``) x ``--batch-size`` pairs of human-rated ``vader:movies``
  reviews, so each pair is seen once, each under the prompt "Write a one-sentence movie
  review." and a newline; plain text on both sides (rlhfkit ``train.chat_template="off"``,
  TRL plain strings); the completion followed by EOS, all within ``--max-length`` tokens
  (longer pairs are passed over, so neither side truncates or drops any);
- ``--batch-size`` pairs per optimiser step, chosen and rejected in one forward/backward, no
  gradient accumulation, pairs in random order (rlhfkit ``train.group_by_length=False``;
  ``--rlhfkit-group-by-length`` measures its default);
- the sigmoid DPO loss on summed completion log-probs, beta 0.1, no label smoothing;
- AdamW (fused on both), constant learning rate ``--lr``, no warm-up, weight decay 0,
  gradient-norm clip 1.0; the same seed;
- no dropout (TRL ``disable_dropout``; SmolLM2 has none), no gradient checkpointing (TRL's
  default is on: ``--trl-gradient-checkpointing``), no evaluation (rlhfkit
  ``data.eval_fraction=0``, TRL ``eval_strategy="no"``), metrics logged every step, no
  checkpoints during the run.

Where the reference log-probs come from is each framework's own design, and the reason for
two extra columns. rlhfkit computes them once for the whole dataset before the first step
(``PRECOMPUTE_BATCH`` pairs per forward) and keeps no reference model; TRL by default keeps a
frozen copy and runs it in every step, or, with ``--trl-precompute-ref``
(``precompute_ref_log_probs=True``, same batch), does as rlhfkit. A step is timed as the
wall clock between two optimiser-step ends (``common.StepClock``), so a precomputation falls
before the first step: "time to first step" (the child's start to the first step's end:
imports, loading, TRL's dataset tokenisation, any precomputation, the first step) and
"amortised s/step" (the child's start to the last step's end, over all steps run) count it.
Other differences: TRL's fused LM head also computes per-token entropies, mean logits and
top-1 accuracy for its metrics; both tokenise before training, TRL through ``datasets.map``.
bench/README.md has the settings side by side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (the bench folder is not a package; first: it starts the clock)
import offline_bench  # noqa: E402

BETA = 0.1


def rlhfkit_config(args: argparse.Namespace, model_dir: str, output_dir: Path):
    from rlhfkit.train import dpo

    return dpo.Config(
        **offline_bench.rlhfkit_offline_groups(args, model_dir, output_dir),
        algo=dpo.AlgoCfg(loss="dpo", beta=BETA, label_smoothing=0.0),
    )


def run_rlhfkit(args: argparse.Namespace, model_dir: str, clock: common.StepClock) -> None:
    from rlhfkit.data import sequences
    from rlhfkit.train import dpo

    collate = sequences.collate

    def collate_and_count(examples, pad_id):
        batch = collate(examples, pad_id)  # every forward's batch: count the tokens it computes
        clock.add_tokens(offline_bench.computed_tokens(batch.attention_mask, args.device))
        return batch

    sequences.collate = collate_and_count
    offline_bench.tick_rlhfkit_steps(clock)
    dpo.train(rlhfkit_config(args, model_dir, Path(args.scratch) / "rlhfkit-run"))


def trl_config(args: argparse.Namespace, output_dir: Path):
    from trl import DPOConfig

    return DPOConfig(
        **offline_bench.trl_training_args(args, output_dir),
        beta=BETA,
        loss_type=["sigmoid"],
        label_smoothing=0.0,
        padding_free=False,
        precompute_ref_log_probs=args.trl_precompute_ref,
        precompute_ref_batch_size=offline_bench.PRECOMPUTE_BATCH,
    )


def run_trl(args: argparse.Namespace, model_dir: str, clock: common.StepClock) -> None:
    from datasets import Dataset
    from trl import DPOTrainer

    rows = offline_bench.read_pairs(args.pairs)
    trainer = DPOTrainer(
        model=model_dir,
        args=trl_config(args, Path(args.scratch) / "trl-run"),
        train_dataset=Dataset.from_list(rows),
    )
    offline_bench.check_all_kept(trainer, len(rows))
    offline_bench.tick_trl_steps(trainer, clock)
    trainer.train()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = offline_bench.offline_parser(__doc__.split("\n\n")[0], lr=1e-6)
    parser.add_argument(
        "--trl-precompute-ref",
        action="store_true",
        help="TRL computes reference log-probs before training too, as rlhfkit "
        "does (default: a frozen reference model run in every step)",
    )
    return offline_bench.parse_offline_args(parser, argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        offline_bench.offline_child(args, {"rlhfkit": run_rlhfkit, "trl": run_trl})
        return
    reference = "precomputed" if args.trl_precompute_ref else "a frozen copy run every step"
    offline_bench.compare_offline(
        __file__, args, argv, f"DPO (sigmoid loss, beta {BETA}; TRL reference: {reference})"
    )


if __name__ == "__main__":
    main()
