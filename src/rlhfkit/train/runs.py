"""A run directory: the resolved config, metrics, checkpoints and a summary.

    runs/ppo-20261122-153000/
      config.toml          the effective config (reload it with --config)
      metrics.jsonl        one JSON object per logged step
      tensorboard/         the same metrics as TensorBoard events
      wandb/, tracking.json   with --log.wandb / --log.mlflow: the W&B run, the trackers' ids
      checkpoints/
        step-000100/       complete checkpoints only (written as .tmp-*, then renamed), each
                           with a manifest.json of its files' sizes and SHA-256, written last
        latest             name of the newest complete checkpoint
      tokens.json          online RL: a few completions token by token (advantage, KL) at
                           the first step and each held-out evaluation's, for the report
      summary.json         final figures, written when the run ends

Every write is atomic (temp file or directory, then ``os.replace``): a crash mid-write leaves
the previous checkpoint and the previous files loadable. Damage after the fact (a disk that cut
a file short, a directory emptied by hand) shows against the manifest, and resuming falls back
to the newest checkpoint that is still intact.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rlhfkit import config_io, distributed
from rlhfkit.atomic import replace_dir
from rlhfkit.config import RUN_MARKER, is_run_dir
from rlhfkit.data.files import atomic_file
from rlhfkit.errors import RlhfkitError, RlhfkitWarning
from rlhfkit.train.tracking import Trackers, flatten

CHECKPOINT_PREFIX = "step-"
TOKENS_FILE = "tokens.json"
MANIFEST = "manifest.json"
OBSERVERS: list[Callable[[Path, int, dict[str, Any]], None]] = []
"""Called as ``observer(run_dir, step, metrics)`` with each row a run logs on rank 0 (``observe``):
how ``rlhfkit tune`` reads a trial's held-out scores as it trains."""


@contextlib.contextmanager
def observe(observer: Callable[[Path, int, dict[str, Any]], None]) -> Iterator[None]:
    """Pass every logged row to ``observer`` while inside; what it raises stops the run (a
    pruned trial)."""
    OBSERVERS.append(observer)
    try:
        yield
    finally:
        OBSERVERS.remove(observer)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: readers see the old or the new file, never half."""
    with atomic_file(path) as f:
        f.write(text)


class Run:
    """Owns one run directory. Create with ``Run.start(cfg, command)``; always ``close()``."""

    def __init__(
        self, path: Path, tensorboard: bool, keep_checkpoints: int, trackers: Trackers | None = None
    ):
        self.path = path
        self.checkpoints = path / "checkpoints"
        self.keep_checkpoints = keep_checkpoints
        self._tensorboard = tensorboard
        self._writer = None
        self.trackers = trackers or Trackers(None, path, {})

    @classmethod
    def start(cls, cfg: Any, command: str) -> Run:
        """Open ``cfg.run.output_dir``: fresh, replaced (``overwrite``) or continued (``resume``).

        On resume the saved config must match this one (resume/overwrite flags aside): a
        continued run with other settings would not be the run it claims to be.
        """
        run_cfg = cfg.run
        path = Path(os.path.expanduser(run_cfg.output_dir))
        failure = None
        if distributed.is_main():  # data-parallel, rank 0 alone writes the run directory
            try:
                cls._open(path, cfg, command)
            except RlhfkitError as e:
                failure = e
        # the others start once it exists, or stop with rank 0's error
        if (message := distributed.broadcast_object(failure and str(failure))) is not None:
            raise failure or RlhfkitError(message)
        log = getattr(cfg, "log", None)
        run = cls(
            path,
            tensorboard=bool(log and log.tensorboard),
            keep_checkpoints=run_cfg.keep_checkpoints,
            trackers=Trackers(log, path, config_io.to_dict(cfg)),
        )
        if distributed.is_main():
            run.trackers.start()  # now, not in the first step's time
        return run

    @staticmethod
    def _open(path: Path, cfg: Any, command: str) -> None:
        run_cfg = cfg.run
        saved = path / "config.toml"
        if run_cfg.resume:
            _check_same_config(saved, cfg)
        elif run_cfg.overwrite and path.exists():
            # only a run is ours to delete: a directory of someone's own files is never cleared
            if path.is_dir() and any(path.iterdir()) and not is_run_dir(path):
                raise RlhfkitError(
                    f"--run.overwrite: {path} is not an rlhfkit run (no config.toml written by "
                    "rlhfkit), so nothing in it is deleted; choose a new or empty "
                    "--run.output_dir, or move its files away yourself"
                )
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        if run_cfg.resume:
            Run(path, False, 1)._drop_cut_off_metrics()
        else:
            write_text_atomic(saved, f"{RUN_MARKER}{command}\n" + config_io.to_toml(cfg))

    # --- metrics ---------------------------------------------------------------------------------

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append one step's metrics to metrics.jsonl (flushed at once), TensorBoard and the
        trackers (rank 0 only: the loops reduce metrics over the ranks first)."""
        if not distributed.is_main():
            return
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
        self.trackers.log(step, metrics)
        for observer in list(OBSERVERS):
            observer(self.path, step, metrics)

    def metrics(self) -> list[dict[str, Any]]:
        """All logged rows, in order; a last line cut off by a crash is left out."""
        return _read_metrics(self.path / "metrics.jsonl")[0]

    def _drop_cut_off_metrics(self) -> None:
        """Rewrite metrics.jsonl without a cut-off last line, so the next row starts on its own."""
        file = self.path / "metrics.jsonl"
        rows, cut_off = _read_metrics(file)
        if cut_off:
            warnings.warn(
                f"{file}: its last line was cut off (a crash mid-write); dropped it",
                RlhfkitWarning,
                stacklevel=3,
            )
        # a whole last row without its newline would glue the next row onto it
        if cut_off or (rows and not file.read_bytes().endswith(b"\n")):
            write_text_atomic(file, "".join(json.dumps(r) + "\n" for r in rows))

    def truncate_metrics(self, step: int) -> None:
        """Drop rows after ``step``: a resumed run logs those steps again, once."""
        if not distributed.is_main():
            return
        rows = [row for row in self.metrics() if row["step"] <= step]
        write_text_atomic(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    # --- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self, step: int, write: Callable[[Path], None]) -> Path:
        """Checkpoint at ``step``: ``write(dir)`` fills a temp dir that is renamed when complete.

        Data-parallel, every rank calls this and ``write`` fills the one temp dir rank 0 made
        (each rank its shards); rank 0 renames it once every rank is done.
        """
        name = f"{CHECKPOINT_PREFIX}{step:06d}"
        final = self.checkpoints / name
        tmp = None
        if distributed.is_main():
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.checkpoints, prefix=f".tmp-{name}-"))
        tmp = distributed.broadcast_object(tmp)
        try:
            write(tmp)
            distributed.barrier()
            if distributed.is_main():
                _write_manifest(tmp)  # last: a checkpoint with a manifest was written whole
                replace_dir(tmp, final)  # the same step may be saved again after a resume
        except BaseException:
            if distributed.is_main():
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if distributed.is_main():
            write_text_atomic(self.checkpoints / "latest", name + "\n")
            self._prune()
        distributed.barrier()  # no rank reads checkpoints before the rename
        return final

    def latest_checkpoint(self) -> Path | None:
        """The newest intact checkpoint, or None when the run has none yet.

        A damaged one (a file cut short, changed or missing, an emptied directory) is named in
        a warning and the one before it is tried; when none is intact, an error says what to do.
        """
        problems = []
        for candidate in reversed(self._complete()):
            problem = checkpoint_problem(candidate)
            if problem is None:
                return candidate
            warnings.warn(
                f"checkpoint {candidate} is damaged ({problem}); falling back to the one before it",
                RlhfkitWarning,
                stacklevel=2,
            )
            problems.append(f"{candidate.name}: {problem}")
        if problems:
            raise RlhfkitError(
                f"--resume: no intact checkpoint in {self.checkpoints} ({'; '.join(problems)}); "
                "start the run again with --run.overwrite, or start a new run elsewhere"
            )
        return None

    def _complete(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        return sorted(
            p
            for p in self.checkpoints.iterdir()
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
        )

    def _prune(self) -> None:
        for old in self._complete()[: -self.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    # --- end -------------------------------------------------------------------------------------

    def finish(self, summary: dict[str, Any], report: Callable[[Path], None] | None = None) -> None:
        """Write summary.json, then ``report(run_dir)`` (report.html, from what the run wrote),
        and hand the summary and the run's files to the trackers."""
        if distributed.is_main():
            write_text_atomic(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")
            if report is not None:
                report(self.path)
            self.trackers.finish(summary)

    def close(self, failed: bool = False) -> None:
        """Close TensorBoard's writer; ``failed`` (the loop raised) ends the trackers' runs as
        failed, else they end once the summary is written too."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if distributed.is_main():
            self.trackers.close(failed)


def _write_manifest(directory: Path) -> None:
    files = {
        p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
    (directory / MANIFEST).write_text(
        json.dumps({"files": files}, indent=1) + "\n", encoding="utf-8"
    )


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checkpoint_problem(directory: Path) -> str | None:
    """What is wrong with a checkpoint directory (one short phrase), or None when it is intact."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        # a checkpoint from before manifests: check what can be seen without loading it
        files = [p for p in directory.rglob("*") if p.is_file()]
        if not files:
            return "it holds no files"
        empty = next((p for p in files if p.stat().st_size == 0), None)
        return f"{empty.relative_to(directory).as_posix()} is empty" if empty else None
    try:
        listed = {
            str(name): (int(meta["bytes"]), str(meta["sha256"]))
            for name, meta in json.loads(manifest.read_text(encoding="utf-8"))["files"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"its {MANIFEST} is unreadable"
    for name, (size, digest) in listed.items():
        file = directory / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes, expected {size}"
        if _sha256(file) != digest:
            return f"{name} does not match its SHA-256 in {MANIFEST}"
    return None


def _read_metrics(file: Path) -> tuple[list[dict[str, Any]], bool]:
    """(rows, whether the last line was cut off). Appends are one write each, so a crash can cut
    off only the last line; a bad line anywhere else is an error naming it."""
    if not file.exists():
        return [], False
    lines = file.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                return rows, True
            raise RlhfkitError(
                f"{file}:{number}: not a JSON row; repair or delete that line"
            ) from None
    return rows, False


def _check_same_config(saved: Path, cfg: Any) -> None:
    import tomllib

    before = flatten(tomllib.loads(saved.read_text(encoding="utf-8")))
    now = flatten(config_io.to_dict(cfg))
    # A run is where its directory is: a copied or moved run keeps the old output_dir inside.
    ignore = {"run.resume", "run.overwrite", "run.output_dir"}
    # the monitors watch training without changing it: a run an alert stopped resumes with
    # other thresholds (or none)
    changed = sorted(
        k
        for k in before.keys() | now.keys()
        if k not in ignore and not k.startswith("monitor.") and before.get(k) != now.get(k)
    )
    if changed:
        shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise RlhfkitError(
            f"--resume: the run in {saved.parent} used other settings ({shown}); "
            f"resume with the same config (--config {saved}), or start a new run"
        )


# --- random state --------------------------------------------------------------------------------


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); ``deterministic`` also fixes the arithmetic
    (``make_deterministic``), so the same seed gives the same bits, not only the same start."""
    import numpy as np
    import torch

    if deterministic:
        make_deterministic()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


MKL_REPRODUCIBLE = {"MKL_CBWR": "AUTO,STRICT", "MKL_DYNAMIC": "FALSE"}
"""MKL's conditional numerical reproducibility: one code path whatever the memory alignment of
the operands, and exactly the requested threads (not fewer when MKL thinks it wise)."""


def make_deterministic() -> None:
    """Make this process's torch arithmetic repeat bit for bit, run after run.

    Seeding fixes what is drawn, not how sums are added up: a matmul's result can depend on
    how its operands happen to be aligned in memory and how many threads MKL chose, and on a
    GPU on atomics. A difference in the last bit of one log-prob is enough for a later step to
    sample another token, after which two runs of one seed part ways. So: deterministic torch
    kernels (an op without one raises instead of silently varying), MKL's reproducible mode
    (read when MKL starts, so set here before the first matmul; your own MKL_* settings win),
    cuBLAS's fixed workspace, and no cuDNN autotuning. The thread count is part of the result:
    a resumed run takes the one its checkpoint recorded (``set_rng_state``).
    """
    import torch

    for name, value in MKL_REPRODUCIBLE.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """Every generator's state, for an exact resume, as tensors and plain data only (a
    checkpoint then loads with ``torch.load(weights_only=True)``, which runs no pickled code)."""
    import numpy as np
    import torch

    kind, key, *rest = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, key.tolist(), *rest),
        "torch": torch.get_rng_state(),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    threads = state.get("threads", torch.get_num_threads())
    if torch.are_deterministic_algorithms_enabled() and threads != torch.get_num_threads():
        # sums split over another number of threads round differently: resume as it ran
        warnings.warn(
            f"run.deterministic: resuming with the {threads} torch threads the run "
            f"used, not this process's {torch.get_num_threads()}",
            stacklevel=2,
        )
        torch.set_num_threads(threads)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
