"""A run directory: the resolved config, metrics, checkpoints and a summary.

    runs/ppo-20261122-153000/
      config.toml          the effective config (reload it with --config)
      metrics.jsonl        one JSON object per logged step
      tensorboard/         the same metrics as TensorBoard events
      checkpoints/
        step-000100/       complete checkpoints only (written as .tmp-*, then renamed)
        latest             name of the newest complete checkpoint
      summary.json         final figures, written when the run ends

Every write is atomic (temp file or directory, then ``os.replace``): a crash mid-write leaves
the previous checkpoint and the previous files loadable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhfkit import config_io
from rlhfkit.data.files import atomic_file
from rlhfkit.errors import RlhfkitError

CHECKPOINT_PREFIX = "step-"


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: readers see the old or the new file, never half."""
    with atomic_file(path) as f:
        f.write(text)


class Run:
    """Owns one run directory. Create with ``Run.start(cfg, command)``; always ``close()``."""

    def __init__(self, path: Path, tensorboard: bool, keep_checkpoints: int):
        self.path = path
        self.checkpoints = path / "checkpoints"
        self.keep_checkpoints = keep_checkpoints
        self._tensorboard = tensorboard
        self._writer = None

    @classmethod
    def start(cls, cfg: Any, command: str) -> Run:
        """Open ``cfg.run.output_dir``: fresh, replaced (``overwrite``) or continued (``resume``).

        On resume the saved config must match this one (resume/overwrite flags aside): a
        continued run with other settings would not be the run it claims to be.
        """
        run_cfg = cfg.run
        path = Path(os.path.expanduser(run_cfg.output_dir))
        saved = path / "config.toml"
        if run_cfg.resume:
            _check_same_config(saved, cfg)
        elif run_cfg.overwrite and path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        if not run_cfg.resume:
            write_text_atomic(saved, f"# rlhfkit {command}\n" + config_io.to_toml(cfg))
        log = getattr(cfg, "log", None)
        return cls(path, tensorboard=bool(log and log.tensorboard),
                   keep_checkpoints=run_cfg.keep_checkpoints)

    # --- metrics ---------------------------------------------------------------------------------

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one step's metrics to metrics.jsonl (flushed at once) and TensorBoard."""
        row = {"step": step, "time": round(time.time(), 3), **metrics}
        with (self.path / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._tensorboard:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.path / "tensorboard"))
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, step)

    def metrics(self) -> list[dict[str, Any]]:
        """All logged rows, in order."""
        file = self.path / "metrics.jsonl"
        if not file.exists():
            return []
        return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line]

    def truncate_metrics(self, step: int) -> None:
        """Drop rows after ``step``: a resumed run logs those steps again, once."""
        rows = [row for row in self.metrics() if row["step"] <= step]
        write_text_atomic(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    # --- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self, step: int, write: Callable[[Path], None]) -> Path:
        """Checkpoint at ``step``: ``write(dir)`` fills a temp dir that is renamed when complete."""
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        name = f"{CHECKPOINT_PREFIX}{step:06d}"
        final = self.checkpoints / name
        tmp = Path(tempfile.mkdtemp(dir=self.checkpoints, prefix=f".tmp-{name}-"))
        try:
            write(tmp)
            if final.exists():  # the same step saved again after a resume
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        write_text_atomic(self.checkpoints / "latest", name + "\n")
        self._prune()
        return final

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        pointer = self.checkpoints / "latest"
        if pointer.is_file():
            candidate = self.checkpoints / pointer.read_text(encoding="utf-8").strip()
            if candidate.is_dir():
                return candidate
        complete = self._complete()
        return complete[-1] if complete else None

    def _complete(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.iterdir()
                      if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))

    def _prune(self) -> None:
        for old in self._complete()[:-self.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    # --- end -------------------------------------------------------------------------------------

    def finish(self, summary: dict[str, Any]) -> None:
        write_text_atomic(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _check_same_config(saved: Path, cfg: Any) -> None:
    import tomllib

    before = _flatten(tomllib.loads(saved.read_text(encoding="utf-8")))
    now = _flatten(config_io.to_dict(cfg))
    ignore = {"run.resume", "run.overwrite"}
    changed = sorted(k for k in before.keys() | now.keys()
                     if k not in ignore and before.get(k) != now.get(k))
    if changed:
        shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise RlhfkitError(f"--resume: the run in {saved.parent} used other settings ({shown}); "
                           f"resume with the same config (--config {saved}), or start a new run")


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --- random state --------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator's state, for an exact resume."""
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
