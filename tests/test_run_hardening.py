"""Run directories and CLI input under damage: checkpoints, metrics, overwrite, copies, bad files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import torch

from rlhfkit import cli, config_io
from rlhfkit.config import LogCfg, OptimCfg, RunCfg
from rlhfkit.data.prompts import PromptStream
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.train import checkpoints, kit
from rlhfkit.train.runs import Run, seed_everything


@dataclass(frozen=True)
class Cfg:
    """Toy."""

    lr: float = 0.1
    """Learning rate."""
    log: LogCfg = field(default_factory=lambda: LogCfg(tensorboard=False))
    run: RunCfg = field(default_factory=RunCfg)


def make(path: Path, **run) -> Cfg:
    return Cfg(run=RunCfg(output_dir=str(path), keep_checkpoints=3, **run))


def trained_run(tmp_path: Path, steps: int = 2) -> tuple[Run, torch.nn.Module]:
    """A run with one real training-state checkpoint per step (weights, optimiser, RNG, ...)."""
    seed_everything(0)
    model = torch.nn.Linear(4, 2)
    optimizer, scheduler = kit.build_optimizer(model, OptimCfg(lr=1e-2), total_steps=steps)
    stream = PromptStream([{"prompt": "a"}, {"prompt": "b"}], seed=0)
    stateful = {"optimizer": optimizer, "scheduler": scheduler, "stream": stream}
    run = Run.start(make(tmp_path / "run"), "toy")
    for step in range(1, steps + 1):
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        scheduler.step()
        stream.take(1)
        run.log(step, {"loss": float(step)})
        state = checkpoints.snapshot(step, stateful)
        run.save_checkpoint(step, lambda d, s=state: checkpoints.save_training_state(d, model, s))
    return run, model


def resumed(run: Run) -> Run:
    return Run.start(make(run.path, resume=True), "toy")


# --- 9. damaged checkpoints, cut-off metrics, what a checkpoint may hold ------------------------


def truncate_weights(step: Path) -> None:
    file = step / "weights.safetensors"
    file.write_bytes(file.read_bytes()[:40])


def drop_trainer_state(step: Path) -> None:
    (step / "trainer_state.pt").unlink()


def empty_trainer_state(step: Path) -> None:
    (step / "trainer_state.pt").write_bytes(b"")


def empty_directory(step: Path) -> None:
    for file in step.iterdir():
        file.unlink()


@pytest.mark.parametrize(
    "damage, problem",
    [
        (truncate_weights, r"weights\.safetensors is 40 bytes, expected \d+"),
        (drop_trainer_state, r"trainer_state\.pt is missing"),
        (empty_trainer_state, r"trainer_state\.pt is 0 bytes, expected \d+"),
        (empty_directory, r"it holds no files"),
    ],
)
def test_resume_falls_back_past_a_damaged_newest_checkpoint(tmp_path, damage, problem):
    run, model = trained_run(tmp_path)
    damage(run.checkpoints / "step-000002")
    with pytest.warns(
        UserWarning,
        match=rf"checkpoint .*step-000002 is damaged \({problem}\); "
        "falling back",
    ):
        checkpoint = resumed(run).latest_checkpoint()
    assert checkpoint.name == "step-000001"
    state = checkpoints.load_training_state(checkpoint, model)
    assert state["step"] == 1 and state["stream"] == {"epoch": 0, "index": 1}


def test_no_intact_checkpoint_is_a_one_line_error(tmp_path):
    run, _ = trained_run(tmp_path)
    truncate_weights(run.checkpoints / "step-000002")
    empty_directory(run.checkpoints / "step-000001")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RlhfkitError) as error:
            resumed(run).latest_checkpoint()
    message = str(error.value)
    assert "no intact checkpoint in" in message and "step-000001: it holds no files" in message
    assert "--run.overwrite" in message and "\n" not in message


def test_a_changed_byte_is_found_by_its_checksum(tmp_path):
    run, _ = trained_run(tmp_path)
    file = run.checkpoints / "step-000002" / "weights.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="weights.safetensors does not match its SHA-256"):
        assert resumed(run).latest_checkpoint().name == "step-000001"


def test_a_copied_grpo_run_resumes_past_its_damaged_checkpoint(
    tmp_path, tiny_model_dir, prompts_file, reward_spec
):
    """Through the CLI: the copy resumes (not the original), from step 1, each warning one line."""
    from rlhfkit.train import grpo
    from test_grpo import make_config

    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, reward_spec, device="cpu")
    original = grpo.train(replace(cfg, steps=2, run=replace(cfg.run, checkpoint_every=1))).run
    before = {p: p.read_bytes() for p in original.path.rglob("*") if p.is_file()}
    copy = tmp_path / "copy"
    shutil.copytree(original.path, copy)
    truncate_weights(copy / "checkpoints" / "step-000002")
    with (copy / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "rew')  # the crash cut the last line off

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhfkit",
            "grpo",
            "--config",
            str(copy / "config.toml"),
            "--resume",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("rlhfkit grpo: warn")]
    assert len(ours) == 2, result.stderr
    assert "metrics.jsonl: its last line was cut off" in ours[0]
    assert ours[1].startswith(
        f"rlhfkit grpo: warning: checkpoint {copy}/checkpoints/step-000002 "
        "is damaged (weights.safetensors is 40 bytes, expected "
    )
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert (copy / "checkpoints" / "step-000002" / "manifest.json").is_file()  # written again
    assert {p: p.read_bytes() for p in original.path.rglob("*") if p.is_file()} == before


def test_a_cut_off_last_metrics_line_is_skipped_and_dropped_on_resume(tmp_path):
    run = Run.start(make(tmp_path / "run"), "toy")
    run.log(1, {"loss": 1.0})
    run.log(2, {"loss": 0.5})
    file = run.path / "metrics.jsonl"
    file.write_text(file.read_text() + '{"step": 3, "lo')
    assert [row["step"] for row in run.metrics()] == [1, 2]
    with pytest.warns(UserWarning, match="metrics.jsonl: its last line was cut off"):
        again = resumed(run)
    again.log(3, {"loss": 0.25})
    assert [json.loads(line)["step"] for line in file.read_text().splitlines()] == [1, 2, 3]


def test_a_bad_metrics_line_before_the_last_is_an_error_naming_it(tmp_path):
    run = Run.start(make(tmp_path / "run"), "toy")
    run.log(1, {"loss": 1.0})
    file = run.path / "metrics.jsonl"
    file.write_text("garbage\n" + file.read_text())
    with pytest.raises(RlhfkitError, match=r"metrics.jsonl:1: not a JSON row"):
        run.metrics()


def test_trainer_state_holds_only_tensors_and_plain_data(tmp_path):
    run, _ = trained_run(tmp_path)
    state = torch.load(run.checkpoints / "step-000002" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2 and state["rng"]["numpy"][0] == "MT19937"


def test_a_checkpoint_from_before_manifests_still_resumes(tmp_path):
    """Older checkpoints: no manifest, NumPy's state as an array (loads under weights_only)."""
    import numpy as np

    run, model = trained_run(tmp_path)
    step = run.checkpoints / "step-000002"
    (step / "manifest.json").unlink()
    state = torch.load(step / "trainer_state.pt", weights_only=True)
    np.random.seed(5)
    torch.save(
        {**state, "rng": {**state["rng"], "numpy": np.random.get_state()}},
        step / "trainer_state.pt",
    )
    assert resumed(run).latest_checkpoint() == step
    assert checkpoints.restore(checkpoints.load_training_state(step, model), {}) == 2
    drawn = np.random.rand()
    np.random.seed(5)
    assert drawn == np.random.rand()


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_trainer_state_that_would_run_code_is_refused_unrun(tmp_path):
    run, model = trained_run(tmp_path, steps=1)
    step, marker = run.checkpoints / "step-000001", tmp_path / "ran"
    torch.save({"step": 1, "payload": _RunsCode(marker)}, step / "trainer_state.pt")
    with pytest.raises(
        RlhfkitError,
        match=r"trainer_state\.pt: refused to load, it holds a "
        r"reference to \S*system",
    ):
        checkpoints.load_training_state(step, model)
    assert not marker.exists()


# --- 10. overwrite deletes runs only; a copied run resumes where it is --------------------------


@pytest.mark.parametrize(
    "own_files", [{"important.txt": "keep me"}, {"config.toml": "[model]\npath = 'mine'\n"}]
)
def test_overwrite_never_deletes_a_directory_that_is_not_a_run(tmp_path, own_files):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, text in own_files.items():
        (folder / name).write_text(text)
    cfg = make(folder, overwrite=True)
    [problem] = config_io.validate(cfg)
    assert (
        problem.startswith(
            f"run.output_dir = {str(folder)!r}: is not empty and is not an rlhfkit run"
        )
        and "--overwrite will not delete it" in problem
    )
    with pytest.raises(RlhfkitError, match="is not an rlhfkit run"):
        Run.start(cfg, "toy")
    assert {p.name: p.read_text() for p in folder.iterdir()} == own_files


def test_overwrite_replaces_a_run(tmp_path):
    run = Run.start(make(tmp_path / "run"), "toy")
    run.log(1, {"loss": 1.0})
    assert config_io.validate(make(run.path, overwrite=True)) == []
    assert Run.start(make(run.path, overwrite=True), "toy").metrics() == []


def test_a_copied_run_resumes_the_copy_and_leaves_the_original(tmp_path):
    original = Run.start(
        config_io.load(Cfg, ["--run.output_dir", str(tmp_path / "a")], "toy"), "toy"
    )
    original.log(1, {"loss": 1.0})
    copy = tmp_path / "b"
    shutil.copytree(original.path, copy)
    before = (original.path / "metrics.jsonl").read_text()

    cfg = config_io.load(Cfg, ["--config", str(copy / "config.toml"), "--resume"], "toy")
    assert cfg.run.output_dir == str(copy)
    run = Run.start(cfg, "toy")  # the saved output_dir (a) differs: not a changed setting
    run.log(2, {"loss": 0.5})
    assert [row["step"] for row in run.metrics()] == [1, 2]
    assert (original.path / "metrics.jsonl").read_text() == before

    # an explicit --run.output_dir is what the user asked for
    cfg = config_io.load(
        Cfg,
        ["--config", str(copy / "config.toml"), "--resume", "--run.output_dir", str(original.path)],
        "toy",
    )
    assert cfg.run.output_dir == str(original.path)


# --- 11. bad input files and non-finite numbers: one line, exit 2 -------------------------------


def binary(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 4)


def not_utf8(path: Path) -> None:
    path.write_bytes("prompt\ncaf\xe9 au lait\n".encode("latin-1"))


def broken_parquet(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["a", "b"]}), path)
    path.write_bytes(path.read_bytes()[:-20])


def broken_json_array(path: Path) -> None:
    path.write_text('[{"prompt": "a", "completion": "b"},\n {"prompt": "b"\n')


def lone_surrogate(path: Path) -> None:
    path.write_text(
        '{"prompt": "fine", "completion": "ok"}\n'
        '{"prompt": "half a pair: \\ud83d here", "completion": "ok"}\n'
    )


BAD_FILES = [
    (
        "prompts.jsonl",
        binary,
        r"prompts\.jsonl:1: holds NUL bytes, so it is a binary file \(or UTF-16 "
        r"text\), not \.jsonl text; give a UTF-8 text file",
    ),
    ("prompts.txt", binary, r"prompts\.txt:1: holds NUL bytes"),
    ("prompts.csv", binary, r"prompts\.csv:1: holds NUL bytes"),
    (
        "prompts.csv",
        not_utf8,
        r"prompts\.csv:2: not UTF-8 text \(byte 0xe9\); save the file as "
        "UTF-8",
    ),
    ("prompts.parquet", broken_parquet, r"prompts\.parquet: not a readable Parquet file"),
    (
        "prompts.json",
        broken_json_array,
        r"prompts\.json:3: malformed JSON \(Expecting ',' "
        "delimiter",
    ),
    (
        "prompts.jsonl",
        lone_surrogate,
        r"prompts\.jsonl:2: column 'prompt' holds a lone surrogate "
        r"\(\\ud83d",
    ),
]


def one_line_error(argv: list[str], capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("name, write, expected", BAD_FILES)
@pytest.mark.parametrize("command", ["generate", "score", "label init"])
def test_a_bad_input_file_is_one_line_naming_it(
    tmp_path, tiny_model_dir, monkeypatch, capsys, command, name, write, expected
):
    import re

    monkeypatch.chdir(tmp_path)
    file = tmp_path / name
    write(file)
    if command == "generate":
        argv = ["generate", "--prompts", str(file), "--model", str(tiny_model_dir)]
    elif command == "score":
        argv = ["score", "--input", str(file), "--reward", "length:5", "--output", "out.jsonl"]
    else:
        argv = [
            "label",
            "init",
            "--campaign",
            "c",
            "--prompts",
            str(file),
            "--model",
            str(tiny_model_dir),
            "--model.device",
            "cpu",
        ]
    err = one_line_error(argv, capsys)
    assert err.startswith(f"rlhfkit {command.split()[0]}: error: ")
    assert re.search(expected, err), err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_temperature_is_refused(tmp_path, tiny_model_dir, monkeypatch, capsys, value):
    monkeypatch.chdir(tmp_path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    err = one_line_error(
        [
            "generate",
            "--prompts",
            str(prompts),
            "--model",
            str(tiny_model_dir),
            "--gen.temperature",
            value,
        ],
        capsys,
    )
    assert err == (
        f"rlhfkit generate: error: gen.temperature = {float(value)!r}: must be a "
        "finite number; give a value >= 0"
    )


def test_every_bounded_float_refuses_nan_and_inf(tmp_path):
    from rlhfkit.train import grpo

    config = tmp_path / "c.toml"
    config.write_text(
        "[optim]\nlr = inf\nadam_beta1 = nan\nmax_grad_norm = nan\n"
        "[gen]\ntop_p = nan\n[lora]\nalpha = inf\n"
    )
    with pytest.raises(ConfigError) as error:
        config_io.load(grpo.Config, ["--config", str(config)], "grpo")
    assert sorted(error.value.problems) == [
        "gen.top_p = nan: must be a finite number; give a value in (0, 1]",
        "lora.alpha = inf: must be a finite number; give a value > 0",
        "optim.adam_beta1 = nan: must be a finite number; give a value in [0, 1]",
        "optim.lr = inf: must be a finite number; give a value > 0",
        "optim.max_grad_norm = nan: must be a finite number; give a value >= 0",
    ]
