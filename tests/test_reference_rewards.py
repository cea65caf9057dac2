"""Reference-based rewards against hand-computed values: SQuAD EM / F1, the MMLU letter, chrF
and BLEU (sacrebleu: ``RLHFKIT_REQUIRE_TASKS=1``, as in CI, turns its skip into a failure)."""

from __future__ import annotations

import os

import pytest

from rlhfkit.errors import RewardError
from rlhfkit.rewards import load_reward
from rlhfkit.rewards.reference import (
    answer_letter,
    exact_match,
    normalize_answer,
    short_answer,
    token_f1,
)


def needs_sacrebleu() -> None:
    try:
        import sacrebleu  # noqa: F401
    except ImportError as e:
        if os.environ.get("RLHFKIT_REQUIRE_TASKS") == "1":
            pytest.fail(f"RLHFKIT_REQUIRE_TASKS=1 but sacrebleu does not import ({e})")
        pytest.skip("sacrebleu (the tasks extra) is not installed")


def test_squad_normalisation():
    assert normalize_answer("  The Eiffel-Tower, an  icon!") == "eiffeltower icon"
    assert normalize_answer("A theatre") == "theatre"  # "the" inside a word stays
    assert exact_match("the Beatles.", "Beatles") == 1.0
    assert exact_match("Beatles band", "Beatles") == 0.0


def test_token_f1_by_hand():
    # shared {eiffel, tower}: p = 2/4, r = 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3
    assert token_f1("the Eiffel tower in Paris", "Eiffel Tower") == pytest.approx(2 / 3)
    # a repeated token counts as often as both have it: shared {a-less "new", "york"} ...
    assert token_f1("new new york", "new york") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("Paris", "London") == 0.0
    assert token_f1("the", "a") == 1.0  # both empty after normalisation


def test_qa_rewards_take_the_best_gold_answer_and_the_first_line():
    answers = [["Ridley Scott", "R. Scott"], ["1463000", "1,463,000"]]
    completions = ["Answer: r scott\nHe directed Alien.", "About 1,463,000 people"]
    em = load_reward("exact_match")(["q1", "q2"], completions, answers=answers)
    f1 = load_reward("token_f1")(["q1", "q2"], completions, answers=answers)
    assert em == [1.0, 0.0]
    assert f1 == [1.0, pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))]
    assert short_answer("\n  \nAnswer:  Left  \nmore") == "Left"
    with pytest.raises(RewardError, match="'answers' column; the data has: reference"):
        load_reward("token_f1")(["q"], ["a"], reference=["a"])


def test_choice_reads_the_letter():
    assert answer_letter("The answer is (b)") == "B"
    assert answer_letter("Answer: D") == "D"
    assert answer_letter("C. Because it scatters") == "C"
    assert answer_letter("(A)") == "A" and answer_letter("B\nbecause") == "B"
    assert answer_letter("A good question.") is None  # an article, not an option
    assert answer_letter("Because the sky") is None
    scores = load_reward("choice")(["q"] * 3, ["B", "answer is C", "none"], answer=["B", "D", "A"])
    assert scores == [1.0, 0.0, 0.0]


def test_chrf_by_hand():
    needs_sacrebleu()
    # "abc" vs "abd", character n-grams n = 1..3 (no 4- to 6-grams in either): precisions and
    # recalls 2/3, 1/2, 0, so P = R = 7/18 averaged over the 3 orders, and chrF_2 = P = 7/18
    chrf = load_reward("chrf")
    assert chrf(["p"], ["abc"], reference=["abd"]) == [pytest.approx(7 / 18)]
    assert chrf(["p"], ["Le chat noir"], reference=["Le chat noir"]) == [pytest.approx(1.0)]


def test_bleu_bounds_and_corpus_scores():
    needs_sacrebleu()
    from rlhfkit.rewards.reference import bleu, corpus_scores

    assert bleu("le chat est noir", "le chat est noir") == pytest.approx(1.0)
    assert bleu("un deux", "trois quatre") == 0.0
    assert load_reward("bleu")(["p"], ["x"], reference=["x"]) == [pytest.approx(1.0)]
    corpus = corpus_scores(["le chat est noir", "abc"], ["le chat est noir", "abd"])
    assert 0 < corpus["bleu"] < 100 and 0 < corpus["chrf"] < 100
