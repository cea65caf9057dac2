"""What ``--run.deterministic`` costs: ``rlhfkit grpo`` with and without it, side by side.

Each run is a fresh ``rlhfkit grpo`` process (the flag changes process-wide settings that are
read once, such as MKL's reproducible mode); the sides alternate (A B, B A, ...) so drift in a
shared machine's load falls on both. A run's step times are read back from its metrics.jsonl;
its first step (one-time costs) is left out. Both sides sample the same completions until
the default side's arithmetic drifts, so the work per step is the same.

    python bench/deterministic.py                  # SmolLM2, 6 steps, 2 repeats per side
    python bench/deterministic.py --steps 10 --repeats 3 --autocast auto
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import alternating_order, child_env, print_table

SIDES = ("default", "deterministic")


def run(side: str, args: argparse.Namespace, directory: Path) -> list[float]:
    """One ``rlhfkit grpo`` run; its step times after the first, in seconds."""
    command = [
        sys.executable,
        "-m",
        "rlhfkit",
        "grpo",
        "--steps",
        str(args.steps),
        "--model.path",
        args.model,
        "--model.autocast",
        args.autocast,
        "--run.seed",
        str(args.seed),
        "--data.eval_size",
        "0",
        "--run.checkpoint_every",
        "0",
        "--log.tensorboard",
        "false",
        "--log.progress",
        "false",
        "--run.output_dir",
        str(directory),
    ]
    if side == "deterministic":
        command.append("--run.deterministic")
    completed = subprocess.run(command, env=child_env(args.threads), capture_output=True, text=True)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-6000:])
        raise SystemExit(f"{side} run failed (exit {completed.returncode}); its output is above")
    rows = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    return [row["step_seconds"] for row in rows[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=6, help="GRPO steps per run (the first is not timed)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per side")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every run")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--autocast", default="off", choices=("off", "auto", "bfloat16"))
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be at least 2 and --repeats at least 1")

    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="rlhfkit-bench-det-") as tmp:
        for repeat, side in alternating_order(SIDES, args.repeats):
            steps = run(side, args, Path(tmp) / f"{side}-{repeat}")
            seconds[side] += steps
            print(
                f"  repeat {repeat + 1} {side:13s} median step {statistics.median(steps):.2f} s",
                flush=True,
            )
    medians = {side: statistics.median(values) for side, values in seconds.items()}
    print(
        f"\nrlhfkit grpo, {args.model}, autocast {args.autocast}, {args.threads} threads, "
        f"{args.repeats} x {args.steps - 1} timed steps per side"
    )
    print_table(
        ["side", "median s/step", "steps timed"],
        [[side, f"{medians[side]:.2f}", str(len(seconds[side]))] for side in SIDES],
    )
    print(f"\ndeterministic / default: {medians['deterministic'] / medians['default']:.2f}x")


if __name__ == "__main__":
    main()
