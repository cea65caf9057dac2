"""Compare's statistics and tables: t quantiles, intervals, paired differences, markdown."""

from __future__ import annotations

import math

import pytest

from rlhfkit.eval.comparison import (
    Interval,
    MethodResult,
    render_markdown,
    summarise,
    t_interval,
    t_quantile,
)


@pytest.mark.parametrize(
    ("df", "expected"), [(1, 12.7062), (3, 3.1824), (9, 2.2622), (29, 2.0452), (100_000, 1.9600)]
)
def test_t_quantile_matches_the_printed_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_t_interval_by_hand():
    # mean 2.5, s = sqrt(5/3) = 1.29099, s/sqrt(4) = 0.645497, t(0.975, 3) = 3.182446
    interval = t_interval([1.0, 2.0, 3.0, 4.0])
    assert interval.mean == 2.5 and interval.n == 4
    assert interval.half_width == pytest.approx(3.182446 * 0.645497, rel=1e-5)
    assert interval.low == pytest.approx(2.5 - 2.054260, abs=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([1.0])


def result(method, seed, scores, kl=(), seconds=None):
    return MethodResult(method, seed, list(scores), list(kl), [4] * len(scores), seconds)


def test_seeds_are_pooled_per_prompt_and_paired_against_the_base():
    results = {
        "base": [result("base", 0, [0.0, 1.0, 0.0]), result("base", 1, [0.0, 0.0, 1.0])],
        # prompt means 1, 1, 0.5 against the base's 0, 0.5, 0.5: differences 1, 0.5, 0
        "good": [
            result("good", 0, [1.0, 1.0, 0.0], kl=[1.0, 2.0, 3.0], seconds=10.0),
            result("good", 1, [1.0, 1.0, 1.0], kl=[0.0, 0.0, 0.0], seconds=20.0),
        ],
        # the same as the base on every prompt, so no difference at all
        "same": [
            result("same", 0, [0.0, 1.0, 0.0], seconds=1.0),
            result("same", 1, [0.0, 0.0, 1.0], seconds=1.0),
        ],
    }
    base, good, same = summarise(results)
    assert base.score.mean == pytest.approx(1 / 3) and base.vs_base is None
    assert base.beats_base is None and base.seconds is None and base.seeds == 2
    assert good.score.mean == pytest.approx(2.5 / 3)
    # differences 1, 0.5, 0: mean 0.5, s = 0.5, half width t(0.975, 2) * 0.5 / sqrt(3)
    assert good.vs_base.mean == pytest.approx(0.5)
    assert good.vs_base.half_width == pytest.approx(4.302653 * 0.5 / math.sqrt(3), rel=1e-5)
    assert good.beats_base is False  # 3 prompts: the interval reaches below 0
    assert good.kl == pytest.approx(1.0) and good.length == 4 and good.seconds == 15.0
    assert same.vs_base.mean == 0 and same.beats_base is False


def test_a_clear_paired_gain_beats_the_base_even_when_the_intervals_overlap():
    base_scores = [0.1 * i for i in range(10)]
    results = {
        "base": [result("base", 0, base_scores)],
        "better": [result("better", 0, [s + 0.05 for s in base_scores], seconds=1.0)],
    }
    base, better = summarise(results)
    assert better.score.low < base.score.high  # unpaired, the two would look alike
    assert better.vs_base.half_width == pytest.approx(0.0, abs=1e-9) and better.beats_base


def test_seeds_must_score_the_same_prompts():
    with pytest.raises(ValueError, match="different numbers of prompts"):
        summarise({"base": [result("base", 0, [1.0, 0.0]), result("base", 1, [1.0])]})


def test_markdown_table():
    rows = summarise(
        {
            "base": [result("base", 0, [0.0, 0.2])],
            "rft": [result("rft", 0, [0.5, 0.7], kl=[2.0, 4.0], seconds=123.4)],
        }
    )
    text = render_markdown("sentiment", rows, ["Prompts vader:movies."])
    lines = text.splitlines()
    assert lines[:3] == ["### sentiment", "", "Prompts vader:movies."]
    assert lines[4].startswith("| method | held-out score (95% CI) | vs base")
    # base: mean 0.1, s = 0.141421, t(0.975, 1) = 12.7062 -> half width 1.270620
    assert lines[6] == "| base | +0.100 ± 1.271 | — | — | 0.00 | 4.0 | — | 1 |"
    assert lines[7] == "| rft | +0.600 ± 1.271 | +0.500 ± 0.000 | yes | 3.00 | 4.0 | 123 | 1 |"


def test_interval_half_width():
    assert Interval(1.0, 0.5, 1.5, 3).half_width == 0.5
