"""The `rlhfkit` entry point: overview, per-command help, config show, one-line errors."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from rlhfkit import cli, commands, config_io


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlhfkit", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def test_overview_lists_every_command_with_a_summary(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in [*commands.COMMANDS, *commands.TOOLS]:
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
        assert len(line.split(None, 1)[1]) > 20, line  # a real one-line summary


def test_overview_does_not_import_torch():
    code = "import sys; from rlhfkit import cli; cli.overview(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_only_the_studio_imports_its_web_packages():
    """fastapi, uvicorn and argon2 are the optional extra 'studio': every other command, and
    every label verb's module, loads without them."""
    modules = [
        *commands.COMMANDS.values(),
        "rlhfkit.commands.label",
        "rlhfkit.commands.hindsight",
        "rlhfkit.commands.assets",
        "rlhfkit.cli",
    ]
    code = (
        f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
        "print(sorted({'fastapi', 'starlette', 'uvicorn', 'argon2'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.parametrize("command", sorted(commands.COMMANDS))
def test_every_command_has_full_help(command, capsys):
    assert cli.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    module = commands.command_module(command)
    for path in config_io.option_paths(module.Config):
        assert f"--{path} " in out
    docs_missing = [
        p
        for p, (owner, name, _) in config_io.option_paths(module.Config).items()
        if not config_io.field_docs(owner).get(name)
    ]
    assert not docs_missing, f"fields without a docstring: {docs_missing}"


def test_config_show_prints_effective_toml(tmp_path, capsys):
    file = tmp_path / "c.toml"
    file.write_text("steps = 7\n[gen]\ntemperature = 0.5\n")
    assert cli.main(["config", "show", "grpo", "--config", str(file), "--gen.top_k", "5"]) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["steps"] == 7 and shown["gen"]["temperature"] == 0.5 and shown["gen"]["top_k"] == 5
    assert shown["algo"]["advantage"] == "grpo"


def test_errors_are_one_line_each_with_exit_code_2(tmp_path):
    result = run("grpo", "--gen.temprature", "0.5", "--algo.group_size", "0", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "rlhfkit grpo: error: --gen.temprature: unknown option; did you mean 'gen.temperature'? "
        "(see --help for all options)"
    ]
    result = run("grpo", "--algo.group_size", "0", "--optim.lr", "-1", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "rlhfkit grpo: error: algo.group_size = 0: must be at least 1; give a value >= 1"
        in result.stderr
    )
    assert "rlhfkit grpo: error: optim.lr = -1.0: must lie in (0, inf]" in result.stderr


def test_unknown_command_suggests(capsys):
    assert cli.main(["gnerate"]) == 2
    assert "command 'gnerate': unknown; did you mean 'generate'?" in capsys.readouterr().err


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == cli.__version__
