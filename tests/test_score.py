"""`rlhfkit score`: scores land in a new column, other fields survive, failures change nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfkit.cli import main as cli_main
from rlhfkit.commands.score import Config, main
from rlhfkit.errors import DataError, RewardError

ROWS = [
    {"prompt": "Review:", "completion": "a fine film", "id": 1, "info": {"tags": ["x", "é"]}},
    {"prompt": "Review:", "completion": "dull", "id": 2, "info": None},
    {"prompt": "Review:", "completion": "one two three four five", "id": 3, "info": {}},
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8"
    )
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def problems(cfg: Config) -> list[str]:
    return [f"{p.field}: {p.message}" for p in cfg.check()]


def test_scores_are_written_back_into_the_input_keeping_every_field(tmp_path, capsys):
    data = write_rows(tmp_path / "samples.jsonl", ROWS)
    cfg = Config(input=str(data), reward="length", batch_size=2)
    assert problems(cfg) == []
    main(cfg)
    words = [3.0, 1.0, 5.0]
    assert read_rows(data) == [{**row, "reward": n} for row, n in zip(ROWS, words, strict=True)]
    assert "scored 3 completions with length" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [data], "no temporary file may be left behind"


def test_rescoring_replaces_the_column_and_prints_the_summary(tmp_path, capsys):
    data = write_rows(tmp_path / "samples.jsonl", [{**row, "score": -9} for row in ROWS])
    main(Config(input=str(data), reward="length:3", score_field="score"))
    assert [row["score"] for row in read_rows(data)] == [0.0, -2 / 3, -2 / 3]
    out = capsys.readouterr().out
    assert "mean -0.4444, min -0.6667, max 0.0000" in out


def test_an_output_path_leaves_the_input_alone(tmp_path):
    data = write_rows(tmp_path / "samples.jsonl", ROWS)
    before = data.read_bytes()
    out = tmp_path / "scored" / "out.jsonl"
    main(Config(input=str(data), reward="format:film", output=str(out)))
    assert data.read_bytes() == before
    assert [row["reward"] for row in read_rows(out)] == [1.0, 0.0, 0.0]


def test_other_columns_reach_the_reward_as_meta(tmp_path):
    import reasoning_gym

    items = list(reasoning_gym.create_dataset("chain_sum", size=2, seed=3))
    rows = [
        {
            "prompt": items[0]["question"],
            "completion": f"<answer>{items[0]['answer']}</answer>",
            "entry": items[0],
        },
        {
            "prompt": items[1]["question"],
            "completion": "<answer>not a number</answer>",
            "entry": items[1],
        },
    ]
    data = write_rows(tmp_path / "math.jsonl", rows)
    main(Config(input=str(data), reward="reasoning_gym:chain_sum", batch_size=1))
    assert [row["reward"] for row in read_rows(data)] == [1.0, 0.0]

    write_rows(data, [*rows, {"prompt": "Q", "completion": "<answer>1</answer>", "entry": "oops"}])
    with pytest.raises(RewardError, match=f"on row 3 of {data} .*column 'entry' holds str"):
        main(Config(input=str(data), reward="reasoning_gym:chain_sum", batch_size=2))


def test_a_failing_reward_names_the_row_and_leaves_the_file_unchanged(tmp_path):
    rewards = tmp_path / "my_reward.py"
    rewards.write_text(
        "def picky(prompts, completions, **meta):\n"
        "    if 'dull' in completions:\n"
        "        raise ValueError('too dull to score')\n"
        "    return [1.0] * len(completions)\n"
        "def not_finite(prompts, completions, **meta):\n"
        "    return [float('nan') if c == 'bad' else 0.0 for c in completions]\n"
    )
    extra = [{"prompt": "Review:", "completion": c, "id": i} for i, c in ((4, "ok"), (5, "bad"))]
    data = write_rows(tmp_path / "samples.jsonl", ROWS + extra)
    before = data.read_bytes()
    with pytest.raises(RewardError) as error:
        main(Config(input=str(data), reward=f"{rewards}:picky", batch_size=4))
    assert str(error.value) == (
        f"reward '{rewards}:picky' on row 2 of {data} (completion 'dull'): "
        "raised ValueError: too dull to score"
    )
    with pytest.raises(RewardError, match=f"on row 5 of {data} .*scores must be finite"):
        main(Config(input=str(data), reward=f"{rewards}:not_finite", batch_size=4, prompt_field=""))
    assert data.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_reward.py", "samples.jsonl"]


def test_bad_columns_are_data_errors(tmp_path):
    data = write_rows(tmp_path / "samples.jsonl", [{"prompt": "Q", "text": "a"}])
    with pytest.raises(DataError, match="row 1 has no 'completion' column .* --completion_field"):
        main(Config(input=str(data), reward="length"))
    write_rows(data, [{"prompt": "Q", "completion": 42}])
    with pytest.raises(DataError, match="row 1: 'completion' is int, expected text"):
        main(Config(input=str(data), reward="length"))


def test_preflight_check_names_each_bad_field(tmp_path):
    csv = tmp_path / "samples.csv"
    csv.write_text("prompt,completion\nQ,a\n")
    assert problems(Config()) == ["input: is required; pass --input FILE.jsonl"]
    assert problems(Config(input=str(csv))) == [
        f"output: is empty, so the input would be rewritten, but {csv} is not JSONL; "
        "pass --output FILE.jsonl"
    ]
    assert problems(Config(input=str(csv), output=str(tmp_path))) == [
        "output: scores are written as JSONL; give a .jsonl path",
        "output: is a directory; give a file name",
    ]
    found = problems(
        Config(input=str(csv), output="out.jsonl", reward="lenght:3", score_field="completion")
    )
    assert found[0] == (
        "score_field: would overwrite the prompt or completion column; choose another name"
    )
    assert found[1].startswith("reward: not registered; did you mean 'length'?")


def test_csv_input_can_be_scored_into_jsonl(tmp_path):
    csv = tmp_path / "samples.csv"
    csv.write_text("prompt,completion,id\nQ,a b,7\n")
    out = tmp_path / "out.jsonl"
    main(Config(input=str(csv), output=str(out), reward="length"))
    assert read_rows(out) == [{"prompt": "Q", "completion": "a b", "id": "7", "reward": 2.0}]


def test_the_cli_runs_score_and_reports_errors_in_one_line(tmp_path, capsys):
    data = write_rows(tmp_path / "samples.jsonl", ROWS)
    assert cli_main(["score", "--input", str(data), "--reward", "vader"]) == 0
    assert all(-1 <= row["reward"] <= 1 for row in read_rows(data))
    assert cli_main(["score", "--input", str(data), "--reward", "vadr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "rlhfkit score: error: reward = 'vadr': not registered; did you mean 'vader'?"
    )
