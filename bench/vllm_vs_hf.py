"""rlhfkit's vllm generation backend against its hf backend: sampling speed, then GRPO steps.

    python bench/vllm_vs_hf.py                          # sampling: 4 prompts x G=4, 24 new tokens
    python bench/vllm_vs_hf.py --part grpo --steps 6    # GRPO steps, each side a child run

Run it with the environment `make vllm-env` makes (.vllm-env/bin/python): vLLM's CPU build
pins a transformers older than the project's own environment has.

Sampling: one process loads the model once and builds both backends around it; calls
alternate between them on the same prompts (GRPO's batch: ``--prompts`` movie openings of
``vader:movies``, each ``--group-size`` times), temperature 1, no top-p or top-k. A vllm call
includes pushing the policy's weights into the engine, as every rollout of a training step
does; the push alone is timed too. Tokens/s counts generated tokens, EOS included: sampling
is random and a side whose completions end early does less work.

GRPO: ``rlhfkit grpo --gen.backend hf`` and ``--gen.backend vllm`` as child processes, in
alternating order, with the same settings (the ``length`` reward, ``--steps`` steps); the table
reports each side's median ``step_seconds`` over the steps after the first (vLLM's engine is
built before step 1, so no step includes it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
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
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--calls", type=int, default=4, help="timed sampling calls per side")
    parser.add_argument("--part", choices=("sampling", "grpo", "both"), default="sampling")
    parser.add_argument(
        "--steps", type=int, default=6, help="GRPO steps per run (first unmeasured)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="GRPO runs per side")
    common.add_run_options(parser)
    args = parser.parse_args(argv)
    common.require_positive(
        parser, args, ("prompts", "group_size", "max_new_tokens", "calls", "steps", "repeats")
    )
    common.limit_threads(args.threads)
    if args.part in ("sampling", "both"):
        sampling(args)
    if args.part in ("grpo", "both"):
        grpo_steps(args)


def sampling(args: argparse.Namespace) -> None:
    import torch

    from rlhfkit.config import GenCfg, ModelCfg
    from rlhfkit.data.builtin import load_builtin
    from rlhfkit.generation import get_backend
    from rlhfkit.models import load_causal_lm, token_logprobs

    model, tokenizer = load_causal_lm(ModelCfg(path=args.model, dtype="float32", device="cpu"))
    openings = [row["prompt"] for row in load_builtin("vader:movies", "train")][: args.prompts]
    prompts = [prompt for prompt in openings for _ in range(args.group_size)]
    started = time.perf_counter()
    sides = {"vllm": get_backend("vllm", model, tokenizer)}
    built = time.perf_counter() - started
    sides["hf"] = get_backend("hf", model, tokenizer)
    cfg = GenCfg(max_new_tokens=args.max_new_tokens, batch_size=len(prompts), chat_template="off")
    for backend in sides.values():  # warm-up: vLLM's first call sets up its kernels
        backend.generate(prompts, cfg, args.seed)
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    tokens: dict[str, int] = {name: 0 for name in sides}
    rollouts = {}
    for call in range(args.calls):
        order = list(sides.items()) if call % 2 == 0 else list(sides.items())[::-1]
        for name, backend in order:
            start = time.perf_counter()
            rollouts[name] = backend.generate(prompts, cfg, args.seed + call)
            seconds[name].append(time.perf_counter() - start)
            tokens[name] += int(rollouts[name].response_lengths.sum())
    gaps = {}  # each side's recorded log-probs against the trainer's forward pass
    for name, rollout in rollouts.items():
        with torch.no_grad():
            forward = token_logprobs(
                model, rollout.input_ids, rollout.attention_mask, rollout.prompt_ids.shape[1]
            )
        gaps[name] = float(((rollout.logprobs - forward) * rollout.response_mask).abs().max())
    pushes = []
    for _ in range(args.calls):
        start = time.perf_counter()
        sides["vllm"].push_weights()
        pushes.append(time.perf_counter() - start)

    print(
        f"{common.model_name(args.model)} fp32 on CPU, {args.threads} threads, torch "
        f"{torch.__version__}: {args.prompts} prompts x G={args.group_size}, "
        f"{args.max_new_tokens} new tokens, temperature 1; {args.calls} calls a side "
        f"(vllm engine built in {built:.1f} s)"
    )
    rate = {name: tokens[name] / sum(seconds[name]) for name in sides}
    rows = [
        [
            name,
            f"{statistics.median(seconds[name]):.2f}",
            f"{rate[name]:.0f}",
            ", ".join(f"{s:.2f}" for s in seconds[name]),
        ]
        for name in sides
    ]
    rows.append(["vllm / hf", "", f"{rate['vllm'] / rate['hf']:.2f}x", ""])
    common.print_table(["", "median s / batch", "tokens/s", "each call"], rows)
    print(f"vllm weight push alone: median {statistics.median(pushes):.2f} s")
    print(
        "max |sampled log-prob - forward pass| on the last batch: "
        + ", ".join(f"{name} {gap:.1e}" for name, gap in gaps.items())
    )


def grpo_steps(args: argparse.Namespace) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    runs: dict[str, list[list[dict]]] = {"hf": [], "vllm": []}
    for repeat, side in common.alternating_order(("vllm", "hf"), args.repeats):
        out = scratch / f"{side}-{repeat}"
        command = [
            *(sys.executable, "-m", "rlhfkit", "grpo"),
            f"--model.path={args.model}",
            "--model.device=cpu",
            "--reward=length",
            f"--steps={args.steps}",
            "--data.prompts=vader:movies",
            "--data.eval_size=0",
            f"--algo.prompts_per_step={args.prompts}",
            f"--algo.group_size={args.group_size}",
            f"--algo.micro_batch_size={args.prompts * args.group_size}",
            f"--gen.max_new_tokens={args.max_new_tokens}",
            f"--gen.batch_size={args.prompts * args.group_size}",
            f"--gen.backend={side}",
            "--log.tensorboard=false",
            "--log.progress=false",
            "--run.checkpoint_every=0",
            f"--run.seed={args.seed}",
            f"--run.output_dir={out}",
        ]
        subprocess.run(
            command, check=True, env=common.child_env(args.threads), stdout=subprocess.DEVNULL
        )
        lines = (out / "metrics.jsonl").read_text().splitlines()
        runs[side].append([json.loads(line) for line in lines])

    print(
        f"\nGRPO: {args.prompts} prompts x G={args.group_size}, {args.max_new_tokens} new "
        f"tokens, length reward, {args.steps} steps a run (first unmeasured), "
        f"{args.repeats} run(s) a side"
    )
    median = {}
    rows = []
    for side, side_runs in runs.items():
        steps = [row for run in side_runs for row in run[1:]]
        median[side] = statistics.median(row["step_seconds"] for row in steps)
        rate = statistics.median(row["tokens_per_second"] for row in steps)
        length = statistics.mean(row["length"] for row in steps)
        rows.append([side, f"{median[side]:.2f}", f"{rate:.0f}", f"{length:.1f}"])
    rows.append(["vllm / hf", f"{median['vllm'] / median['hf']:.2f}x", "", ""])
    common.print_table(["", "median s / step", "completion tok/s", "mean length"], rows)


if __name__ == "__main__":
    main()
