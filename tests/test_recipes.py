"""Every recipe loads and validates against its command's config."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhfkit import commands, config_io

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.toml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_loads(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").symlink_to(recipe.parent)  # data files are named from the repo root
    command = recipe.read_text().split("rlhfkit ", 1)[1].split()[0]  # from its usage comment
    if command == "compare":
        check_comparison(recipe, tmp_path)
    elif command == "tune":
        check_search(recipe, tmp_path)
    else:
        load_command([command, "--config", str(recipe)])


def load_command(argv: list[str]) -> None:
    """Build and check the config `rlhfkit <argv>` would run with (nothing runs)."""
    command, args = argv[0], argv[1:]
    if command == "hindsight":  # the method, named by --method or in the recipe, picks the config
        import importlib

        from rlhfkit.commands import hindsight

        method, args = hindsight.split_method(args)
        assert method in hindsight.METHODS, f'{argv}: name the method (method = "...")'
        module = importlib.import_module(hindsight.METHODS[method])
    else:
        module = commands.command_module(command)
    config_io.load(module.Config, args, command=command)


def check_comparison(recipe: Path, tmp_path: Path) -> None:
    """The compare recipe, and every method's command line as compare fills it for seed 0
    (the shared sampling stage's files stand in as one-row files)."""
    from rlhfkit.commands import compare

    loaded = compare.load_recipe(recipe, ["--output_dir", str(tmp_path / "compare")])
    row = '{"prompt": "p", "completion": "a", "chosen": "a", "rejected": "b"}\n'
    for task in loaded.tasks:
        sampled = compare.seed_directory(loaded, task, 0) / "sampled"
        sampled.mkdir(parents=True)
        for name in compare.SAMPLED:
            (sampled / f"{name}.jsonl").write_text(row)
        for method in task.methods:
            if method.command:
                load_command(compare.command_line(loaded, task, method, 0))


def check_search(recipe: Path, tmp_path: Path) -> None:
    """The tune recipe, and its method's command line as a trial at each end of every range
    runs it (the sampling stage's files, when it uses them, stand in as one-row files)."""
    from rlhfkit.commands import compare, tune

    loaded = tune.load_recipe(recipe, ["--output_dir", str(tmp_path / "tune")])
    comparison = loaded.comparison()
    sampled = compare.seed_directory(comparison, comparison.tasks[0], 0) / "sampled"
    sampled.mkdir(parents=True)
    for name in compare.SAMPLED:
        (sampled / f"{name}.jsonl").write_text('{"prompt": "p", "completion": "a"}\n')
    for end in (0, -1):
        params = {d.key: (d.choices or (d.low, d.high))[end] for d in loaded.space}
        trial = loaded.trial("trial-0", params)
        load_command(compare.command_line(comparison, comparison.tasks[0], trial, 0))
