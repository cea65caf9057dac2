"""``rlhfkit tune``: the recipe's checks, and a search of 4 trials on 2 local Ray workers with a
tiny model that is interrupted, resumed without rerunning its finished trials, and picks the
best trial by its validation score.

Without the `tune` extra (Optuna, Ray Tune) the search test skips; CI sets
``RLHFKIT_REQUIRE_TUNE=1`` to make that a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import statistics
import threading
import time

import pytest

from rlhfkit import cli
from rlhfkit.commands.tune_recipe import load_recipe
from rlhfkit.config import PromptDataCfg
from rlhfkit.data.prompts import prompt_rows
from rlhfkit.errors import ConfigError

PROMPTS = "reasoning_gym:basic_arithmetic"
COMMAND = (
    '"grpo", "--model", "{base}", "--model.device", "{device}", "--data.prompts", "{prompts}", '
    '"--data.max_prompts", "{max_prompts}", "--data.eval_size", "4", "--reward", "{reward}", '
    '"--steps", "2", "--eval.every", "1", "--gen.max_new_tokens", "4", '
    '"--gen.chat_template", "off", "--algo.group_size", "2", "--algo.prompts_per_step", "2", '
    '"--algo.micro_batch_size", "4", "--log.tensorboard", "false", "--log.progress", "false", '
    '"--run.checkpoint_every", "0", "--run.output_dir", "{output_dir}", "--run.seed", "{seed}"'
)
SEARCH = '"optim.lr" = { low = 1e-4, high = 1e-1, log = true }'


def write_recipe(tmp_path, model_dir, reward_spec, search=SEARCH, command=COMMAND, prompts=PROMPTS):
    recipe = tmp_path / "tune.toml"
    recipe.write_text(f"""output_dir = "{tmp_path / "search"}"
trials = 4
parallel = 2

[model]
path = "{model_dir}"
device = "cpu"

[task]
name = "letters"
reward = "{reward_spec}"

[task.data]
prompts = "{prompts}"
max_prompts = 8
eval_size = 4

[task.gen]
max_new_tokens = 4
batch_size = 16
chat_template = "off"

[method]
name = "grpo"
command = [{command}]

[search]
{search}
""")
    return recipe


def test_recipe_problems_are_all_reported_at_once(tmp_path, tiny_model_dir, reward_spec):
    search = """"optim.lrr" = { low = 1e-4, high = 1e-1 }
"optim.lr" = { low = 1e-1, high = 1e-4 }
"steps" = 3"""
    recipe = write_recipe(tmp_path, tiny_model_dir, reward_spec, search=search)
    with pytest.raises(ConfigError) as e:
        load_recipe(recipe)
    problems = "\n".join(e.value.problems)
    assert "search.optim.lr: low = 0.1, high = 0.0001: give two numbers, low below high" in problems
    assert "search.steps = 3: give { low = ..., high = ... }" in problems
    recipe = write_recipe(
        tmp_path,
        tiny_model_dir,
        reward_spec,
        search='"optim.lrr" = { low = 1e-4, high = 1e-1 }\n"algo.kl_coef" = { low = -1.0, high = 1.0 }'
        '\n"run.seed" = { choices = [1, 2] }',
    )
    with pytest.raises(ConfigError) as e:
        load_recipe(recipe)
    problems = "\n".join(e.value.problems)
    assert "search.optim.lrr: --optim.lrr: unknown option" in problems
    assert "search.algo.kl_coef: algo.kl_coef = -1.0:" in problems
    assert "search.run.seed: the method's command sets --run.seed too" in problems


def test_a_user_prompt_file_has_no_validation_split(
    tmp_path, tiny_model_dir, reward_spec, prompts_file
):
    recipe = write_recipe(tmp_path, tiny_model_dir, reward_spec, prompts=str(prompts_file))
    with pytest.raises(ConfigError, match='held_out = "validation" needs a built-in prompt set'):
        load_recipe(recipe)


def test_help_explains_the_recipe(capsys):
    assert cli.main(["tune", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rlhfkit tune RECIPE") and "[search]" in out


def need_tune() -> None:
    for package in ("optuna", "ray"):
        if importlib.util.find_spec(package) is None:
            if os.environ.get("RLHFKIT_REQUIRE_TUNE") == "1":
                pytest.fail(f"RLHFKIT_REQUIRE_TUNE=1 but {package} is not installed")
            pytest.skip(f"{package} is not installed (pip install 'rlhfkit[tune]')")


def interrupt_after_first_result(results_dir, stop: threading.Event) -> threading.Thread:
    """Ctrl+C for Ray Tune (SIGUSR1, which it handles as SIGINT) once a trial has a result."""

    def watch() -> None:
        while not stop.wait(0.1):
            if any(results_dir.glob("trial-*.json")):
                os.kill(os.getpid(), signal.SIGUSR1)
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_search_on_two_ray_workers_resumes_and_picks_the_best(
    tmp_path, tiny_model_dir, reward_spec
):
    need_tune()
    import ray

    recipe = write_recipe(tmp_path, tiny_model_dir, reward_spec)
    results = tmp_path / "search" / "letters" / "seed-0" / "results"
    # one local Ray for both runs (rlhfkit tune starts its own when none is there)
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)  # a late signal is harmless
    stop = threading.Event()
    try:
        interrupt_after_first_result(results, stop)
        assert cli.main(["tune", str(recipe)]) == 1  # interrupted: "run it again to resume"
        done = {p.stem: p.stat().st_mtime_ns for p in results.glob("trial-*.train.json")}
        assert 1 <= len(done) < 4
        time.sleep(0.01)
        stop.set()
        assert cli.main(["tune", str(recipe)]) == 0
    finally:
        stop.set()
        signal.signal(signal.SIGUSR1, previous)
        ray.shutdown()

    # the finished trials were not trained again; every trial finished or was stopped early by
    # the median rule (a trial trailing the others at its first held-out evaluation)
    trained = {p.stem: p.stat().st_mtime_ns for p in results.glob("trial-*.train.json")}
    assert all(trained[name] == mtime for name, mtime in done.items())
    board = json.loads((tmp_path / "search" / "leaderboard.json").read_text())
    assert board["split"] == "validation" and not board["unfinished"]
    pruned = {trial["trial"] for trial in board["pruned"]}
    assert len(trained) + len(pruned) == 4 and not pruned & {n[: -len(".train")] for n in trained}
    scores = {
        p.stem: statistics.fmean(json.loads(p.read_text())["scores"])
        for p in results.glob("trial-*.json")
        if not p.name.endswith(".train.json")
    }
    assert len(scores) == len(trained) >= 2 and len(set(scores.values())) > 1
    best = max(scores, key=scores.__getitem__)
    assert board["best"] == best and board["rows"][1]["method"] == best
    best_toml = (tmp_path / "search" / "best.toml").read_text()
    lr = board["best_params"]["optim.lr"]
    assert f"lr = {lr}" in best_toml and 'split = "test"' in best_toml and best in best_toml

    # evaluated while training on the validation split, not the test split (reasoning_gym's
    # generated splits can share a prompt by chance, so the lists are compared, not the sets)
    data = PromptDataCfg(prompts=PROMPTS, eval_size=4)
    validation = [row["prompt"] for row in prompt_rows(data, "validation")]
    heldout = json.loads((results.parent / best / "heldout.json").read_text())
    assert heldout["prompts"] == validation != [row["prompt"] for row in prompt_rows(data, "test")]
