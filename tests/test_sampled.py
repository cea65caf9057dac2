"""The shared sampling stage: K scored samples per prompt, best-of-K and best-vs-worst pairs."""

from __future__ import annotations

import json

import pytest

from rlhfkit.config import GenCfg
from rlhfkit.data.feedback import load_demonstrations, load_pairs
from rlhfkit.errors import DataError
from rlhfkit.train.sampled import (
    SampledFiles,
    best_per_prompt,
    pairs_per_prompt,
    run_stage,
    sample_and_score,
    write_sampled,
)


def sample(prompt_index, k, score, prompt=None):
    return {
        "prompt": prompt or f"p{prompt_index}",
        "completion": f"c{prompt_index}-{k}",
        "score": score,
        "sample": k,
        "prompt_index": prompt_index,
    }


SAMPLES = [
    sample(0, 0, 0.2),
    sample(0, 1, 0.9),
    sample(0, 2, -0.4),
    sample(1, 1, 0.5),
    sample(1, 0, 0.5),  # a tie, listed out of order
    sample(2, 0, 0.0),
    sample(2, 1, 0.3),
]


def test_best_per_prompt_takes_the_top_score_and_the_first_of_a_tie():
    assert best_per_prompt(SAMPLES) == [
        {"prompt": "p0", "completion": "c0-1", "finished": True, "score": 0.9},
        {"prompt": "p1", "completion": "c1-0", "finished": True, "score": 0.5},
        {"prompt": "p2", "completion": "c2-1", "finished": True, "score": 0.3},
    ]
    assert [b["prompt"] for b in best_per_prompt(SAMPLES, min_score=0.5)] == ["p0", "p1"]


def test_pairs_are_best_against_worst_and_need_the_margin():
    assert pairs_per_prompt(SAMPLES, min_margin=0.0) == [
        {
            "prompt": "p0",
            "chosen": "c0-1",
            "rejected": "c0-2",
            "margin": pytest.approx(1.3),
            "chosen_finished": True,
            "rejected_finished": True,
        },
        {
            "prompt": "p2",
            "chosen": "c2-1",
            "rejected": "c2-0",
            "margin": pytest.approx(0.3),
            "chosen_finished": True,
            "rejected_finished": True,
        },
    ]
    assert [p["prompt"] for p in pairs_per_prompt(SAMPLES, min_margin=0.5)] == ["p0"]
    with pytest.raises(DataError, match="min_margin"):
        pairs_per_prompt(SAMPLES, min_margin=-1)


def test_written_files_load_as_demonstrations_and_pairs(tmp_path):
    from rlhfkit.config import FeedbackDataCfg

    files = write_sampled(tmp_path, SAMPLES, min_margin=0.0)
    assert files == SampledFiles.in_directory(tmp_path) and files.exist()
    rows = [json.loads(line) for line in files.samples.read_text().splitlines()]
    assert rows == SAMPLES
    best = load_demonstrations(FeedbackDataCfg(path=str(files.best), eval_fraction=0.0), "train")
    assert [(d.prompt, d.completion) for d in best] == [
        ("p0", "c0-1"),
        ("p1", "c1-0"),
        ("p2", "c2-1"),
    ]
    pairs = load_pairs(FeedbackDataCfg(path=str(files.pairs), eval_fraction=0.0), "train")
    assert [(p.chosen, p.rejected) for p in pairs] == [("c0-1", "c0-2"), ("c2-1", "c2-0")]


def test_sample_and_score_keeps_the_rows_and_is_seeded(tiny_lm):
    model, tokenizer = tiny_lm
    rows = [{"prompt": "The movie was", "id": "a"}, {"prompt": "She said the", "id": "b"}]
    gen = GenCfg(max_new_tokens=6, batch_size=8, chat_template="off")
    seen = {}

    def reward(prompts, completions, **meta):
        seen.update(meta)
        return [float(len(c)) for c in completions]

    samples = sample_and_score(model, tokenizer, rows, gen, reward, samples_per_prompt=3, seed=7)
    assert [(s["prompt_index"], s["sample"], s["id"]) for s in samples] == [
        (0, 0, "a"),
        (0, 1, "a"),
        (0, 2, "a"),
        (1, 0, "b"),
        (1, 1, "b"),
        (1, 2, "b"),
    ]
    assert all(s["score"] == len(s["completion"]) for s in samples)
    # a random tiny model almost never ends within 6 tokens: its samples are marked cut off
    assert all(isinstance(s["finished"], bool) for s in samples) and not all(
        s["finished"] for s in samples
    )
    assert seen["id"] == ["a"] * 3 + ["b"] * 3  # the reward reads the rows' columns
    again = sample_and_score(model, tokenizer, rows, gen, reward, samples_per_prompt=3, seed=7)
    assert [s["completion"] for s in again] == [s["completion"] for s in samples]
    with pytest.raises(DataError, match="no prompts"):
        sample_and_score(model, tokenizer, [], gen, reward, samples_per_prompt=3, seed=7)


def test_a_finished_stage_is_reused(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    rows = [{"prompt": "The movie was"}, {"prompt": "She said the"}]
    gen = GenCfg(max_new_tokens=4, batch_size=8, chat_template="off")
    calls = []

    def reward(prompts, completions, **meta):
        calls.append(len(completions))
        return [0.0, 1.0, 2.0, 0.5, 1.0, 1.5]  # gaps: 2 for the first prompt, 1 for the second

    stage = run_stage(tmp_path, model, tokenizer, rows, gen, reward, 3, seed=1, min_margin=1.5)
    assert calls == [6]
    assert {k: stage[k] for k in ("prompts", "samples", "best", "pairs", "seed")} == {
        "prompts": 2,
        "samples": 6,
        "best": 2,
        "pairs": 1,
        "seed": 1,
    }
    assert json.loads((tmp_path / "stage.json").read_text()) == stage
    assert run_stage(tmp_path, model, tokenizer, rows, gen, reward, 3, seed=1) == stage
    assert calls == [6]  # nothing sampled or scored again
