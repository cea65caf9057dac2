"""Every recipe loads and validates against its command's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhfkit import cli, config_io

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.toml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_loads(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = recipe.read_text().split("rlhfkit ", 1)[1].split()[0]  # from its usage comment
    module = cli._command(command)
    config_io.load(module.Config, ["--config", str(recipe)], command=command)
