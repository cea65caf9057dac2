"""rlhfkit's token draw (``generation.sampling.draw``) against ``torch.multinomial``, which
transformers' ``generate`` samples with: time per draw on one batch of next-token
distributions, and how far each one's frequencies fall from the distribution itself.

    python bench/draw_vs_multinomial.py               # 16 rows x SmolLM2's 49,152 tokens
    python bench/draw_vs_multinomial.py --rows 64 --vocab 151936

On the CPU only: on any other device ``draw`` is ``torch.multinomial``, which is fast there.

The distributions are softmax(3 z), z standard normal per entry: a few hundred tokens hold most
of the mass, like a language model's. Both sides draw one token per row per call, from the
same tensor, in alternating calls; the table reports the median over ``--calls``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (the bench folder is not a package)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=16, help="distributions per call (batch)")
    parser.add_argument("--vocab", type=int, default=49_152, help="tokens per distribution")
    parser.add_argument("--calls", type=int, default=50, help="timed calls per side")
    parser.add_argument(
        "--check-draws",
        type=int,
        default=400_000,
        help="draws of one small distribution for the frequency check",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    common.limit_threads(args.threads)
    import torch

    from rlhfkit.generation.sampling import draw

    torch.manual_seed(args.seed)
    probs = (3 * torch.randn(args.rows, args.vocab)).softmax(dim=-1)
    sides = {
        "rlhfkit draw": draw,
        "torch.multinomial": lambda p: torch.multinomial(p, 1).squeeze(-1),
    }

    def timed(fn) -> float:
        start = time.perf_counter()
        fn(probs)
        return time.perf_counter() - start

    seconds = {name: [] for name in sides}
    for fn in sides.values():  # warm-up
        timed(fn)
    for _ in range(args.calls):
        for name, fn in sides.items():
            seconds[name].append(timed(fn))

    # frequencies on a 64-token slice of one row (renormalised), against its probabilities
    small = probs[0, :64] / probs[0, :64].sum()
    many = small.expand(args.check_draws, -1)
    distance = {}
    for name, fn in sides.items():
        counts = torch.bincount(fn(many), minlength=64).double()
        distance[name] = 0.5 * float((counts / args.check_draws - small.double()).abs().sum())

    print(
        f"one token per row from {args.rows} x {args.vocab} probabilities on the CPU, "
        f"{args.threads} threads, torch {torch.__version__}; {args.calls} calls per side"
    )
    median = {name: statistics.median(times) for name, times in seconds.items()}
    rows = [[name, f"{median[name] * 1e3:.2f}", f"{distance[name]:.4f}"] for name in sides]
    ours, theirs = median.values()
    rows.append(["rlhfkit / torch", f"{ours / theirs:.3f}x", ""])
    common.print_table(
        ["", "median ms / draw", f"total variation, {args.check_draws:,} draws of 64 tokens"], rows
    )
    # a perfect sampler's expected distance: 1/2 sum_i E|f_i - p_i|, E|f_i - p_i| ~ sqrt(2 p_i
    # (1 - p_i) / (pi n)) for n draws (the normal approximation of a binomial frequency)
    p = small.double()
    floor = 0.5 * float((2 * p * (1 - p) / (math.pi * args.check_draws)).sqrt().sum())
    print(f"(a perfect sampler's expected total variation at this many draws: {floor:.4f})")


if __name__ == "__main__":
    main()
