"""The trainers on one GPU through the distributed path: torchrun, NCCL, FSDP2, bf16 compute.

For a session that has a GPU for a few minutes: one launch of ``torchrun --nproc_per_node 1``
runs each trainer for a few steps with ``--dist.strategy fsdp2 --dist.mixed_precision bf16``,
on SmolLM2-135M and on a ~1.5B random-weight Llama built from a config (SmolLM2's tokenizer),
and prints step time, tokens/s and peak GPU memory per run::

    python bench/gpu_check.py                       # on a GPU machine, ~6 minutes
    python bench/gpu_check.py --device cpu --quick  # the same path on the CPU (gloo), smoke test

vLLM is not part of it (the GPU machines here have none).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import child_env, print_table  # noqa: E402

PROMPTS = [f"Write one sentence about the number {i}." for i in range(64)]
TEXT = "The quick brown fox jumps over the lazy dog while the band plays on. " * 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny batches, SmolLM2 only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(Path(args.child))
    with tempfile.TemporaryDirectory(prefix="rlhfkit-gpu-check-") as scratch:
        work = Path(scratch)
        commands = plan(work, args)
        file = work / "commands.json"
        file.write_text(json.dumps(commands))
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1"]
        threads = os.cpu_count() or 1  # torch's own threads; more than the cores thrash
        subprocess.run(
            [*command, __file__, "--child", str(file)], env=child_env(threads), check=True
        )
        report(json.loads((work / "results.json").read_text()), args)


def plan(work: Path, args: argparse.Namespace) -> list[dict]:
    """The runs: (name, tokens per step, argv) for each trainer and model."""
    from rlhfkit.models import resolve_model_dir

    small = str(resolve_model_dir("smollm2"))
    models = {"SmolLM2-135M": small}
    if not args.quick:
        models["Llama-1.5B (random)"] = str(build_big(work / "big", small))
    (work / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    demos = [{"prompt": p, "completion": " " + TEXT} for p in PROMPTS]
    pairs = [{"prompt": p, "chosen": " " + TEXT, "rejected": " " + TEXT[::-1]} for p in PROMPTS]
    for name, rows in (("demos", demos), ("pairs", pairs)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    batch = 2 if args.quick else 8
    tokens = 32 if args.quick else 128
    steps = str(args.steps)
    common = ["--model.device", args.device, "--log.tensorboard", "false"]
    common += ["--log.progress", "false", "--run.checkpoint_every", "0", "--run.overwrite"]
    common += ["--dist.strategy", "fsdp2", "--dist.mixed_precision", "bf16"]
    offline = ["--train.max_steps", steps, "--train.batch_size", str(batch)]
    offline += ["--train.max_length", str(tokens + 32), "--data.eval_fraction", "0"]
    online = ["--data.prompts", str(work / "prompts.txt"), "--data.eval_size", "0"]
    online += ["--reward", "length", "--gen.max_new_tokens", str(tokens)]
    runs = []
    for model_name, path in models.items():
        trainers = {
            "sft": ["sft", *offline, "--data.path", str(work / "demos.jsonl")],
            "dpo": ["dpo", *offline, "--data.path", str(work / "pairs.jsonl")],
            "reward": ["reward", *offline, "--data.path", str(work / "pairs.jsonl")],
            "grpo": ["grpo", *online, "--steps", steps, "--algo.prompts_per_step", str(batch)]
            + ["--algo.group_size", "4", "--algo.micro_batch_size", str(batch)],
            "ppo": ["ppo", *online, "--steps", steps, "--algo.prompts_per_step", str(batch)]
            + ["--algo.micro_batch_size", str(batch)],
            "hindsight hir": ["hindsight", "--method", "hir", *online, "--hir.threshold", "0.5"]
            + ["--rounds.rounds", "1", "--rounds.prompts_per_round", str(batch)]
            + ["--rounds.steps_per_round", steps, "--rounds.batch_size", str(batch)],
        }
        if model_name != "SmolLM2-135M":  # the big model: the trainers that differ most
            trainers = {k: v for k, v in trainers.items() if k in ("sft", "dpo", "grpo")}
        for trainer, argv in trainers.items():
            out = work / "runs" / f"{model_name}-{trainer}".replace(" ", "-")
            run_argv = [*argv, "--model.path", path, *common, "--run.output_dir", str(out)]
            if trainer == "reward":
                run_argv += ["--rm.max_length", str(tokens + 32)]
            per_step = batch * (tokens + 16) * (2 if trainer in ("dpo", "reward") else 1)
            runs.append(
                {
                    "model": model_name,
                    "trainer": trainer,
                    "tokens": per_step,
                    "argv": run_argv,
                    "run": str(out),
                }
            )
    return runs


def build_big(directory: Path, tokenizer_from: str) -> Path:
    """A ~1.5B Llama with random weights (bfloat16 on disk), SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        torch_dtype="bfloat16",
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def child(file: Path) -> None:
    import torch

    from rlhfkit import cli, distributed

    distributed.init(timeout_s=600)
    results = []
    for run in json.loads(file.read_text()):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        code = cli.main(run["argv"])
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
        rows = []
        metrics = Path(run["run"]) / "metrics.jsonl"
        if metrics.exists():
            rows = [json.loads(line) for line in metrics.read_text().splitlines()]
        times = [row["time"] for row in rows if "loss" in row or "reward" in row]
        steps = [b - a for a, b in zip(times, times[1:], strict=False)]
        results.append(
            {
                **run,
                "code": code,
                "seconds": seconds,
                "peak": peak,
                "steps": steps,
                "logged_tps": [r["tokens_per_second"] for r in rows if "tokens_per_second" in r],
            }
        )
    (file.parent / "results.json").write_text(json.dumps(results))
    distributed.shutdown()


def report(results: list[dict], args: argparse.Namespace) -> None:
    import torch

    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"\n{device}, torchrun --nproc_per_node 1, FSDP2, bf16 compute, {args.steps} steps\n")
    rows = []
    for r in results:
        step = statistics.median(r["steps"]) if r["steps"] else float("nan")
        tps = statistics.median(r["logged_tps"]) if r["logged_tps"] else r["tokens"] / step
        rows.append(
            [
                r["model"],
                r["trainer"],
                "ok" if r["code"] == 0 else f"exit {r['code']}",
                f"{step:.3f}",
                f"{tps:.0f}",
                f"{r['peak'] / 2**30:.2f}",
                f"{r['seconds']:.0f}",
            ]
        )
    print_table(
        [
            "model",
            "trainer",
            "result",
            "s/step (median)",
            "tokens/s",
            "peak GPU GiB",
            "run s (with loading)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
