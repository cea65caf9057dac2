"""What the offline benchmarks (DPO, reward model) share: their flags, their data, the
settings both sides take, how each side's steps are ticked, the parent and the summary table.

Both train on one pairs file that the parent writes once (``write_pairs_file``); each child
is handed the parent's own command line, so both sides parse the very same settings.
``rlhfkit_offline_groups`` and ``trl_training_args`` set what every rlhfkit offline trainer
and every TRL trainer takes, field for field; each benchmark adds its own algorithm's fields.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

OFFLINE_SIDES = ("rlhfkit", "trl")
PRECOMPUTE_BATCH = 32  # pairs per forward when a side precomputes reference log-probs


def offline_parser(description: str, lr: float) -> argparse.ArgumentParser:
    """The flags every offline benchmark takes; the child gets the parent's own command line."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=5, help="measured steps per run")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="steps run before the measured ones (at least 1: a step is timed "
        "from the previous step's end)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="pairs per optimiser step; the run's data is one pass over "
        "(warmup + steps) x batch-size pairs",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=128,
        help="most tokens per sequence (pairs that do not fit are passed over)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternated")
    parser.add_argument("--lr", type=float, default=lr)
    common.add_run_options(parser)
    common.add_allocator_option(parser)
    parser.add_argument(
        "--rlhfkit-group-by-length",
        action="store_true",
        help="rlhfkit's default (batches of similar lengths, less padding); off "
        "by default so both sides batch pairs in random order",
    )
    parser.add_argument(
        "--trl-gradient-checkpointing",
        action="store_true",
        help="TRL's default; off by default so both sides do the same compute",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny settings for a smoke check: batch 2, 1 measured step, 1 repeat",
    )
    parser.add_argument("--json", default="", help="also write the comparison to this JSON file")
    parser.add_argument("--child", choices=OFFLINE_SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--pairs", help=argparse.SUPPRESS)
    return parser


def parse_offline_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.batch_size, args.max_length, args.repeats = 1, 1, 2, 64, 1
    common.require_positive(
        parser, args, ("steps", "warmup", "batch_size", "max_length", "repeats", "threads")
    )
    if args.lr <= 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    return args


# --- the settings both sides take, field for field -----------------------------------------------


def rlhfkit_offline_groups(
    args: argparse.Namespace, model_dir: str, output_dir: Path
) -> dict[str, Any]:
    """The config groups every rlhfkit offline trainer takes, set as ``trl_training_args``."""
    from rlhfkit.config import FeedbackDataCfg, LogCfg, ModelCfg, OptimCfg, RunCfg
    from rlhfkit.train.offline import TrainCfg

    return dict(
        model=ModelCfg(path=model_dir, dtype="float32", device=args.device),
        # eval_fraction 0 holds nothing out of the file: no evaluation, as on the TRL side
        data=FeedbackDataCfg(path=args.pairs, eval_fraction=0.0),
        train=TrainCfg(
            epochs=1,
            max_steps=args.warmup + args.steps,
            batch_size=args.batch_size,
            eval_batch_size=PRECOMPUTE_BATCH,
            max_length=args.max_length,
            group_by_length=args.rlhfkit_group_by_length,
            chat_template="off",
        ),
        optim=OptimCfg(
            lr=args.lr,
            schedule="constant",
            warmup_steps=0,
            weight_decay=0.0,
            grad_accum_steps=1,
            max_grad_norm=1.0,
        ),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(output_dir), seed=args.seed, checkpoint_every=0),
    )


def trl_training_args(args: argparse.Namespace, output_dir: Path) -> dict[str, Any]:
    """The ``DPOConfig`` / ``RewardConfig`` fields both TRL trainers share, set as
    ``rlhfkit_offline_groups``."""
    return dict(
        output_dir=str(output_dir),
        max_steps=args.warmup + args.steps,
        seed=args.seed,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_length=args.max_length,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=False,
        fp16=False,
        model_init_kwargs={"dtype": "float32", "use_kernels": False},
        disable_dropout=True,
        gradient_checkpointing=args.trl_gradient_checkpointing,
        use_cpu=args.device == "cpu",
        eval_strategy="no",
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


PAIRS_SOURCE = "vader:movies"
PAIRS_PROMPT = "Write a one-sentence movie review.\n"
"""Every pair's prompt: short and fixed, so TRL's DPO has a prompt to split off. It ends in a
newline, so the prompt and completion tokenise the same whether joined before tokenising (TRL)
or tokenised apart (rlhfkit)."""


def write_pairs_file(path: Path, count: int, max_length: int, model_dir: str) -> int:
    """Write ``count`` preference pairs as JSONL ``{prompt, chosen, rejected}``; return how
    many were passed over for length.

    The pairs are the first ones of ``vader:movies``' training split (pairs of human-rated
    reviews, the better-rated one chosen) whose prompt + longer review + EOS fit in
    ``max_length`` tokens, so neither side truncates (rlhfkit) or drops (TRL) any of them.
    """
    from transformers import AutoTokenizer

    from rlhfkit.config import FeedbackDataCfg
    from rlhfkit.data.feedback import load_pairs
    from rlhfkit.data.files import write_jsonl

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_tokens = len(tokenizer(PAIRS_PROMPT, add_special_tokens=False)["input_ids"])

    def fits(text: str) -> bool:  # prompt + text + EOS
        text_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return prompt_tokens + text_tokens + 1 <= max_length

    rows, passed_over = [], 0
    for pair in load_pairs(FeedbackDataCfg(path=PAIRS_SOURCE), "train"):
        if len(rows) == count:
            break
        if fits(pair.chosen) and fits(pair.rejected):
            rows.append({"prompt": PAIRS_PROMPT, "chosen": pair.chosen, "rejected": pair.rejected})
        else:
            passed_over += 1
    if len(rows) < count:
        raise SystemExit(
            f"only {len(rows)} {PAIRS_SOURCE} pairs fit in {max_length} tokens, "
            f"{count} needed; raise --max-length or lower --steps / --batch-size"
        )
    write_jsonl(path, rows)
    return passed_over


def read_pairs(path: str) -> list[dict[str, str]]:
    """The pairs file's rows, as TRL's trainers take them (plain strings)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_all_kept(trainer: Any, rows: int) -> None:
    """Stop unless TRL kept every pair (it drops over-long ones): same data on both sides."""
    kept = len(trainer.train_dataset)
    if kept != rows:
        raise SystemExit(
            f"TRL kept {kept} of {rows} pairs after tokenising; the two sides "
            "would not train on the same data"
        )


# --- each side's steps, ticked by the same clock -------------------------------------------------


def tick_trl_steps(trainer: Any, clock: common.StepClock) -> None:
    """Tick ``clock`` at each of ``trainer``'s optimiser-step ends with the step's loss and
    the padded tokens of its forward (``input_ids`` of every ``compute_loss`` call)."""
    from transformers import TrainerCallback

    compute_loss = trainer.compute_loss
    last_loss: list[float] = []

    def counted_compute_loss(model, inputs, *args, **kwargs):
        result = compute_loss(model, inputs, *args, **kwargs)
        if model.training:
            clock.add_tokens(inputs["input_ids"].numel())
            loss = result[0] if isinstance(result, tuple) else result
            last_loss[:] = [float(loss.detach())]
        return result

    class Tick(TrainerCallback):
        def on_step_end(self, training_args, state, control, **kwargs):
            clock.tick(loss=last_loss[0] if last_loss else None)

    trainer.compute_loss = counted_compute_loss  # the instance attribute shadows the method
    trainer.add_callback(Tick())


def computed_tokens(attention_mask: Any, device: str) -> int:
    """The tokens an rlhfkit forward of this (B, T) batch computes: the real ones where it runs
    batches packed (SmolLM2 on the CPU, ``rlhfkit.packing``), else the padded grid."""
    from rlhfkit.packing import PACKED_DEVICES

    packed = common.resolve_device(device) in PACKED_DEVICES
    return int(attention_mask.sum()) if packed else attention_mask.numel()


def tick_rlhfkit_steps(clock: common.StepClock) -> None:
    """Tick ``clock`` at each of rlhfkit's offline optimiser-step ends, with the step's loss.

    ``offline.Fitting`` logs one row per step right after the optimiser step (``log.every`` 1),
    the only rows with a "loss" (held-out rows have "eval/..." keys)."""
    from rlhfkit.train import runs

    log_metrics = runs.Run.log

    def log_and_tick(run, step, metrics):
        if "loss" in metrics:
            clock.tick(loss=metrics["loss"])
        log_metrics(run, step, metrics)

    runs.Run.log = log_and_tick


def offline_child(args: argparse.Namespace, runners: dict[str, Callable]) -> None:
    """A child run: ``runners[side](args, model_dir, clock)`` trains, then the result is written."""
    common.set_up_child(args.child, args.threads, args.trl_allocator)
    from rlhfkit.models import resolve_model_dir

    model_dir = str(resolve_model_dir(args.model))
    clock = common.StepClock(warmup=args.warmup, device=common.resolve_device(args.device))
    runners[args.child](args, model_dir, clock)
    common.write_result(args.result, clock.result())


# --- the parent: both sides in turn, one table ---------------------------------------------------


def compare_offline(script: str, args: argparse.Namespace, argv: list[str], title: str) -> None:
    """The parent: write the pairs file, run both sides in turn, print the summary table."""
    import platform
    from importlib.metadata import version

    from rlhfkit.models import resolve_model_dir

    device = common.resolve_device(args.device)
    count = (args.warmup + args.steps) * args.batch_size
    with tempfile.TemporaryDirectory(prefix="rlhfkit-bench-pairs-") as data_dir:
        pairs = Path(data_dir) / "pairs.jsonl"
        passed_over = write_pairs_file(
            pairs, count, args.max_length, str(resolve_model_dir(args.model))
        )
        print(
            f"{title}; {common.model_name(args.model)} fp32 on {device} "
            f"({platform.processor() or platform.machine()}, {args.threads} threads): {count} "
            f"{PAIRS_SOURCE} pairs under a fixed prompt ({passed_over} longer than "
            f"{args.max_length} tokens passed over), batch {args.batch_size}, lr {args.lr:g}; "
            f"{args.steps} measured steps after {args.warmup} warm-up, {args.repeats} "
            f"repeat(s); {common.allocator_phrase(args.trl_allocator)}; "
            f"torch {version('torch')}, transformers {version('transformers')}, "
            f"trl {version('trl')}",
            flush=True,
        )
        results = common.run_alternating(
            script,
            OFFLINE_SIDES,
            [*argv, f"--pairs={pairs}"],
            args.repeats,
            args.threads,
            describe_offline_run,
        )
    ours, theirs = (
        summarize_offline(side, results[side], args.batch_size) for side in OFFLINE_SIDES
    )
    gpu = device == "cuda"
    common.print_table(offline_headers(gpu), offline_rows(ours, theirs, gpu))
    if args.json:
        common.save_json(
            args.json, {"settings": vars(args), "rlhfkit": ours, "trl": theirs, "runs": results}
        )


def describe_offline_run(result: dict) -> str:
    """One offline run's line: step times, start-up, amortised time, loss, memory."""
    steps = ", ".join(f"{s:.2f}" for s in result["step_seconds"])
    losses = result["losses"]
    return (
        f"s/step: {steps}  (median {statistics.median(result['step_seconds']):.2f}, CPU "
        f"{statistics.median(result['cpu_seconds']):.2f}); first step ends at "
        f"{result['first_step_seconds']:.1f} s, amortised "
        f"{result['last_step_seconds'] / result['steps_run']:.2f} s/step; loss "
        f"{losses[0]:.4f} -> {losses[-1]:.4f}; peak RSS {result['peak_rss'] / 2**30:.2f} GiB; "
        f"{result['run_seconds']:.0f} s in all"
    )


@dataclass
class OfflineSummary:
    """One framework's figures on an offline benchmark, every repeat pooled."""

    name: str
    median_step_seconds: float
    median_cpu_seconds: float
    run_medians: list[float]
    first_step_seconds: float  # median over runs: child start -> first optimiser step's end
    amortised_step_seconds: float  # median over runs: child start -> last step's end, per step
    pairs_per_second: float
    tokens_per_step: float  # padded tokens through the model per step (the compute done)
    peak_rss_gib: float
    peak_gpu_gib: float


def summarize_offline(name: str, results: list[dict], batch_size: int) -> OfflineSummary:
    seconds = [s for r in results for s in r["step_seconds"]]
    return OfflineSummary(
        name=name,
        median_step_seconds=statistics.median(seconds),
        median_cpu_seconds=statistics.median(c for r in results for c in r["cpu_seconds"]),
        run_medians=[statistics.median(r["step_seconds"]) for r in results],
        first_step_seconds=statistics.median(r["first_step_seconds"] for r in results),
        amortised_step_seconds=statistics.median(
            r["last_step_seconds"] / r["steps_run"] for r in results
        ),
        pairs_per_second=batch_size * len(seconds) / sum(seconds),
        tokens_per_step=statistics.mean(t for r in results for t in r["tokens"]),
        peak_rss_gib=max(r["peak_rss"] for r in results) / 2**30,
        peak_gpu_gib=max(r["peak_gpu"] for r in results) / 2**30,
    )


def offline_headers(gpu: bool) -> list[str]:
    headers = [
        "",
        "median s/step",
        "per-run medians",
        "median CPU s/step",
        "time to first step s",
        "amortised s/step",
        "pairs/s",
        "tokens/step",
        "peak RSS GiB",
    ]
    return headers + (["peak GPU GiB"] if gpu else [])


def offline_rows(ours: OfflineSummary, theirs: OfflineSummary, gpu: bool) -> list[list[str]]:
    """Rows of the offline summary table: each side, then ours / theirs."""
    figures = [
        "median_step_seconds",
        "median_cpu_seconds",
        "first_step_seconds",
        "amortised_step_seconds",
        "pairs_per_second",
        "tokens_per_step",
        "peak_rss_gib",
    ]
    figures += ["peak_gpu_gib"] if gpu else []
    formats = {"first_step_seconds": ".1f", "tokens_per_step": ".0f", "pairs_per_second": ".2f"}

    def row(s: OfflineSummary) -> list[str]:
        cells = [f"{getattr(s, key):{formats.get(key, '.2f')}}" for key in figures]
        return [s.name, cells[0], ", ".join(f"{m:.2f}" for m in s.run_medians), *cells[1:]]

    ratios = [f"{getattr(ours, key) / max(getattr(theirs, key), 1e-9):.2f}x" for key in figures]
    return [row(ours), row(theirs), [f"{ours.name} / {theirs.name}", ratios[0], "", *ratios[1:]]]
