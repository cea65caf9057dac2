"""--run.deterministic: two runs of one seed, and a run killed and resumed, give the same bits.

Seeded runs without it can part ways on the real model (a threaded sum rounds differently in
the last bit, then a later step samples another token), so this is tested where that was seen:
SmolLM2 with GRPO, each run a fresh process with its two default threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhfkit.train.runs import make_deterministic

TIMING = {"time", "step_seconds", "generation_seconds", "tokens_per_second"}


def grpo(run_dir: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "rlhfkit",
        "grpo",
        "--run.deterministic",
        "--run.seed",
        "3",
        "--steps",
        "3",
        "--algo.prompts_per_step",
        "2",
        "--algo.group_size",
        "2",
        "--algo.micro_batch_size",
        "4",
        "--gen.max_new_tokens",
        "12",
        "--data.eval_size",
        "0",
        "--run.checkpoint_every",
        "1",
        "--log.tensorboard",
        "false",
        "--log.progress",
        "false",
        "--run.output_dir",
        str(run_dir),
        *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MKL_", "OMP_"))}
    return subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-3000:]


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def weights(run_dir: Path) -> str:
    return hashlib.sha256((run_dir / "model" / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_two_runs_and_a_killed_and_resumed_run_are_bitwise_identical(tmp_path):
    first, second, resumed = tmp_path / "first", tmp_path / "second", tmp_path / "resumed"
    finish(grpo(first))
    finish(grpo(second))

    process = grpo(resumed)
    latest = resumed / "checkpoints" / "latest"
    deadline = time.monotonic() + 600
    while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before its first checkpoint"
    process.send_signal(signal.SIGKILL)  # no clean-up: what a crash or an OOM kill leaves
    process.wait()
    assert len(metrics(resumed)) < 3  # it really was cut short
    finish(grpo(resumed, "--run.resume"))

    assert [row["step"] for row in metrics(first)] == [1, 2, 3]
    assert metrics(second) == metrics(first)  # every figure, to the last bit
    assert metrics(resumed) == metrics(first)
    assert weights(second) == weights(first) == weights(resumed)


def test_deterministic_mode_turns_on_deterministic_kernels(monkeypatch):
    for name in ("MKL_CBWR", "MKL_DYNAMIC", "CUBLAS_WORKSPACE_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_DYNAMIC", "TRUE")  # a user's own setting wins
    try:
        make_deterministic()
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["MKL_CBWR"] == "AUTO,STRICT" and os.environ["MKL_DYNAMIC"] == "TRUE"
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)


def test_a_deterministic_resume_takes_the_thread_count_the_run_used():
    from rlhfkit.train.runs import rng_state, set_rng_state

    threads = torch.get_num_threads()
    state = rng_state()
    assert state["threads"] == threads
    state["threads"] = threads + 1
    try:
        set_rng_state(state)  # not deterministic: this process's own count stands
        assert torch.get_num_threads() == threads
        torch.use_deterministic_algorithms(True)
        with pytest.warns(UserWarning, match=f"resuming with the {threads + 1} torch threads"):
            set_rng_state(state)
        assert torch.get_num_threads() == threads + 1
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
