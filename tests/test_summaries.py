"""Summarisation: the wiki:summaries set, the rouge_l and similarity rewards, the recipes at tiny
scale."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from rlhfkit import config_io
from rlhfkit.config import FeedbackDataCfg
from rlhfkit.data.builtin import load_builtin
from rlhfkit.data.feedback import load_demonstrations
from rlhfkit.errors import RewardError
from rlhfkit.rewards import load_reward
from test_wiki import wiki_fixture  # noqa: F401  # the fixture, used by name

RECIPES = Path(__file__).parent.parent / "recipes"

try:
    import rouge_score  # noqa: F401
except ImportError as e:
    if os.environ.get("RLHFKIT_REQUIRE_TASKS") == "1":
        pytest.fail(f"RLHFKIT_REQUIRE_TASKS=1 but rouge-score does not import ({e})")
    pytest.skip(f"rouge-score missing ({e}): pip install 'rlhfkit[tasks]'", allow_module_level=True)


def test_rouge_l_matches_a_pair_worked_out_by_hand():
    rouge_l = load_reward("rouge_l")
    # LCS of "the cat sat on the mat" / "the cat lay on the mat" is "the cat on the mat": 5 of 6
    # words each way, so P = R = F = 5/6; stemming makes "films" match "film"
    scores = rouge_l(
        ["p", "p", "p"],
        ["the cat lay on the mat", "American films", "nothing alike"],
        reference=["the cat sat on the mat", "American film", "Chemical element"],
    )
    assert scores == pytest.approx([5 / 6, 1.0, 0.0])


def test_a_row_without_a_reference_is_an_error_naming_the_fix():
    with pytest.raises(RewardError, match="no 'reference' column.*wiki:summaries"):
        load_reward("rouge_l")(["p"], ["c"], answer=["x"])


def test_wiki_summaries_gives_leads_with_their_descriptions(wiki_fixture):  # noqa: F811
    rows = [
        row
        for split in ("train", "validation", "test")
        for row in load_builtin("wiki:summaries", split)
    ]
    assert len(rows) == 40 - 6  # articles 0, 7, 14, ... have no description
    row = next(r for r in rows if r["title"] == "Article 3")
    assert row["reference"] == "Thing number 3"
    assert (
        row["prompt"].startswith("Article 3 is about uncategorized")
        and "what is Article 3?" in row["prompt"]
    )
    demonstrations = load_demonstrations(FeedbackDataCfg(path="wiki:summaries"), "train")
    assert {d.completion for d in demonstrations} <= {r["reference"] for r in rows}
    assert all(d.prompt.startswith(d.meta["title"]) for d in demonstrations)


def test_the_summaries_recipes_run_at_tiny_scale(tmp_path, tiny_model_dir, wiki_fixture):  # noqa: F811
    from rlhfkit.train import grpo, sft

    # the tiny Llama with room for a lead and its request (rotary positions: no weights to add)
    model_dir = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 512}))
    tiny = ["--model.path", str(model_dir), "--model.device", "cpu", "--log.progress", "false"]
    cfg = config_io.load(
        sft.Config,
        [
            "--config",
            str(RECIPES / "summaries-sft.toml"),
            *tiny,
            "--train.max_steps",
            "2",
            "--train.batch_size",
            "2",
            "--train.max_length",
            "400",
            "--train.max_eval",
            "4",
            "--run.output_dir",
            str(tmp_path / "sft"),
        ],
        command="sft",
    )
    tuned = sft.train(cfg)
    assert tuned.summary["eval_nll_after"] is not None
    cfg = config_io.load(
        grpo.Config,
        [
            "--config",
            str(RECIPES / "summaries-grpo.toml"),
            *tiny,
            "--model.path",
            str(tmp_path / "sft" / "model"),
            "--steps",
            "1",
            "--algo.group_size",
            "2",
            "--algo.prompts_per_step",
            "2",
            "--algo.micro_batch_size",
            "4",
            "--data.eval_size",
            "2",
            "--gen.max_new_tokens",
            "4",
            "--eval.judge",
            "",
            "--run.output_dir",
            str(tmp_path / "grpo"),
        ],
        command="grpo",
    )
    result = grpo.train(cfg)
    assert 0.0 <= result.summary["reward_last"] <= 1.0


@pytest.mark.slow
def test_similarity_is_the_embedding_cosine_with_the_reference():
    similarity = load_reward("similarity")
    scores = similarity(
        ["p"] * 3,
        ["Chemical element", "A metallic chemical element", "American actor"],
        reference=["Chemical element"] * 3,
    )
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] > 0.6 > scores[2]
