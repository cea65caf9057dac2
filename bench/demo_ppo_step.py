"""The demo's PPO step under two settings of one knob, alternated in one run: where a step's time goes.

    python bench/demo_ppo_step.py                        # huge pages for tensors on and off
    python bench/demo_ppo_step.py --compare autocast     # bfloat16 autocast on and off
    python bench/demo_ppo_step.py --compare critic       # a value head on the policy, or a critic
    python bench/demo_ppo_step.py --compare allocator    # freed memory kept for reuse, or not
    python bench/demo_ppo_step.py --compare checkpointing  # layers recomputed in backward, or kept

Each run is ``rlhfkit demo``'s PPO stage as configured (SmolLM2-135M-Instruct, 16 movie openings
x 24 new tokens, policy + critic + reference, one epoch of one micro-batch), against the
``sentiment`` reward so that no reward model is trained first, with checkpoints off. The two
sides differ in one setting only:

- ``huge-pages``: ``THP_MEM_ALLOC_ENABLE=1`` (what every ``rlhfkit`` command sets unless the
  user did) against ``0``: whether torch backs tensors of 2 MB and more with transparent huge
  pages, which the kernel must allow (``/sys/kernel/mm/transparent_hugepage/enabled`` is
  ``always`` or ``madvise``).
- ``autocast``: ``--model.autocast bfloat16`` against ``off``, the demo's ``auto`` forced each way.
- ``allocator``: glibc's malloc keeping freed memory for the next step
  (``rlhfkit.host_memory.keep_freed_memory``, what every ``rlhfkit`` command asks for) against
  its default, which unmaps large freed buffers (the side sets ``MALLOC_TRIM_THRESHOLD_``, the
  documented way to opt out).
- ``checkpointing``: ``--model.gradient_checkpointing true`` against ``false``: the decoder
  layers' activations recomputed in the backward pass, or kept from the forward.
- ``critic``: ``--critic.share_policy true`` (the demo's default: a value head on the policy's
  trunk, one backbone pass for log-probs and values) against ``false`` (a separate 135M critic).

A step is timed between two optimiser-step ends (``common.StepClock``), and each phase of it by
wrapping the function that does it: sampling, the reward, the policy's and reference's forward
passes (with a shared trunk, the pass that also gives the values), a separate critic's forward,
the backward pass and the optimiser steps. The table shows the
median of each over every measured step of every repeat, and the minor page faults of the
whole child (loading included).
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (the bench folder is not a package)


class Side(NamedTuple):
    name: str
    env: dict[str, str] = {}  # set in the child before torch is imported
    autocast: str = ""  # --model.autocast; empty keeps the demo's own
    share_policy: bool | None = None  # --critic.share_policy; None keeps the demo's own
    checkpointing: bool = False  # --model.gradient_checkpointing


SETTINGS = {  # --compare: its two sides
    "huge-pages": (
        Side("huge-pages", env={"THP_MEM_ALLOC_ENABLE": "1"}),
        Side("4k-pages", env={"THP_MEM_ALLOC_ENABLE": "0"}),
    ),
    "autocast": (Side("autocast", autocast="bfloat16"), Side("float32", autocast="off")),
    "critic": (
        Side("shared-trunk", share_policy=True),
        Side("separate-critic", share_policy=False),
    ),
    "checkpointing": (
        Side("checkpointed", checkpointing=True),
        Side("kept", checkpointing=False),
    ),
    "allocator": (
        Side("keep-freed"),
        Side("glibc-malloc", env={"MALLOC_TRIM_THRESHOLD_": "131072"}),
    ),
}
PHASES = ("sample", "reward", "policy forwards", "critic forward", "backward", "optimiser")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=tuple(SETTINGS), default="huge-pages")
    parser.add_argument("--steps", type=int, default=4, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="steps run before measuring")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternated")
    parser.add_argument("--json", default="", help="also write every figure to this file")
    common.add_run_options(parser)
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result", default="", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    common.require_positive(parser, args, ("steps", "warmup", "repeats", "threads"))
    return args


def child(args: argparse.Namespace) -> None:
    side = next(side for side in SETTINGS[args.compare] if side.name == args.child)
    os.environ.update(side.env)  # torch reads THP_MEM_ALLOC_ENABLE at its first allocation
    common.set_up_child("rlhfkit", args.threads)  # both sides are rlhfkit; an env may opt out
    from dataclasses import replace

    import torch

    from rlhfkit import models
    from rlhfkit.commands import demo
    from rlhfkit.models import critic
    from rlhfkit.train import ppo, rollout, runs

    base = demo.Config()
    cfg = replace(
        base,
        reward="sentiment",
        steps=args.warmup + args.steps,
        model=replace(
            base.model,
            path=args.model,
            device=args.device,
            autocast=side.autocast or base.model.autocast,
            gradient_checkpointing=side.checkpointing,
        ),
        run=replace(
            base.run,
            output_dir=str(Path(args.scratch) / "run"),
            overwrite=True,
            checkpoint_every=0,
            seed=args.seed,
        ),
    )
    if side.share_policy is not None:
        cfg = replace(cfg, critic=replace(cfg.critic, share_policy=side.share_policy))
    seconds = dict.fromkeys(PHASES, 0.0)  # this step's time in each phase so far
    per_step: dict[str, list[float]] = {phase: [] for phase in PHASES}

    def timed(phase, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            started = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds[phase] += time.perf_counter() - started

        return wrapper

    for owner, name, phase in (
        (rollout, "sample", "sample"),
        (rollout, "score", "reward"),
        (models, "token_logprobs", "policy forwards"),
        (critic.PolicyValueHead, "evaluate", "policy forwards"),
        (critic.ValueModel, "forward", "critic forward"),
        (torch.Tensor, "backward", "backward"),
        (torch.optim.AdamW, "step", "optimiser"),
    ):
        setattr(owner, name, timed(phase, getattr(owner, name)))

    clock = common.StepClock(warmup=args.warmup)
    log_metrics = runs.Run.log

    def log_and_tick(run, step, metrics):
        clock.tick(round(metrics["length"] * cfg.algo.prompts_per_step), metrics["reward"])
        if step > args.warmup:
            for phase in PHASES:
                per_step[phase].append(seconds[phase])
        seconds.update(dict.fromkeys(PHASES, 0.0))
        log_metrics(run, step, metrics)

    runs.Run.log = log_and_tick
    ppo.train(cfg)
    common.write_result(
        args.result,
        {
            **clock.result(),
            "phases": per_step,
            "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
        },
    )


def child_argv(args: argparse.Namespace) -> list[str]:
    return [
        "--compare",
        args.compare,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--device",
        args.device,
        "--model",
        args.model,
        "--seed",
        str(args.seed),
    ]


def describe_run(result: dict) -> str:
    return (
        f"{statistics.median(result['step_seconds']):.2f} s/step, "
        f"{result['minor_faults'] / 1e6:.2f}M minor page faults"
    )


def phase_rows(names: tuple[str, str], results: dict[str, list[dict]]) -> list[list[str]]:
    """Median seconds of each phase per step on each side, and their ratio."""
    rows = []
    for phase in PHASES:
        a, b = (
            statistics.median(s for r in results[name] for s in r["phases"][phase])
            for name in names
        )
        rows.append([phase, f"{a:.2f}", f"{b:.2f}", f"{a / b:.2f}x" if b else ""])
    faults = [statistics.median(r["minor_faults"] for r in results[name]) / 1e6 for name in names]
    rows.append(
        [
            "minor page faults (M, whole run)",
            f"{faults[0]:.2f}",
            f"{faults[1]:.2f}",
            f"{faults[0] / faults[1]:.2f}x",
        ]
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return
    import platform

    names = tuple(side.name for side in SETTINGS[args.compare])
    print(
        f"rlhfkit demo's PPO step, {common.model_name(args.model)}, {names[0]} against "
        f"{names[1]} ({platform.processor() or platform.machine()}, {args.threads} threads): "
        f"{args.steps} measured steps after {args.warmup} warm-up, {args.repeats} repeat(s)",
        flush=True,
    )
    results = common.run_alternating(
        __file__, names, child_argv(args), args.repeats, args.threads, describe_run
    )
    first, second = (common.summarize(name, results[name]) for name in names)
    common.print_table(
        common.comparison_headers(False), common.comparison_rows(first, second, False)
    )
    print()
    common.print_table(["median s/step", *names, "ratio"], phase_rows(names, results))
    if args.json:
        common.save_json(
            args.json, {"settings": vars(args), names[0]: first, names[1]: second, "runs": results}
        )


if __name__ == "__main__":
    main()
