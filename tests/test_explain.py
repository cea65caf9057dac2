"""rlhfkit explain: leave-one-out for any reward, integrated gradients for a reward model.

Captum is the ``explain`` extra; without it these tests skip, and ``RLHFKIT_REQUIRE_EXPLAIN=1``
(set in CI) makes that a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from rlhfkit import cli, config_io
from rlhfkit.commands import explain
from rlhfkit.errors import ConfigError
from rlhfkit.eval import attribution


@pytest.fixture(autouse=True)
def need_captum() -> None:
    if importlib.util.find_spec("captum") is None:
        if os.environ.get("RLHFKIT_REQUIRE_EXPLAIN") == "1":
            pytest.fail("RLHFKIT_REQUIRE_EXPLAIN=1 but captum is not installed")
        pytest.skip("captum is not installed (pip install 'rlhfkit[explain]')")


def goods(prompts, completions, **meta):
    """1 per "good" in the completion, times the row's weight: a reward with known answers."""
    return [
        float(c.split().count("good")) * w for c, w in zip(completions, meta["weight"], strict=True)
    ]


def test_words_join_back_to_the_text():
    for text in ["", "   ", "one", " was a  delight \n", "a\tb"]:
        assert "".join(attribution.words(text)) == text
    assert attribution.words(" was a delight ") == [" was", " a", " delight "]


def test_leave_one_out_gives_each_word_what_removing_it_costs():
    item = attribution.leave_one_out(goods, "Q:", " good and good <b>", {"weight": 2.0})
    completion = [s for s in item.spans if s.part == "completion"]
    assert [s.text for s in completion] == [" good", " and", " good", " <b>"]
    assert [s.attribution for s in completion] == [2.0, 0.0, 2.0, 0.0]
    assert item.spans[0] == attribution.Span("Q:", "prompt", 0.0)  # held fixed
    assert (item.score, item.blanked_score) == (4.0, 0.0)
    page = attribution.html_page([item], "t")
    assert "&lt;b&gt;" in page and "<b>" not in page  # texts are escaped


def test_leave_one_out_over_the_prompt_too():
    def asks(prompts, completions, **meta):
        return [
            float("please" in p) + float("yes" in c)
            for p, c in zip(prompts, completions, strict=True)
        ]

    item = attribution.leave_one_out(asks, "say please", " yes", {}, part="both")
    assert [(s.text, s.part, s.attribution) for s in item.spans] == [
        ("say", "prompt", 0.0),
        (" please", "prompt", 1.0),
        (" yes", "completion", 1.0),
    ]


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory):
    from rlhfkit.models.reward_model import RewardModel

    torch.manual_seed(0)
    model = RewardModel.from_backbone(str(tiny_model_dir), max_length=64, device="cpu")
    return model.save(tmp_path_factory.mktemp("rm") / "model")


def test_integrated_gradients_add_up_to_what_the_completion_earns(reward_model_dir):
    from rlhfkit.models.reward_model import load_reward_model

    model = load_reward_model(str(reward_model_dir))
    item = attribution.integrated_gradients(
        model, "The movie was", " a delight from start to finish.", steps=64
    )
    assert "".join(s.text for s in item.spans) == "The movie was a delight from start to finish."
    assert all(s.attribution == 0.0 for s in item.spans if s.part == "prompt")
    total = sum(s.attribution for s in item.spans)
    assert item.score - item.blanked_score != pytest.approx(0.0, abs=1e-4)  # something to share
    # completeness: the attributions share out f(x) - f(baseline), up to the Riemann sum's error
    assert total == pytest.approx(item.score - item.blanked_score, abs=0.02)
    assert abs(item.delta) < 0.02
    assert item.score == pytest.approx(model.score_texts([item.prompt + item.completion])[0])


def test_explain_command_writes_json_and_html(tmp_path, reward_model_dir):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"prompt": "A", "completion": " good good", "weight": 1.0},
                {"prompt": "B", "completion": " not good", "weight": 0.5},
            ]
        )
    )
    rule = tmp_path / "rule.py"
    rule.write_text(
        "def goods(prompts, completions, **meta):\n"
        "    return [c.split().count('good') * w for c, w in zip(completions, meta['weight'])]\n"
    )
    out = tmp_path / "out"
    assert cli.main(["explain", "--input", str(rows), "--reward", f"{rule}:goods",
                     "--output_dir", str(out)]) == 0  # fmt: skip
    result = json.loads((out / "attributions.json").read_text())
    assert [r["method"] for r in result["rows"]] == ["leave-one-out"] * 2
    assert [s["attribution"] for s in result["rows"][1]["spans"]] == [0.0, 0.0, 0.5]
    assert "What moved" in (out / "attributions.html").read_text()

    # earlier attributions are kept unless --overwrite; a reward model gets integrated gradients
    args = ["explain", "--input", str(rows), "--reward", f"rm:{reward_model_dir}", "--steps", "8",
            "--max_rows", "1", "--output_dir", str(out)]  # fmt: skip
    assert cli.main(args) == 2
    assert cli.main([*args, "--overwrite"]) == 0
    result = json.loads((out / "attributions.json").read_text())
    assert [r["method"] for r in result["rows"]] == ["integrated-gradients"]


def test_integrated_gradients_need_a_reward_model():
    with pytest.raises(ConfigError, match="method = 'integrated-gradients': needs a diff"):
        config_io.load(
            explain.Config,
            ["--input", "x.jsonl", "--reward", "length:5", "--method", "integrated-gradients"],
        )
