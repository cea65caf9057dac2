"""--log.wandb and --log.mlflow: a tiny GRPO run's metrics, config, summary and files read back
with W&B's own record type and MLflow's own client, with no network.

Without the `tracking` extra the tests skip; CI sets ``RLHFKIT_REQUIRE_TRACKING=1`` to make that a
failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from rlhfkit import cli
from rlhfkit.config import LogCfg, RunCfg
from rlhfkit.train.runs import Run
from rlhfkit.train.tracking import MlflowTracker, WandbTracker, tracking_uri


def need(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        if os.environ.get("RLHFKIT_REQUIRE_TRACKING") == "1":
            pytest.fail(f"RLHFKIT_REQUIRE_TRACKING=1 but {package} is not installed")
        pytest.skip(f"{package} is not installed (pip install 'rlhfkit[tracking]')")


def wandb_records(run_dir: Path) -> list:
    """Every record of the W&B offline runs under ``run_dir``, oldest run first, parsed with
    W&B's protobuf ``Record``. The .wandb file is LevelDB's log format (32 KiB blocks of
    chunks, each a 7-byte header: CRC, length, kind) after a 7-byte ':W&B' header; W&B offers
    no Python reader of its own."""
    from wandb.proto.wandb_internal_pb2 import Record

    block, records = 32768, []
    for file in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, record = file.read_bytes(), 7, b""
        while pos + 7 <= len(data):
            if block - pos % block < 7:  # a block's tail too short for a header is padding
                pos += block - pos % block
                continue
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if kind == 0:  # zero-filled rest of the block
                pos += block - pos % block
                continue
            chunk = data[pos + 7 : pos + 7 + length]
            pos += 7 + length
            record = chunk if kind in (1, 2) else record + chunk  # full/first vs middle/last
            if kind in (1, 4):
                records.append(Record.FromString(record))
    return records


def history(records: list) -> list[dict]:
    return [
        {
            ".".join(item.nested_key) or item.key: json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


def grpo_args(tmp_path, model_dir, prompts_file, reward_spec, *extra) -> list[str]:
    return [
        "grpo",
        "--model",
        str(model_dir),
        "--model.device",
        "cpu",
        "--data.prompts",
        str(prompts_file),
        "--data.eval_size",
        "0",
        "--reward",
        reward_spec,
        "--steps",
        "3",
        "--gen.max_new_tokens",
        "4",
        "--gen.chat_template",
        "off",
        "--algo.group_size",
        "2",
        "--algo.prompts_per_step",
        "2",
        "--algo.micro_batch_size",
        "4",
        "--log.tensorboard",
        "false",
        "--log.progress",
        "false",
        "--run.output_dir",
        str(tmp_path / "run"),
        *extra,
    ]


def test_a_run_logs_to_wandb_offline_and_an_mlflow_file_store(
    tmp_path, tiny_model_dir, prompts_file, reward_spec, monkeypatch
):
    need("wandb")
    need("mlflow")
    monkeypatch.chdir(tmp_path)  # the default --log.mlflow_uri, mlruns, is relative
    args = grpo_args(tmp_path, tiny_model_dir, prompts_file, reward_spec)
    assert cli.main([*args, "--log.wandb", "--log.mlflow", "--log.project", "tiny"]) == 0
    run_dir = tmp_path / "run"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    ids = json.loads((run_dir / "tracking.json").read_text())

    # W&B: the same steps and values, the config, the summary, the files
    records = wandb_records(run_dir)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_id, run.project, run.display_name) == (ids["wandb"], "tiny", "run")
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["algo"]["group_size"] == 2 and config["reward"] == reward_spec
    logged = history(records)
    assert [h["step"] for h in logged] == [1, 2, 3]
    assert [h["reward"] for h in logged] == pytest.approx([r["reward"] for r in rows])
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({u.key: json.loads(u.value_json) for u in r.summary.update if u.key})
    assert summary["steps"] == 3
    (files,) = run_dir.glob("wandb/offline-run-*/files")
    assert (files / "config.toml").read_text() == (run_dir / "config.toml").read_text()
    assert (files / "summary.json").is_file() and (run_dir / "report.html").is_file()
    assert (files / "report.html").read_bytes() == (run_dir / "report.html").read_bytes()
    exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    assert exits == [0]

    # MLflow: read back with its own client from the file store
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri("mlruns"))
    found = client.get_run(ids["mlflow"])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    assert client.get_experiment(found.info.experiment_id).name == "tiny"
    assert found.data.params["algo.group_size"] == "2"
    assert found.data.params["reward"] == reward_spec
    curve = client.get_metric_history(found.info.run_id, "reward")
    assert [m.step for m in curve] == [1, 2, 3]
    assert [m.value for m in curve] == pytest.approx([r["reward"] for r in rows])
    assert found.data.metrics["summary/steps"] == 3
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.toml", "summary.json", "report.html"} <= artifacts


@dataclass(frozen=True)
class Toy:
    """Toy."""

    lr: float = 0.1
    """Learning rate."""
    log: LogCfg = field(default_factory=lambda: LogCfg(tensorboard=False, mlflow=True))
    run: RunCfg = field(default_factory=RunCfg)


def test_a_crashed_then_resumed_run_is_one_mlflow_run(tmp_path, monkeypatch):
    need("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    cfg = Toy(run=RunCfg(output_dir=str(tmp_path / "run")))
    run = Run.start(cfg, "toy")
    run.log(1, {"loss": 2.0, "note": "text is not a metric"})
    run.close(failed=True)  # the loop raised
    client = MlflowClient(tracking_uri("mlruns"))
    run_id = json.loads((run.path / "tracking.json").read_text())["mlflow"]
    assert client.get_run(run_id).info.status == "FAILED"

    # resumed; closed before the summary, as the offline trainers do
    run = Run.start(replace(cfg, run=replace(cfg.run, resume=True)), "toy")
    run.log(2, {"loss": 1.5})
    run.close()
    assert client.get_run(run_id).info.status == "RUNNING"
    run.finish({"final_loss": 1.5})
    found = client.get_run(run_id)
    assert found.info.status == "FINISHED" and found.data.params["lr"] == "0.1"
    curve = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in curve] == [(1, 2.0), (2, 1.5)]
    assert found.data.metrics["summary/final_loss"] == 1.5
    assert len(client.search_runs([found.info.experiment_id])) == 1


def test_a_missing_package_is_a_clear_error(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_trackers(name, *args, **kwargs):
        if name.split(".")[0] in ("wandb", "mlflow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_trackers)
    from rlhfkit.errors import RlhfkitError

    for tracker, flag in ((WandbTracker, "wandb"), (MlflowTracker, "mlflow")):
        with pytest.raises(RlhfkitError, match=f"--log.{flag}: the {flag} package is not"):
            tracker(LogCfg(), tmp_path, {}, None)
