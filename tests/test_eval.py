"""Held-out evaluation of a policy and the curves plot, on a tiny model."""

from __future__ import annotations

from contextlib import nullcontext

import pytest

from rlhfkit.config import GenCfg
from rlhfkit.eval.policy import PolicyEval, evaluate_policy
from rlhfkit.eval.report import plot_curves
from rlhfkit.rewards import load_reward


def test_evaluate_policy_scores_and_kl_to_itself_is_zero(tiny_lm):
    model, tokenizer = tiny_lm
    rows = [{"prompt": p} for p in ("The movie was", "What is two", "She said the")]
    gen = GenCfg(max_new_tokens=6, batch_size=2, chat_template="off")
    result = evaluate_policy(
        model,
        tokenizer,
        rows,
        gen,
        {"words": load_reward("length")},
        seed=3,
        reference=lambda: nullcontext(model),
    )
    assert len(result.completions) == 3 and len(result.scores["words"]) == 3
    assert result.kl == pytest.approx([0.0, 0.0, 0.0], abs=1e-3)  # the policy is its own reference
    assert all(1 <= n <= 6 for n in result.lengths)
    again = evaluate_policy(model, tokenizer, rows, gen, {"words": load_reward("length")}, seed=3)
    assert again.completions == result.completions and again.kl == []  # same seed, no reference


def test_evaluate_policy_conditions_sampling_but_rewards_see_the_original_prompt(tiny_lm):
    from rlhfkit.conditioning import Conditioning

    model, tokenizer = tiny_lm
    rows = [{"prompt": "The sea"}, {"prompt": "She said"}]
    gen = GenCfg(max_new_tokens=4, temperature=0, chat_template="off")

    def prompt_length(prompts, completions, **meta):
        return [float(len(p)) for p in prompts]

    asked = Conditioning("coh", instruction="The movie was {prompt}", response_prefix=" and")
    result = evaluate_policy(
        model,
        tokenizer,
        rows,
        gen,
        {"seen": prompt_length},
        seed=0,
        conditioning=asked,
        reference=lambda: nullcontext(model),
    )
    assert result.scores["seen"] == [7.0, 8.0]  # "The sea", "She said": not the asked text
    assert result.kl == pytest.approx([0.0, 0.0], abs=1e-3)
    direct = evaluate_policy(
        model,
        tokenizer,
        [{"prompt": "The movie was The sea and"}],
        gen,
        {"seen": prompt_length},
        seed=0,
    )
    assert result.completions[0] == direct.completions[0]


def test_positive_rate_uses_vader_threshold():
    result = PolicyEval(
        completions=["a", "b", "c", "d"],
        lengths=[1, 1, 1, 1],
        scores={"judge": [0.05, 0.049, -0.3, 0.9]},
    )
    assert result.positive_rate("judge") == 0.5
    assert result.mean("judge") == pytest.approx((0.05 + 0.049 - 0.3 + 0.9) / 4)


def test_plot_curves_writes_a_png(tmp_path):
    rows = [{"step": i, "reward": i / 10, "kl": i / 20, "length": 20 + i % 3} for i in range(1, 13)]
    path = plot_curves(rows, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_curves([], tmp_path / "none.png") is None
