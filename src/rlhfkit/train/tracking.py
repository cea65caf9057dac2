"""Experiment trackers beside TensorBoard: Weights & Biases and MLflow (``--log.wandb``,
``--log.mlflow``; the ``tracking`` extra).

Each gets what the run directory gets: the config when it opens, every logged step, and at the
end the summary, then the run's files (``ATTACHED``, whichever exist when it ends). W&B writes offline by default (``RUN/wandb/``, uploaded later
with ``wandb sync``) and MLflow to a local store, so neither needs a network.

A run's tracker ids are kept in ``RUN/tracking.json``: a resumed run (``--run.resume``), or a
summary written after the run was closed (the offline trainers export before they summarise),
continues the same W&B and MLflow run rather than starting another.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from rlhfkit.config import LogCfg
from rlhfkit.data.files import atomic_file
from rlhfkit.errors import RlhfkitError

IDS_FILE = "tracking.json"
ATTACHED = ("config.toml", "summary.json", "heldout.json", "monitors.json", "report.html")
"""The run's files a tracker receives at the end, when they exist."""


class Tracker(Protocol):
    id: str

    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def finish(self, summary: dict[str, float]) -> None: ...

    def attach(self, files: list[Path]) -> None: ...

    def end(self, failed: bool) -> None: ...


def numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics or summary dict (booleans and text left out)."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"optim.lr": 1e-5, ...}``: MLflow parameters are flat."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _missing(package: str, flag: str) -> RlhfkitError:
    return RlhfkitError(
        f"--log.{flag}: the {package} package is not installed; "
        "pip install 'rlhfkit[tracking]', or leave --log." + flag + " off"
    )


class WandbTracker:
    """One W&B run, its own handle (``reinit="create_new"``), so a run's stages and the trials
    of a search in one process each log to their own."""

    def __init__(self, log: LogCfg, run_dir: Path, config: dict, run_id: str | None):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb", "wandb") from None
        os.environ.setdefault("WANDB_SILENT", "true")  # rlhfkit shows its own progress
        self.run = wandb.init(
            mode=log.wandb_mode,
            dir=str(run_dir),
            project=log.project,
            name=run_dir.name,
            id=run_id,
            resume="allow",
            reinit="create_new",
            config=config,
            settings=wandb.Settings(console="off", save_code=False, x_disable_stats=True),
        )
        self.id = self.run.id
        # the run's own step as the x-axis: W&B's counter only rises, a resumed run's steps repeat
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({**metrics, "step": step})

    def finish(self, summary: dict[str, float]) -> None:
        self.run.summary.update(summary)

    def attach(self, files: list[Path]) -> None:
        for file in files:
            self.run.save(str(file), base_path=str(file.parent), policy="now")

    def end(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MlflowTracker:
    """One MLflow run through ``MlflowClient`` (no global active run): reopening it by id costs
    nothing, and runs in one process stay apart."""

    PARAMS_PER_CALL = 100  # MLflow's limit for one log_batch

    def __init__(self, log: LogCfg, run_dir: Path, config: dict, run_id: str | None):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise _missing("mlflow", "mlflow") from None
        uri = tracking_uri(log.mlflow_uri)
        if uri.startswith("file:"):
            # MLflow 3 asks for this opt-in to its file store, the one that needs no database
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(uri)
        if run_id is not None:  # resumed, or summarised after it was closed
            self.id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        experiment = _experiment(self.client, log.project)
        self.id = self.client.create_run(experiment, run_name=run_dir.name).info.run_id
        self._params(flatten(config))

    def _params(self, flat: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [
            Param(key, value if isinstance(value, str) else json.dumps(value))
            for key, value in flat.items()
        ]
        for start in range(0, len(params), self.PARAMS_PER_CALL):
            self.client.log_batch(self.id, params=params[start : start + self.PARAMS_PER_CALL])

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.id, metrics=[Metric(key, value, now, step) for key, value in metrics.items()]
        )

    def finish(self, summary: dict[str, float]) -> None:
        self.log(0, {f"summary/{key}": value for key, value in summary.items()})

    def attach(self, files: list[Path]) -> None:
        for file in files:
            self.client.log_artifact(self.id, str(file))

    def end(self, failed: bool) -> None:
        self.client.set_terminated(self.id, "FAILED" if failed else "FINISHED")


def tracking_uri(value: str) -> str:
    """``--log.mlflow_uri`` as MLflow takes it: a plain directory becomes a file: URI."""
    if "://" in value or value.startswith("file:"):
        return value
    return Path(os.path.expanduser(value)).resolve().as_uri()


def _experiment(client: Any, name: str) -> str:
    """The id of the experiment ``name``, created when missing (another process may create it
    at the same moment: a search's trials start together)."""
    for attempt in range(2):
        if (found := client.get_experiment_by_name(name)) is not None:
            return found.experiment_id
        try:
            return client.create_experiment(name)
        except Exception:  # created meanwhile by another trial: read it on the next pass
            if attempt:
                raise
    raise AssertionError("unreachable")


KINDS = {"wandb": WandbTracker, "mlflow": MlflowTracker}


class Trackers:
    """The trackers ``log`` asks for, opened when the run starts on rank 0 (``Run`` calls them
    only there) and ended once the run is both closed and summarised, in either order: the
    online loops summarise, write report.html, then close; the offline ones close, export,
    then summarise."""

    def __init__(self, log: LogCfg | None, run_dir: Path, config: dict):
        self.kinds = [k for k in KINDS if log is not None and getattr(log, k)]
        self.log_cfg, self.run_dir, self.config = log, run_dir, config
        self.open: dict[str, Tracker] = {}
        self.closed = self.finished = False

    def _ids(self) -> dict[str, str]:
        file = self.run_dir / IDS_FILE
        return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}

    def start(self) -> None:
        """Open the trackers (W&B starts a process of its own: a few seconds)."""
        self._opened()

    def _opened(self) -> list[Tracker]:
        missing = [kind for kind in self.kinds if kind not in self.open]
        if missing:
            ids = self._ids()
            assert self.log_cfg is not None
            for kind in missing:
                self.open[kind] = KINDS[kind](
                    self.log_cfg, self.run_dir, self.config, ids.get(kind)
                )
            ids.update({kind: tracker.id for kind, tracker in self.open.items()})
            with atomic_file(self.run_dir / IDS_FILE) as f:
                f.write(json.dumps(ids) + "\n")
            atexit.register(self._end, failed=True)  # a process that dies mid-run
        return list(self.open.values())

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if self.kinds and (values := numbers(metrics)):
            for tracker in self._opened():
                tracker.log(step, values)

    def finish(self, summary: dict[str, Any]) -> None:
        if not self.kinds:
            return
        self.finished = True
        for tracker in self._opened():
            tracker.finish(numbers(flatten(summary)))
        if self.closed:
            self._end(failed=False)

    def close(self, failed: bool) -> None:
        self.closed = True
        if failed or self.finished:
            self._end(failed)

    def _end(self, failed: bool) -> None:
        """End the open trackers' runs; a run that completed gets its files first (the
        report is written after the summary, so they are gathered last)."""
        atexit.unregister(self._end)
        files = [self.run_dir / name for name in ATTACHED if (self.run_dir / name).is_file()]
        while self.open:
            tracker = self.open.popitem()[1]
            if not failed:
                tracker.attach(files)
            tracker.end(failed)
