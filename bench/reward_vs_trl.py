"""rlhfkit's reward-model training against TRL's RewardTrainer on the same pairs: time per
step, start-up, peak RSS.

    python bench/reward_vs_trl.py --quick     # smoke check: batch 2, 1 measured step
    python bench/reward_vs_trl.py             # batch 8 pairs, 5 steps after 1 warm-up, 2 repeats

The same work on both sides, set field by field (``offline_bench.rlhfkit_offline_groups`` and
``offline_bench.trl_training_args``, then ``rlhfkit_config`` and ``trl_config`` here):

- a reward model on the embedded SmolLM2-135M-Instruct from the same cached directory, fp32,
  on the same device: the base model without its LM head and a new linear head reading the
  last text token's hidden state (rlhfkit ``RewardModel``, pooling ``last``; TRL
  ``AutoModelForSequenceClassification`` with ``num_labels=1``, which TRL builds from the
  directory, setting its ``pad_token_id`` from the tokenizer);
- one pairs file, written once by the parent (``offline_bench.write_pairs_file``):
  (``--warmup`` + ``--steps``) x ``--batch-size`` pairs of human-rated ``vader:movies``
  reviews, so each pair is seen once, each under the prompt "Write a one-sentence movie
  review." and a newline, plain text; every text within ``--max-length`` tokens (longer
  pairs are passed over, so neither side truncates or drops any);
- ``--batch-size`` pairs per optimiser step, chosen and rejected texts in one
  forward/backward, no gradient accumulation, pairs in random order (rlhfkit
  ``train.group_by_length=False``; ``--rlhfkit-group-by-length`` measures its default);
- the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected), no margin, no reward centring
  (TRL ``center_rewards_coefficient=None``);
- AdamW (fused on both), constant learning rate ``--lr``, no warm-up, weight decay 0,
  gradient-norm clip 1.0; the same seed;
- no dropout (TRL ``disable_dropout``; SmolLM2 has none), no gradient checkpointing (TRL's
  default is on: ``--trl-gradient-checkpointing``), no evaluation (rlhfkit
  ``data.eval_fraction=0``, TRL ``eval_strategy="no"``), metrics logged every step, no
  checkpoints during the run.

A step is timed as the wall clock between two optimiser-step ends (``common.StepClock``);
"time to first step" (the child's start to the first step's end) and "amortised s/step" (the
child's start to the last step's end, over all steps run) add what comes before training:
imports, loading, and TRL's dataset tokenisation. What differs, by design of each framework:
rlhfkit tokenises each batch's texts in the step, TRL all of them before training with
``datasets.map``; TRL appends EOS to each text (one more token through the model; EOS being
its pad token, it then reads the state of the token before it, the same last text token
rlhfkit reads); TRL's head scores every position and then picks the last, rlhfkit's only the
last one. After the last step rlhfkit scores the training texts to set its output scale and
saves the model, outside every timed figure. bench/README.md has the settings side by side.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (the bench folder is not a package; first: it starts the clock)
import offline_bench  # noqa: E402


def rlhfkit_config(args: argparse.Namespace, model_dir: str, output_dir: Path):
    from rlhfkit.train import reward

    return reward.Config(
        **offline_bench.rlhfkit_offline_groups(args, model_dir, output_dir),
        rm=reward.RewardCfg(
            objective="pairs", use_margin=False, pooling="last", max_length=args.max_length
        ),
    )


def run_rlhfkit(args: argparse.Namespace, model_dir: str, clock: common.StepClock) -> None:
    from rlhfkit.models.reward_model import RewardModel
    from rlhfkit.train import reward

    encode = RewardModel.encode

    def encode_and_count(model, texts):
        batch = encode(model, texts)  # every forward's batch: count the tokens it computes
        clock.add_tokens(offline_bench.computed_tokens(batch["attention_mask"], args.device))
        return batch

    RewardModel.encode = encode_and_count
    offline_bench.tick_rlhfkit_steps(clock)
    reward.train(rlhfkit_config(args, model_dir, Path(args.scratch) / "rlhfkit-run"))


def trl_config(args: argparse.Namespace, output_dir: Path):
    from trl import RewardConfig

    return RewardConfig(
        **offline_bench.trl_training_args(args, output_dir), center_rewards_coefficient=None
    )


def run_trl(args: argparse.Namespace, model_dir: str, clock: common.StepClock) -> None:
    from datasets import Dataset
    from trl import RewardTrainer

    rows = offline_bench.read_pairs(args.pairs)
    trainer = RewardTrainer(
        model=model_dir,
        args=trl_config(args, Path(args.scratch) / "trl-run"),
        train_dataset=Dataset.from_list(rows),
    )
    offline_bench.check_all_kept(trainer, len(rows))
    offline_bench.tick_trl_steps(trainer, clock)
    trainer.train()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = offline_bench.parse_offline_args(
        offline_bench.offline_parser(__doc__.split("\n\n")[0].replace("\n", " "), lr=1e-5), argv
    )
    if args.child:
        offline_bench.offline_child(args, {"rlhfkit": run_rlhfkit, "trl": run_trl})
        return
    offline_bench.compare_offline(__file__, args, argv, "Reward model (Bradley-Terry on pairs)")


if __name__ == "__main__":
    main()
