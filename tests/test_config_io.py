"""Config loading: files, dotted overrides, coercion, validation messages, help."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import pytest

from rlhfkit import config_io
from rlhfkit.config import (
    GenCfg,
    InputFile,
    ModelCfg,
    OptimCfg,
    PositiveInt,
    Problem,
    RunCfg,
    default,
)
from rlhfkit.errors import ConfigError


@dataclass(frozen=True)
class ToyConfig:
    """A toy command for testing the loader."""

    prompts: InputFile = ""
    """Prompt file."""
    rollout_batch: PositiveInt = 8
    """Prompts per rollout."""
    minibatch: PositiveInt = 4
    """Prompts per optimiser micro-batch."""
    mode: Literal["fast", "exact"] = "fast"
    """A choice."""
    model: ModelCfg = default(ModelCfg)
    gen: GenCfg = default(GenCfg)
    optim: OptimCfg = default(OptimCfg)
    run: RunCfg = field(default_factory=RunCfg)

    def check(self) -> Iterable[Problem]:
        step = self.minibatch * self.optim.grad_accum_steps
        if self.rollout_batch % step:
            yield Problem(
                "rollout_batch",
                self.rollout_batch,
                f"is not a multiple of minibatch x optim.grad_accum_steps = {step}; make it one",
            )


def load(args, tmp_path=None):
    return config_io.load(ToyConfig, args, command="toy")


def problems(args) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(args)
    return info.value.problems


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RLHFKIT_HOME", str(tmp_path / "home"))


def test_defaults_and_dotted_overrides():
    cfg = load(
        [
            "--gen.temperature",
            "0.7",
            "--gen.stop",
            "\n\n",
            "--gen.stop",
            "END",
            "--optim.lr=3e-4",
            "--mode",
            "exact",
            "--run.output_dir",
            "out",
        ]
    )
    assert cfg.gen.temperature == 0.7
    assert cfg.gen.stop == ("\n\n", "END")
    assert cfg.optim.lr == 3e-4
    assert cfg.mode == "exact"
    assert cfg.run.output_dir == "out"


@dataclass(frozen=True)
class ToyDemoConfig:
    """A command whose groups have defaults of their own, as `rlhfkit demo`'s do."""

    model: ModelCfg = field(default_factory=lambda: ModelCfg(autocast="auto"))
    optim: OptimCfg = field(default_factory=lambda: OptimCfg(lr=3e-5, warmup_steps=3))


def test_an_override_keeps_the_rest_of_its_groups_command_defaults():
    cfg = config_io.load(ToyDemoConfig, ["--optim.lr", "1e-4", "--model.head_dtype", "bfloat16"])
    assert cfg.optim.lr == 1e-4 and cfg.optim.warmup_steps == 3
    assert cfg.model.autocast == "auto" and cfg.model.head_dtype == "bfloat16"
    assert config_io.load(ToyDemoConfig, []) == ToyDemoConfig()


def test_shorthands_and_bare_unique_names(tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    cfg = load(
        ["--model", str(model_dir), "--seed", "7", "--temperature", "0", "--run.output_dir", "o"]
    )
    assert cfg.model.path == str(model_dir)
    assert cfg.run.seed == 7 and cfg.gen.temperature == 0.0


def test_bare_boolean_flag_turns_on(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "config.toml").write_text("# rlhfkit toy\n")  # a run: overwrite may clear it
    cfg = load(["--run.output_dir", "o", "--overwrite"])
    assert cfg.run.overwrite is True
    cfg = load(["--run.output_dir", "o", "--overwrite", "false", "--resume"])
    assert cfg.run.overwrite is False and cfg.run.resume is True


def test_empty_output_dir_gets_a_dated_default():
    cfg = load([])
    assert cfg.run.output_dir.startswith("runs/toy-")


@pytest.mark.parametrize("suffix", ["toml", "yaml"])
def test_file_then_flags_override(tmp_path, suffix):
    file = tmp_path / f"c.{suffix}"
    if suffix == "toml":
        file.write_text('mode = "exact"\n[gen]\ntemperature = 0.5\nmax_new_tokens = 10\n')
    else:
        file.write_text("mode: exact\ngen:\n  temperature: 0.5\n  max_new_tokens: 10\n")
    cfg = load(["--config", str(file), "--gen.max_new_tokens", "20", "--run.output_dir", "o"])
    assert cfg.mode == "exact" and cfg.gen.temperature == 0.5 and cfg.gen.max_new_tokens == 20


def test_unknown_keys_suggest_the_right_one(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text("[gen]\ntemprature = 0.5\n")
    (problem,) = problems(["--config", str(file)])
    assert problem.startswith("gen.temprature: unknown key; did you mean 'temperature'?")
    (problem,) = problems(["--gen.temprature", "0.5"])
    assert "--gen.temprature: unknown option; did you mean 'gen.temperature'?" in problem


def test_wrong_types_name_field_value_and_fix(tmp_path):
    found = problems(
        ["--gen.temperature", "hot", "--gen.max_new_tokens", "1.5", "--mode", "exactt"]
    )
    assert "gen.temperature = 'hot': is not a number; give a value such as 0.5 or 1e-5" in found
    assert "gen.max_new_tokens = '1.5': is not a whole number; give an integer such as 8" in found
    assert any(
        p.startswith("mode = 'exactt': is not one of fast, exact; did you mean 'exact'?")
        for p in found
    )
    file = tmp_path / "c.toml"
    file.write_text('[gen]\nmax_new_tokens = "ten"\ntemperature = true\n')
    found = problems(["--config", str(file)])
    assert "gen.max_new_tokens = 'ten': is not a whole number; give an integer such as 8" in found
    assert "gen.temperature = True: is not a number; give a value such as 0.5 or 1e-5" in found


def test_non_positive_sizes_and_ranges():
    found = problems(["--gen.max_new_tokens", "0", "--gen.top_p", "1.5", "--gen.temperature", "-1"])
    assert "gen.max_new_tokens = 0: must be at least 1; give a value >= 1" in found
    assert "gen.top_p = 1.5: must lie in (0, 1]; give a value in that range" in found
    assert "gen.temperature = -1.0: must be at least 0; give a value >= 0" in found


def test_batch_sizes_that_do_not_divide():
    (problem,) = problems(
        ["--rollout_batch", "6", "--minibatch", "2", "--optim.grad_accum_steps", "2"]
    )
    assert problem == (
        "rollout_batch = 6: is not a multiple of minibatch x optim.grad_accum_steps "
        "= 4; make it one"
    )


def test_missing_file_and_bad_model_path(tmp_path):
    found = problems(["--prompts", "nope.jsonl", "--model", "no/such/model"])
    assert (
        "prompts = 'nope.jsonl': no such file; check the path (relative paths start at the "
        "current directory)"
    ) in found
    assert any(
        p.startswith("model.path = 'no/such/model': is neither an embedded alias (") for p in found
    )
    (tmp_path / "empty").mkdir()
    (problem,) = problems(["--model", str(tmp_path / "empty")])
    assert "is a directory without config.json" in problem


def test_output_dir_holding_a_run_is_refused(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "config.toml").write_text("# rlhfkit toy\nx = 1\n")
    (problem,) = problems(["--run.output_dir", str(out)])
    assert "holds another run; pass --resume to continue it, --overwrite to replace it" in problem
    assert (out / "config.toml").read_text() == "# rlhfkit toy\nx = 1\n"  # nothing written
    (problem,) = problems(["--run.output_dir", str(tmp_path / "new"), "--resume"])
    assert "holds no run to resume" in problem
    (problem,) = problems(["--run.output_dir", str(out), "--resume", "--overwrite"])
    assert "choose one" in problem


def test_all_problems_reported_together():
    assert len(problems(["--gen.max_new_tokens", "0", "--gen.top_k", "-1", "--bogus", "1"])) == 1
    assert len(problems(["--gen.max_new_tokens", "0", "--gen.top_k", "-1"])) == 2


def test_malformed_config_file(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text("[gen\n")
    (problem,) = problems(["--config", str(file)])
    assert problem.startswith(f"--config = '{file}': not valid TOML:")
    (problem,) = problems(["--config", str(tmp_path / "none.toml")])
    assert "no such file" in problem
    group = tmp_path / "g.toml"
    group.write_text("gen = 3\n")
    (problem,) = problems(["--config", str(group)])
    assert problem == "gen = 3: is a group of options; write it as a [gen] table or set --gen.KEY"


def test_toml_round_trip():
    cfg = load(["--gen.stop", "END", "--gen.temperature", "0.3", "--run.output_dir", "o"])
    text = config_io.to_toml(cfg)
    path = "round.toml"
    open(path, "w").write(text)
    assert config_io.load(ToyConfig, ["--config", path]) == cfg


def test_help_lists_every_field_with_its_doc():
    text = config_io.render_help(ToyConfig, "toy")
    assert "A toy command for testing the loader." in text
    assert "--gen.temperature FLOAT (default: 1.0)" in text
    assert "Sampling temperature; 0 means greedy decoding." in text
    assert "--prompts FILE" in text and "--model.path MODEL (default: smollm2)" in text
    for path in config_io.option_paths(ToyConfig):
        assert f"--{path} " in text


def test_every_shared_field_has_a_docstring():
    for cls in (ModelCfg, GenCfg, OptimCfg, RunCfg):
        docs = config_io.field_docs(cls)
        assert set(docs) == {f.name for f in dataclasses.fields(cls)}, cls


def test_unknown_generation_backend_is_caught_before_loading():
    (problem,) = problems(["--gen.backend", "vlm"])
    assert problem.startswith("gen.backend = 'vlm': is not a generation backend; choose one of hf")


def test_a_file_value_keeps_its_type_where_a_flag_is_parsed(tmp_path):
    file = tmp_path / "c.toml"
    file.write_text('[gen]\ntemperature = "0.5"\nstop = ["END", 3]\n')
    found = problems(["--config", str(file)])
    assert "gen.temperature = '0.5': is not a number; give a value such as 0.5 or 1e-5" in found
    assert "gen.stop = ['END', 3]: must be a list of strings" in found
    assert load(["--gen.temperature", "0.5", "--run.output_dir", "o"]).gen.temperature == 0.5


def test_a_config_built_in_python_is_checked_the_same_way():
    cfg = ToyConfig(rollout_batch=0, gen=GenCfg(top_p=float("nan"), stop=("END",)))
    assert config_io.validate(cfg, "toy.") == [
        "toy.rollout_batch = 0: must be at least 1; give a value >= 1",
        "toy.gen.top_p = nan: must be a finite number; give a value in (0, 1]",
    ]
