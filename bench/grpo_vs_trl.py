"""rlhfkit's GRPO against TRL's GRPOTrainer on the same work: time per step, tokens/s, peak RSS.

    python bench/grpo_vs_trl.py --quick     # smoke check: a few minutes on 2 CPU cores
    python bench/grpo_vs_trl.py             # 4 prompts x 4 completions, 24 new tokens, 2 repeats

The same work on both sides, set field by field (see ``rlhfkit_config`` and ``trl_config``):
the embedded SmolLM2-135M-Instruct from the same cached directory, fp32 (with ``--bf16``: fp32
weights and bfloat16 autocast on both sides; ``--bf16-head`` puts rlhfkit's LM head in bfloat16
too, as TRL's is under autocast), on the same device;
the first ``--prompts`` movie openings of ``vader:movies``, or with ``--join N`` as many
prompts of N consecutive openings each (plain text on both sides, or the chat template on both
with ``--chat``); ``--prompts-per-step`` prompts x ``--group-size``
completions per step, sampled at temperature 1 (no top-p, no top-k) for at most
``--max-new-tokens`` tokens, all in one ``generate`` call; the same reward callable; group
mean/std advantages; PPO clip 0.2; a k3 KL loss to a frozen reference copy weighted by
``--beta`` (0 loads no reference on either side); token-level loss aggregation over the whole
batch (TRL ``loss_type="dapo"``, rlhfkit ``aggregation="token"``); one forward/backward over the
batch and one AdamW step per generation (TRL: ``num_iterations=1``, ``steps_per_generation=1``,
``gradient_accumulation_steps=1``; rlhfkit: ``epochs=1``, ``micro_batch_size`` = the batch);
constant learning rate, gradient-norm clip 1.0; no gradient checkpointing on either side (TRL
turns it on by default: ``--trl-gradient-checkpointing`` measures that too).

A step is timed as the wall clock between two optimiser-step ends (``common.StepClock``), so
model loading is never in it, and everything a step costs is. The differences left are each
framework's own choices: TRL also computes per-token entropies in the training forward, applies
the LM head to prompt positions too on CPU and keeps more metrics; rlhfkit records the sampled
tokens' log-probabilities while generating. Both step a fused AdamW. bench/README.md has the
settings side by side and the results.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (the bench folder is not a package)

SIDES = ("rlhfkit", "trl")
LETTER_REWARD = "letter"


def letter_e_share(prompts: list[str], completions: list[str], **meta: list) -> list[float]:
    """Share of a completion's characters that are the letter e: cheap, deterministic, dense."""
    return [text.count("e") / max(len(text), 1) for text in completions]


def reward_spec(args: argparse.Namespace) -> str:
    """The rlhfkit reward spec both sides score with: this file's letter reward by default."""
    if args.reward == LETTER_REWARD:
        return f"{Path(__file__).resolve()}:{letter_e_share.__name__}"
    return args.reward


def bench_prompts(args: argparse.Namespace) -> list[str]:
    """Both sides' prompt pool: ``--prompts`` prompts of ``--join`` movie openings each."""
    from rlhfkit.data.builtin import load_builtin

    openings = [row["prompt"] for row in load_builtin("vader:movies", "train")]
    if len(openings) < args.prompts * args.join:
        raise SystemExit(
            f"--prompts {args.prompts} x --join {args.join} needs "
            f"{args.prompts * args.join} openings; vader:movies has {len(openings)}"
        )
    return [" ".join(openings[i * args.join : (i + 1) * args.join]) for i in range(args.prompts)]


# --- the two sides (each runs in its own child process) ----------------------------------------


def rlhfkit_config(args: argparse.Namespace, model_dir: str, output_dir: Path, prompts: Path):
    from rlhfkit.config import GenCfg, LogCfg, ModelCfg, OptimCfg, PromptDataCfg, RunCfg
    from rlhfkit.train import grpo

    batch = args.prompts_per_step * args.group_size
    return grpo.Config(
        reward=reward_spec(args),
        steps=args.warmup + args.steps,
        model=ModelCfg(
            path=model_dir,
            dtype="float32",
            device=args.device,
            autocast="bfloat16" if args.bf16 else "off",
            head_dtype="bfloat16" if args.bf16_head else "float32",
        ),
        data=PromptDataCfg(prompts=str(prompts), eval_size=0),
        gen=GenCfg(
            max_new_tokens=args.max_new_tokens,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            batch_size=batch,
            chat_template="on" if args.chat else "off",
        ),
        algo=grpo.AlgoCfg(
            advantage="grpo",
            group_size=args.group_size,
            prompts_per_step=args.prompts_per_step,
            micro_batch_size=batch,
            epochs=1,
            clip_eps=0.2,
            kl_coef=args.beta,
            kl_estimator="k3",
            kl_in="loss",
            scale_by_std=True,
            aggregation="token",
        ),
        optim=OptimCfg(
            lr=args.lr, schedule="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0
        ),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(output_dir), seed=args.seed, checkpoint_every=0),
    )


def run_rlhfkit(args: argparse.Namespace, model_dir: str, clock: common.StepClock) -> None:
    from rlhfkit.data.files import write_jsonl
    from rlhfkit.train import grpo, runs

    prompts = Path(args.scratch) / "prompts.jsonl"
    write_jsonl(prompts, ({"prompt": prompt} for prompt in bench_prompts(args)))
    cfg = rlhfkit_config(args, model_dir, Path(args.scratch) / "rlhfkit-run", prompts)
    batch = args.prompts_per_step * args.group_size
    log_metrics = runs.Run.log

    def log_and_tick(run, step, metrics):
        # the loop calls Run.log once per step, right after the optimiser step (log.every = 1)
        clock.tick(round(metrics["length"] * batch), metrics["reward"])
        log_metrics(run, step, metrics)

    runs.Run.log = log_and_tick
    grpo.train(cfg)


def trl_config(args: argparse.Namespace, output_dir: Path):
    from trl import GRPOConfig

    batch = args.prompts_per_step * args.group_size
    return GRPOConfig(
        output_dir=str(output_dir),
        max_steps=args.warmup + args.steps,
        seed=args.seed,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        num_generations=args.group_size,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=args.beta,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=args.bf16,
        fp16=False,
        model_init_kwargs={"dtype": "float32", "use_kernels": False},  # as rlhfkit loads it
        gradient_checkpointing=args.trl_gradient_checkpointing,
        use_cpu=common.resolve_device(args.device) == "cpu",
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def run_trl(args: argparse.Namespace, model_dir: str, clock: common.StepClock) -> None:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    from rlhfkit.rewards import load_reward

    prompts = bench_prompts(args)
    if args.chat:
        prompts = [[{"role": "user", "content": p}] for p in prompts]
    reward = load_reward(reward_spec(args))

    def text(item) -> str:
        return item if isinstance(item, str) else item[-1]["content"]

    def score(prompts, completions, **trainer_kwargs) -> list[float]:
        return reward([text(p) for p in prompts], [text(c) for c in completions])

    score.__name__ = reward.name.rpartition(":")[2] or "reward"
    trainer = GRPOTrainer(
        model=model_dir,
        reward_funcs=score,
        args=trl_config(args, Path(args.scratch) / "trl-run"),
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    batch = args.prompts_per_step * args.group_size

    class Tick(TrainerCallback):
        def on_step_end(self, training_args, state, control, **kwargs):
            # GRPOTrainer appends this step's metrics before on_step_end; log() clears them after
            metrics = trainer._metrics["train"]
            clock.tick(round(metrics["completions/mean_length"][-1] * batch), metrics["reward"][-1])

    trainer.add_callback(Tick())
    trainer.train()


def child(args: argparse.Namespace) -> None:
    common.set_up_child(args.child, args.threads, args.trl_allocator)
    from rlhfkit.models import resolve_model_dir

    model_dir = str(resolve_model_dir(args.model))
    clock = common.StepClock(warmup=args.warmup, device=common.resolve_device(args.device))
    (run_rlhfkit if args.child == "rlhfkit" else run_trl)(args, model_dir, clock)
    common.write_result(args.result, clock.result())


# --- the parent: alternate the sides, summarise ------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="measured steps per run")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="steps run before the measured ones (at least 1: a step is timed "
        "from the previous step's end)",
    )
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt (G)")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternated")
    parser.add_argument(
        "--beta",
        type=float,
        default=0.04,
        help="KL coefficient (0: no reference model on either side)",
    )
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--prompts", type=int, default=32, help="size of the prompt pool")
    parser.add_argument(
        "--join", type=int, default=1, help="movie openings per prompt (20: ~160-token prompts)"
    )
    parser.add_argument(
        "--reward",
        default=LETTER_REWARD,
        help="'letter' (share of e's), or any rlhfkit reward spec: sentiment, ...",
    )
    parser.add_argument(
        "--chat",
        action="store_true",
        help="wrap prompts in the chat template on both sides (default: plain text)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="mixed precision on both sides: float32 weights, bfloat16 matmuls "
        "(TRL bf16=True, rlhfkit --model.autocast bfloat16)",
    )
    parser.add_argument(
        "--bf16-head",
        action="store_true",
        help="with --bf16: rlhfkit's LM head in bfloat16 too, as TRL's is "
        "(--model.head_dtype bfloat16; rlhfkit keeps it float32 by default)",
    )
    parser.add_argument(
        "--trl-gradient-checkpointing",
        action="store_true",
        help="TRL's default; off by default so both sides do the same compute",
    )
    common.add_run_options(parser)
    common.add_allocator_option(parser)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny settings for a smoke check: 2 prompts x 2, 4 tokens, 1 step",
    )
    parser.add_argument("--json", default="", help="also write the comparison to this JSON file")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.prompts_per_step, args.group_size = 1, 1, 2, 2
        args.max_new_tokens, args.repeats, args.prompts = 4, 1, 4
    common.require_positive(
        parser,
        args,
        (
            "steps",
            "warmup",
            "prompts_per_step",
            "max_new_tokens",
            "repeats",
            "threads",
            "prompts",
            "join",
        ),
    )
    if args.group_size < 2:
        parser.error(
            f"--group-size must be at least 2 (GRPO needs a group baseline), got {args.group_size}"
        )
    if args.bf16_head and not args.bf16:
        parser.error("--bf16-head needs --bf16: without autocast the head is float32 on both sides")
    if args.beta < 0:
        parser.error(f"--beta must be >= 0, got {args.beta}")
    return args


def child_argv(args: argparse.Namespace) -> list[str]:
    """The parent's settings, passed on unchanged (``--quick`` already expanded)."""
    argv = [
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--prompts-per-step={args.prompts_per_step}",
        f"--group-size={args.group_size}",
        f"--max-new-tokens={args.max_new_tokens}",
        f"--beta={args.beta}",
        f"--lr={args.lr}",
        f"--threads={args.threads}",
        f"--prompts={args.prompts}",
        f"--join={args.join}",
        f"--reward={args.reward}",
        f"--device={args.device}",
        f"--seed={args.seed}",
        f"--model={args.model}",
        f"--trl-allocator={args.trl_allocator}",
    ]
    if args.chat:
        argv.append("--chat")
    if args.bf16:
        argv.append("--bf16")
    if args.bf16_head:
        argv.append("--bf16-head")
    if args.trl_gradient_checkpointing:
        argv.append("--trl-gradient-checkpointing")
    return argv


def describe_run(result: dict) -> str:
    """One run's line: its step times, their median, CPU time, memory and total time."""
    steps = ", ".join(f"{s:.2f}" for s in result["step_seconds"])
    return (
        f"s/step: {steps}  (median {statistics.median(result['step_seconds']):.2f}, CPU "
        f"{statistics.median(result['cpu_seconds']):.2f}; peak RSS "
        f"{result['peak_rss'] / 2**30:.2f} GiB; {result['run_seconds']:.0f} s in all)"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    import platform

    import torch

    device = common.resolve_device(args.device)
    precision = "fp32 weights, bf16 autocast" if args.bf16 else "fp32"
    if args.bf16:
        precision += ", rlhfkit's LM head " + ("bf16 as TRL's" if args.bf16_head else "fp32")
    print(
        f"GRPO, {common.model_name(args.model)} {precision} on {device} ({platform.processor() or platform.machine()}"
        f", {args.threads} threads): {args.prompts_per_step} prompts x G={args.group_size}, "
        f"{args.max_new_tokens} new tokens, beta={args.beta}, reward={args.reward}, "
        f"{'chat template' if args.chat else 'plain text'}, {args.join} opening(s) a prompt; "
        f"{args.steps} measured steps after "
        f"{args.warmup} warm-up, {args.repeats} repeat(s); "
        f"{common.allocator_phrase(args.trl_allocator)}; torch {torch.__version__}",
        flush=True,
    )
    results = common.run_alternating(
        __file__, SIDES, child_argv(args), args.repeats, args.threads, describe_run
    )
    ours, theirs = (common.summarize(side, results[side]) for side in SIDES)
    gpu = device == "cuda"
    common.print_table(common.comparison_headers(gpu), common.comparison_rows(ours, theirs, gpu))
    if args.json:
        common.save_json(
            args.json, {"settings": vars(args), "rlhfkit": ours, "trl": theirs, "runs": results}
        )


if __name__ == "__main__":
    main()
