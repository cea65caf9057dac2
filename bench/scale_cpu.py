"""Data parallelism on the CPU: one process x 2 threads against 2 processes x 1 thread.

The same SFT run (model, data, global batch, steps) three ways, each in fresh processes:

- ``one``: one process, 2 threads, batch B;
- ``ddp`` / ``fsdp2``: ``torchrun --nproc_per_node 2`` (gloo), 1 thread each, batch B / 2 per
  rank, ``--dist.strategy`` ddp or fsdp2.

It prints the median time per optimiser step and its ratio to ``one`` (what distribution
costs: gradient reductions, FSDP2's gathers, the ranks waiting for each other), each process's
peak resident memory, and each rank's model state (parameters, gradients and AdamW's two
moments, counted from the tensors each rank holds: FSDP2 shards them, DDP replicates them)::

    python bench/scale_cpu.py                 # SmolLM2-135M, global batch 8 x 128 tokens
    python bench/scale_cpu.py --quick         # a smoke check: 2 steps, 4 x 32 tokens
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import child_env, peak_rss_bytes, print_table  # noqa: E402

MODES = ("one", "ddp", "fsdp2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--batch", type=int, default=8, help="global batch (sequences per step)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=6, help="measured steps")
    parser.add_argument("--warmup", type=int, default=2, help="steps run first, not measured")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.batch, args.tokens, args.steps, args.warmup = 4, 32, 2, 1
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="rlhfkit-scale-") as work:
        write_demos(Path(work), args)
        results: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for _ in range(args.repeats):
            for mode in MODES:
                results[mode].append(run(mode, Path(work), args))
    report(results, args)


def write_demos(work: Path, args: argparse.Namespace) -> None:
    """Demonstrations of ``--tokens`` tokens or so (words of ~1 token), enough for every step."""
    words = "the movie was a delight and the plot kept me on the edge of my seat".split()
    rows = []
    for i in range(args.batch * (args.steps + args.warmup)):  # cut to exactly --tokens tokens
        text = " ".join(words[(i + k) % len(words)] for k in range(args.tokens))
        rows.append({"prompt": f"Review {i}:", "completion": " " + text})
    (work / "demos.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def run(mode: str, work: Path, args: argparse.Namespace) -> dict:
    ranks = 1 if mode == "one" else 2
    argv = [__file__, "--child", mode, "--work", str(work)]
    argv += ["--model", args.model, "--batch", str(args.batch), "--tokens", str(args.tokens)]
    argv += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    command = [sys.executable, *argv]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *argv]
    out = work / f"{mode}.rank0.json"
    for old in work.glob(f"{mode}.rank*.json"):
        old.unlink()
    subprocess.run(command, env=child_env(2 // ranks), check=True, stdout=subprocess.DEVNULL)
    return {
        "ranks": [json.loads((work / f"{mode}.rank{r}.json").read_text()) for r in range(ranks)],
        **json.loads(out.read_text()),
    }


def child(args: argparse.Namespace) -> None:
    import torch

    from rlhfkit import distributed
    from rlhfkit.config import DistCfg, FeedbackDataCfg, LogCfg, ModelCfg, OptimCfg, RunCfg
    from rlhfkit.train import offline, sft

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    warnings.filterwarnings("ignore", message=".*were cut")  # every example is, to one length
    work = Path(args.work)
    distributed.init(timeout_s=600)
    ranks = distributed.world_size()
    cfg = sft.Config(
        model=ModelCfg(path=args.model, device="cpu"),
        data=FeedbackDataCfg(path=str(work / "demos.jsonl"), eval_fraction=0),
        train=offline.TrainCfg(
            batch_size=args.batch // ranks,
            max_steps=args.steps + args.warmup,
            max_length=args.tokens,
            group_by_length=False,
        ),
        optim=OptimCfg(lr=1e-5),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(work / f"run-{args.child}"), overwrite=True, checkpoint_every=0),
        dist=DistCfg(strategy="fsdp2" if args.child == "fsdp2" else "ddp"),
    )
    result = sft.train(cfg)
    local = [p.to_local() if hasattr(p, "to_local") else p.data for p in result.model.parameters()]
    trainable = [
        t for t, p in zip(local, result.model.parameters(), strict=True) if p.requires_grad
    ]
    state = sum(t.numel() * t.element_size() for t in local)
    state += 3 * sum(t.numel() * t.element_size() for t in trainable)  # gradient, 2 moments
    mine = {"peak_rss": peak_rss_bytes(), "model_state": state}
    (work / f"{args.child}.rank{distributed.rank()}.json").write_text(json.dumps(mine))
    if distributed.is_main():
        times = [row["time"] for row in result.run.metrics() if "loss" in row]
        steps = [b - a for a, b in zip(times, times[1:], strict=False)][args.warmup - 1 :]
        (work / f"{args.child}.rank0.json").write_text(json.dumps({**mine, "steps": steps}))
    distributed.shutdown()


def report(results: dict[str, list[dict]], args: argparse.Namespace) -> None:
    medians = {
        mode: statistics.median(s for r in runs for s in r["steps"])
        for mode, runs in results.items()
    }
    gib = 2**30
    rows = []
    for mode, runs in results.items():
        ranks = runs[0]["ranks"]
        rows.append(
            [
                {"one": "1 process x 2 threads", "ddp": "2 x 1, DDP", "fsdp2": "2 x 1, FSDP2"}[
                    mode
                ],
                f"{medians[mode]:.3f}",
                f"{medians[mode] / medians['one']:.2f}x",
                " / ".join(
                    f"{max(r['ranks'][i]['peak_rss'] for r in runs) / gib:.2f}"
                    for i in range(len(ranks))
                ),
                f"{ranks[0]['model_state'] / gib:.3f}",
            ]
        )
    print(
        f"\nSFT on {args.model}, global batch {args.batch} x ~{args.tokens} tokens, "
        f"{args.steps} measured steps x {args.repeats} repeat(s)\n"
    )
    print_table(
        [
            "run",
            "median s/step",
            "vs one process",
            "peak RSS per process (GiB)",
            "model state per rank (GiB)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
