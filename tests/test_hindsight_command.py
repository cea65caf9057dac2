"""``rlhfkit hindsight``: the method picks the training module; bad methods are clear errors."""

from __future__ import annotations

import pytest

from rlhfkit import cli
from rlhfkit.commands import hindsight
from rlhfkit.errors import ConfigError


def test_split_method_takes_the_flag_in_either_form():
    assert hindsight.split_method(["--method", "coh", "--steps", "3"]) == ("coh", ["--steps", "3"])
    assert hindsight.split_method(["--method=hir"]) == ("hir", [])


def test_method_read_from_the_config_file(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('method = "relabel"\n')
    assert hindsight.split_method(["--config", str(recipe)]) == (
        "relabel",
        ["--config", str(recipe)],
    )
    assert (
        hindsight.split_method([f"--config={recipe}", "--method", "coh"])[0] == "coh"
    )  # flag wins


def test_unknown_method_suggests_the_closest():
    with pytest.raises(ConfigError, match="'chh'.*did you mean 'coh'"):
        hindsight.run(["--method", "chh"])


def test_missing_method_names_the_fix(capsys):
    with pytest.raises(ConfigError, match="pass --method"):
        hindsight.run([])
    assert cli.main(["hindsight", "--method"]) == 2
    assert "--method: needs a value" in capsys.readouterr().err


def test_help_without_method_lists_the_methods(capsys):
    assert hindsight.run(["--help"]) == 0
    out = capsys.readouterr().out
    for method in hindsight.METHODS:
        assert method in out
