"""Run directories: config saved, metrics, atomic checkpoints, resume checks, RNG state."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace

import pytest
import torch

from rlhfkit.config import LogCfg, RunCfg
from rlhfkit.errors import RlhfkitError
from rlhfkit.train.runs import Run, rng_state, seed_everything, set_rng_state


@dataclass(frozen=True)
class Cfg:
    """Toy."""

    lr: float = 0.1
    """Learning rate."""
    log: LogCfg = field(default_factory=LogCfg)
    run: RunCfg = field(default_factory=RunCfg)


def make(tmp_path, **run) -> Cfg:
    return Cfg(run=RunCfg(output_dir=str(tmp_path / "run"), keep_checkpoints=2, **run))


def test_start_writes_config_and_logs_metrics(tmp_path):
    run = Run.start(make(tmp_path), "toy")
    assert (run.path / "config.toml").read_text().startswith("# rlhfkit toy\nlr = 0.1\n")
    run.log(1, {"loss": 2.0})
    run.log(2, {"loss": 1.5})
    run.close()
    assert [r["loss"] for r in run.metrics()] == [2.0, 1.5]
    assert any((run.path / "tensorboard").iterdir())
    run.finish({"final_loss": 1.5})
    assert json.loads((run.path / "summary.json").read_text()) == {"final_loss": 1.5}


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    run = Run.start(make(tmp_path), "toy")
    for step in (1, 2, 3):
        run.save_checkpoint(step, lambda d, s=step: (d / "state.json").write_text(json.dumps(s)))
    names = sorted(p.name for p in run.checkpoints.iterdir())
    assert names == ["latest", "step-000002", "step-000003"]
    assert run.latest_checkpoint().name == "step-000003"

    def crash(directory):
        (directory / "state.json").write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        run.save_checkpoint(4, crash)
    # the failed write left no trace; the previous checkpoint is still the latest
    assert sorted(p.name for p in run.checkpoints.iterdir()) == names
    assert json.loads((run.latest_checkpoint() / "state.json").read_text()) == 3


def test_latest_falls_back_when_pointer_is_missing(tmp_path):
    run = Run.start(make(tmp_path), "toy")
    run.save_checkpoint(5, lambda d: (d / "x").write_text("5"))
    (run.checkpoints / "latest").unlink()
    assert run.latest_checkpoint().name == "step-000005"


def test_resume_requires_the_same_config(tmp_path):
    cfg = make(tmp_path)
    Run.start(cfg, "toy").close()
    resumed = replace(cfg, run=replace(cfg.run, resume=True))
    Run.start(resumed, "toy").close()  # same settings: fine
    with pytest.raises(RlhfkitError, match=r"used other settings \(lr: 0.1 -> 0.2\)"):
        Run.start(replace(resumed, lr=0.2), "toy")


def test_overwrite_clears_the_old_run(tmp_path):
    run = Run.start(make(tmp_path), "toy")
    run.log(1, {"loss": 1.0})
    run.close()
    run = Run.start(make(tmp_path, overwrite=True), "toy")
    assert run.metrics() == []


def test_truncate_metrics_for_resume(tmp_path):
    run = Run.start(make(tmp_path), "toy")
    for step in range(1, 5):
        run.log(step, {"x": step})
    run.truncate_metrics(2)
    assert [r["step"] for r in run.metrics()] == [1, 2]


def test_rng_state_round_trip():
    seed_everything(3)
    state = rng_state()
    first = (random.random(), torch.rand(2).tolist())
    set_rng_state(state)
    assert (random.random(), torch.rand(2).tolist()) == first
