"""Sampling a GRPO batch with each distinct prompt prefilled once (rlhfkit's hf backend) against
running every row's prompt through the model (``model.generate`` on the whole batch, as TRL's
GRPOTrainer does without vLLM): seconds per batch and whether greedy decoding agrees.

    python bench/shared_prompt_prefill.py                    # 4 prompts x G=4, 24 new tokens
    python bench/shared_prompt_prefill.py --join 20 --group-size 8   # ~160-token prompts

A prompt is ``--join`` consecutive movie openings of ``vader:movies`` joined by spaces (1: one
opening, ~8 tokens; 20: ~160 tokens), or the chat template around them with ``--chat``. Both
sides are the same backend and settings (temperature 1, no top-p or top-k, one batch); the peer
only skips the shared prefill. Calls alternate; the table reports the median of ``--calls``.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--prompts", type=int, default=4, help="distinct prompts per batch")
    parser.add_argument("--group-size", type=int, default=4, help="completions per prompt (G)")
    parser.add_argument("--join", type=int, default=1, help="movie openings per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    parser.add_argument("--calls", type=int, default=4, help="timed calls per side")
    common.add_run_options(parser)
    args = parser.parse_args(argv)
    common.require_positive(
        parser, args, ("prompts", "group_size", "join", "max_new_tokens", "calls")
    )
    common.limit_threads(args.threads)
    import torch

    from rlhfkit.config import GenCfg, ModelCfg
    from rlhfkit.data.builtin import load_builtin
    from rlhfkit.generation.hf import HFBackend
    from rlhfkit.models import load_causal_lm

    class EveryRow(HFBackend):
        """The same backend without the shared prefill: generate runs each row's prompt."""

        def _prefill_once_per_prompt(self, input_ids, prompt_mask):
            return {}

    model, tokenizer = load_causal_lm(
        ModelCfg(path=args.model, dtype="float32", device=common.resolve_device(args.device))
    )
    openings = [row["prompt"] for row in load_builtin("vader:movies", "train")]
    if len(openings) < args.prompts * args.join:
        parser.error(
            f"--prompts x --join needs {args.prompts * args.join} openings; "
            f"vader:movies has {len(openings)}"
        )
    distinct = [
        " ".join(openings[i * args.join : (i + 1) * args.join]) for i in range(args.prompts)
    ]
    prompts = [prompt for prompt in distinct for _ in range(args.group_size)]
    sides = {
        "prefill once per prompt": HFBackend(model, tokenizer),
        "every row": EveryRow(model, tokenizer),
    }

    def cfg(temperature: float) -> GenCfg:
        return GenCfg(
            max_new_tokens=args.max_new_tokens,
            temperature=temperature,
            top_p=1.0,
            top_k=0,
            batch_size=len(prompts),
            chat_template="on" if args.chat else "off",
        )

    greedy = [backend.generate(prompts, cfg(0.0), args.seed) for backend in sides.values()]
    agree = greedy[0].response_ids.equal(greedy[1].response_ids)
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for call in range(args.calls):
        order = list(sides.items()) if call % 2 == 0 else list(sides.items())[::-1]
        for name, backend in order:
            start = time.perf_counter()
            backend.generate(prompts, cfg(1.0), args.seed + call)
            seconds[name].append(time.perf_counter() - start)

    width = greedy[0].prompt_ids.shape[1]
    print(
        f"{common.model_name(args.model)} fp32 on {model.device}, {args.threads} threads, "
        f"torch {torch.__version__}: {args.prompts} prompts x G={args.group_size}, prompts "
        f"padded to {width} tokens, {args.max_new_tokens} new tokens; {args.calls} calls a side"
    )
    median = {name: statistics.median(times) for name, times in seconds.items()}
    rows = [
        [name, f"{median[name]:.2f}", ", ".join(f"{s:.2f}" for s in seconds[name])]
        for name in sides
    ]
    ours, theirs = median.values()
    rows.append(["once / every row", f"{ours / theirs:.2f}x", ""])
    common.print_table(["", "median s / batch", "each call"], rows)
    print(f"greedy completions identical: {'yes' if agree else 'NO'}")


if __name__ == "__main__":
    main()
