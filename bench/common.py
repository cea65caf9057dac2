"""What every side-by-side benchmark shares: step clocks, peak memory, child runs, tables.

Each measured run happens in a fresh child process, so one framework's caches, allocator
state and imports cannot help or hurt the other, and each child's peak resident memory is
its own. The parent alternates the sides (A B B A A B ...), so slow drift in a shared
machine's load falls on both equally.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

# A bench script imports this module before anything heavy, so this is its child's start
# (less the interpreter's own ~20 ms): "time to first step" counts from here.
IMPORTED_AT = time.perf_counter()


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux VmHWM; ru_maxrss elsewhere)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kB on Linux


def limit_threads(threads: int) -> None:
    """Pin torch's intra-op threads (the environment variables were set by the parent)."""
    import torch

    torch.set_num_threads(threads)


def add_allocator_option(parser: argparse.ArgumentParser) -> None:
    """``--trl-allocator``: whether TRL's child keeps freed memory too (see ``set_up_child``)."""
    parser.add_argument(
        "--trl-allocator",
        choices=("glibc", "rlhfkit"),
        default="glibc",
        help="glibc: TRL as it ships, with glibc's default malloc; rlhfkit: TRL's "
        "child also keeps freed memory mapped, as every rlhfkit command does",
    )


def allocator_phrase(trl_allocator: str) -> str:
    """How a table's title says which sides keep freed memory."""
    return (
        "both sides keep freed memory"
        if trl_allocator == "rlhfkit"
        else "rlhfkit keeps freed memory, TRL has glibc's default malloc"
    )


def set_up_child(side: str, threads: int, trl_allocator: str = "glibc") -> None:
    """A child's process settings, before it imports torch: the rlhfkit side keeps freed memory
    as every ``rlhfkit`` command does (``rlhfkit.host_memory.keep_freed_memory``), TRL's side
    only with ``--trl-allocator rlhfkit``; torch's threads pinned."""
    if side == "rlhfkit" or trl_allocator == "rlhfkit":
        from rlhfkit.host_memory import keep_freed_memory

        keep_freed_memory()
    limit_threads(threads)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every peer benchmark takes: threads, device, model and seed."""
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every run")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--model",
        default="smollm2",
        help="the embedded alias or a local Hugging Face model directory",
    )
    parser.add_argument("--seed", type=int, default=0)


def require_positive(
    parser: argparse.ArgumentParser, args: argparse.Namespace, names: tuple[str, ...]
) -> None:
    """Stop with argparse's usage error when one of these options is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
            )


def model_name(model: str) -> str:
    """How a table's title names ``--model``: the embedded alias by its model's name."""
    return "SmolLM2-135M-Instruct" if model == "smollm2" else model


def child_env(threads: int) -> dict[str, str]:
    """Environment for a child run: fixed thread counts, and no model hub ever contacted.

    Both sides get torch's huge pages for large tensors, as every ``rlhfkit`` command sets them
    (``rlhfkit.host_memory.use_huge_pages_for_tensors``), unless the caller's environment says
    otherwise.
    """
    return {
        "THP_MEM_ALLOC_ENABLE": "1",
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }


@dataclass
class StepClock:
    """Wall-clock time between consecutive optimiser-step ends, the same definition for every
    framework: everything a step costs (prompts, generation, reward, forwards, backward,
    optimiser, the framework's own logging) falls between two ticks, and model loading falls
    before the first. The first ``warmup`` steps (one-time costs: lazy imports, allocator
    growth) are ticked but not reported.

    Process CPU time (all threads) is kept between the same ticks: on a machine shared with
    other work, wall time also counts waiting for a core, CPU time mostly the work done.

    The time from ``started`` (the child's start) to the first and the last step end is kept
    too: what a user waits before training begins (imports, loading, tokenising, any
    precomputation) and what the whole run costs per step."""

    warmup: int
    device: str = "cpu"
    started: float = IMPORTED_AT
    ends: list[float] = field(default_factory=list)
    cpu_ends: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    pending_tokens: int = 0
    peak_rss: int = 0
    peak_gpu: int = 0

    def add_tokens(self, count: int) -> None:
        """Count tokens toward the step under way (offline: padded tokens of each forward)."""
        self.pending_tokens += count

    def tick(
        self, tokens: int | None = None, reward: float | None = None, loss: float | None = None
    ) -> None:
        """Call once at the end of every optimiser step, with the step's tokens (default: those
        counted by ``add_tokens`` since the last tick) and its reward or loss when known."""
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.peak_gpu = torch.cuda.max_memory_allocated()
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        self.tokens.append(self.pending_tokens if tokens is None else tokens)
        self.pending_tokens = 0
        if reward is not None:
            self.rewards.append(reward)
        if loss is not None:
            self.losses.append(loss)
        self.peak_rss = peak_rss_bytes()  # read at the last step: final saves are not counted

    def result(self) -> dict:
        """Measured steps only: seconds and tokens of each, memory peaks; and, over the whole
        run, seconds from the start to the first and last step ends and every step's loss."""
        if len(self.ends) <= self.warmup:
            raise RuntimeError(
                f"only {len(self.ends)} steps ticked; need more than the "
                f"{self.warmup} warm-up steps"
            )
        seconds = [b - a for a, b in itertools.pairwise(self.ends[self.warmup - 1 :])]
        cpu_seconds = [b - a for a, b in itertools.pairwise(self.cpu_ends[self.warmup - 1 :])]
        return {
            "step_seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "tokens": self.tokens[self.warmup :],
            "rewards": self.rewards[self.warmup :],
            "losses": self.losses,
            "first_step_seconds": self.ends[0] - self.started,
            "last_step_seconds": self.ends[-1] - self.started,
            "steps_run": len(self.ends),
            "peak_rss": self.peak_rss,
            "peak_gpu": self.peak_gpu,
        }


def resolve_device(device: str) -> str:
    """``auto`` as the children will see it: cuda when torch sees a GPU, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def write_result(path: str, result: dict) -> None:
    """Write a child's result where the parent reads it, whole or not at all."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f)
    os.replace(tmp, path)


def run_child(script: str, side: str, argv: list[str], threads: int) -> dict:
    """Run ``script --child SIDE ARGV`` in a fresh interpreter and return its result dict."""
    with tempfile.TemporaryDirectory(prefix="rlhfkit-bench-") as scratch:
        out = str(Path(scratch) / "result.json")
        command = [
            sys.executable,
            script,
            "--child",
            side,
            "--result",
            out,
            "--scratch",
            scratch,
            *argv,
        ]
        started = time.perf_counter()
        completed = subprocess.run(
            command,
            env=child_env(threads),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if completed.returncode != 0 or not Path(out).exists():
            sys.stderr.write(completed.stdout[-6000:])
            raise SystemExit(
                f"{side} run failed (exit {completed.returncode}); its output is above"
            )
        result = json.loads(Path(out).read_text(encoding="utf-8"))
        result["run_seconds"] = time.perf_counter() - started  # loading and saving included
        return result


def alternating_order(sides: tuple[str, str], repeats: int) -> list[tuple[int, str]]:
    """(repeat, side) in A B, B A, A B ... order: each side goes first equally often."""
    order = []
    for repeat in range(repeats):
        pair = sides if repeat % 2 == 0 else sides[::-1]
        order += [(repeat, side) for side in pair]
    return order


def run_alternating(
    script: str,
    sides: tuple[str, str],
    argv: list[str],
    repeats: int,
    threads: int,
    describe: Callable[[dict], str],
) -> dict[str, list[dict]]:
    """Every run of both sides in alternating order, each side's results in run order; prints
    ``describe(result)`` for each run as it ends."""
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for repeat, side in alternating_order(sides, repeats):
        result = run_child(script, side, argv, threads)
        results[side].append(result)
        print(f"  repeat {repeat + 1} {side:8s} {describe(result)}", flush=True)
    return results


@dataclass
class SideSummary:
    """One framework's figures over all its measured steps (every repeat pooled)."""

    name: str
    median_step_seconds: float
    median_cpu_seconds: float
    run_medians: list[float]
    tokens_per_second: float
    mean_completion_tokens: float
    mean_reward: float
    peak_rss_gib: float
    peak_gpu_gib: float


def summarize(name: str, results: list[dict]) -> SideSummary:
    seconds = [s for r in results for s in r["step_seconds"]]
    tokens = [t for r in results for t in r["tokens"]]
    rewards = [x for r in results for x in r["rewards"]]
    return SideSummary(
        name=name,
        median_step_seconds=statistics.median(seconds),
        median_cpu_seconds=statistics.median(c for r in results for c in r["cpu_seconds"]),
        run_medians=[statistics.median(r["step_seconds"]) for r in results],
        tokens_per_second=sum(tokens) / sum(seconds),
        mean_completion_tokens=statistics.mean(tokens),
        mean_reward=statistics.mean(rewards),
        peak_rss_gib=max(r["peak_rss"] for r in results) / 2**30,
        peak_gpu_gib=max(r["peak_gpu"] for r in results) / 2**30,
    )


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A plain, aligned text table (copies cleanly into Markdown with the pipes)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def comparison_rows(ours: SideSummary, theirs: SideSummary, gpu: bool) -> list[list[str]]:
    """Rows of the summary table: each side, then ours / theirs."""

    def row(s: SideSummary) -> list[str]:
        spread = ", ".join(f"{m:.2f}" for m in s.run_medians)
        cells = [
            s.name,
            f"{s.median_step_seconds:.2f}",
            spread,
            f"{s.median_cpu_seconds:.2f}",
            f"{s.tokens_per_second:.1f}",
            f"{s.mean_completion_tokens:.0f}",
            f"{s.peak_rss_gib:.2f}",
        ]
        return cells + ([f"{s.peak_gpu_gib:.2f}"] if gpu else [])

    ratio = [
        f"{ours.name} / {theirs.name}",
        f"{ours.median_step_seconds / theirs.median_step_seconds:.2f}x",
        "",
        f"{ours.median_cpu_seconds / theirs.median_cpu_seconds:.2f}x",
        f"{ours.tokens_per_second / theirs.tokens_per_second:.2f}x",
        f"{ours.mean_completion_tokens / theirs.mean_completion_tokens:.2f}x",
        f"{ours.peak_rss_gib / theirs.peak_rss_gib:.2f}x",
    ]
    if gpu:
        ratio.append(f"{ours.peak_gpu_gib / max(theirs.peak_gpu_gib, 1e-9):.2f}x")
    return [row(ours), row(theirs), ratio]


def comparison_headers(gpu: bool) -> list[str]:
    headers = [
        "",
        "median s/step",
        "per-run medians",
        "median CPU s/step",
        "completion tok/s",
        "completion tok/step",
        "peak RSS GiB",
    ]
    return headers + (["peak GPU GiB"] if gpu else [])


def save_json(path: str, payload: dict) -> None:
    """The whole comparison, for the record (written atomically)."""
    write_result(
        path,
        {key: asdict(v) if hasattr(v, "__dataclass_fields__") else v for key, v in payload.items()},
    )
