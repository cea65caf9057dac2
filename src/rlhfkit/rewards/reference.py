"""Rewards against a reference in the row's meta: QA exact match and token F1, the letter of a
multiple-choice answer, and chrF / BLEU for translation.

Each is a task's standard metric, usable as a verifiable reward in grpo and as a figure in
``rlhfkit eval --reward NAME``:

- ``exact_match`` / ``token_f1``: SQuAD's (Rajpurkar et al., 2016) over the gold ``answers``
  (a list; a plain string counts as one), the best over them;
- ``choice``: 1 when the completion's answer letter is the gold ``answer`` (MMLU);
- ``chrf`` / ``bleu``: sacrebleu's sentence-level chrF (Popović, 2015) and BLEU (Papineni et
  al., 2002) against the ``reference``, on 0..1 (sacrebleu reports 0..100). Sentence BLEU of a
  short string is often 0 (no 4-gram match): chrF is the reward to train with.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from typing import Any

from rlhfkit.errors import ConfigError, RewardError
from rlhfkit.rewards.registry import RewardFn, no_argument, register_reward

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
_LETTER_AFTER_ANSWER = re.compile(r"answer\s*(?:is|:)?\s*:?\s*\(?([A-D])\b", re.IGNORECASE)
_LEADING_LETTER = re.compile(r"^\W*([A-D])(?=\s*$|[.):\n])")  # "B", "(C)", "D. Paris"; not "A good"


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, drop punctuation, drop the articles a/an/the, and
    collapse whitespace.

    >>> normalize_answer("The  Eiffel Tower!")
    'eiffel tower'
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when ``normalize_answer`` makes both equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD's token F1: with ``c`` the tokens both share (as a multiset), ``p = c / |pred|``,
    ``r = c / |gold|``, ``F1 = 2pr / (p + r)``; 0 when they share none. Two empty answers
    count as equal (1.0).

    >>> token_f1("the Eiffel tower in Paris", "Eiffel Tower")  # p = 2/4, r = 2/2
    0.6666666666666666
    """
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    common = sum((Counter(predicted) & Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def best_over(metric: Any, prediction: str, answers: list[str]) -> float:
    """The metric against the gold answer it agrees with most (SQuAD's max over answers)."""
    return max(metric(prediction, gold) for gold in answers)


def short_answer(completion: str) -> str:
    """The answer part of a completion: its first non-empty line, "Answer:" stripped (a chatty
    model's explanation on later lines is not held against it).

    >>> short_answer("Answer: Paris\\nIt is the capital.")
    'Paris'
    """
    for line in completion.splitlines():
        if line.strip():
            return re.sub(r"^\s*answer\s*:\s*", "", line, flags=re.IGNORECASE).strip()
    return ""


def answer_letter(completion: str) -> str | None:
    """The option letter a completion picks: after "answer (is)", else a leading letter alone or
    before ".", ")" or ":" ("B", "(C)", "D. Paris"; the article in "A good one" is none); None
    when it names none.

    >>> answer_letter("The answer is (C)."), answer_letter("B. 42"), answer_letter("A good one")
    ('C', 'B', None)
    """
    found = _LETTER_AFTER_ANSWER.search(completion) or _LEADING_LETTER.search(completion)
    return found.group(1).upper() if found else None


def _column(reward: str, meta: dict[str, list[Any]], name: str, fix: str) -> list[Any]:
    if name not in meta:
        found = ", ".join(sorted(meta)) or "none"
        raise RewardError(
            f"reward {reward!r} reads each row's {name!r} column; the data has: {found}. {fix}"
        )
    return meta[name]


def _answers(value: Any) -> list[str]:
    answers = [value] if isinstance(value, str) else list(value or [])
    if not answers or not all(isinstance(a, str) for a in answers):
        raise RewardError(f"gold answers {value!r}: give a non-empty list of strings")
    return answers


_QA_FIX = "Use qa:fanoutqa or a prompt file with an 'answers' list per row"


def _qa_reward(name: str, metric: Any) -> RewardFn:
    def reward(prompts: list[str], completions: list[str], **meta: list[Any]) -> list[float]:
        golds = _column(name, meta, "answers", _QA_FIX)
        return [
            best_over(metric, short_answer(c), _answers(g))
            for c, g in zip(completions, golds, strict=True)
        ]

    return reward


@register_reward("exact_match")
def exact_match_reward(arg: str | None) -> RewardFn:
    """SQuAD exact match of the completion's first line with any gold 'answers' (0 or 1)."""
    no_argument("exact_match", arg)
    return _qa_reward("exact_match", exact_match)


@register_reward("token_f1")
def token_f1_reward(arg: str | None) -> RewardFn:
    """SQuAD token F1 of the completion's first line with the best gold 'answers' (0..1)."""
    no_argument("token_f1", arg)
    return _qa_reward("token_f1", token_f1)


@register_reward("choice")
def choice_reward(arg: str | None) -> RewardFn:
    """Multiple choice: 1 when the completion's letter is the gold 'answer' letter (mmlu:*)."""
    no_argument("choice", arg)

    def reward(prompts: list[str], completions: list[str], **meta: list[Any]) -> list[float]:
        golds = _column("choice", meta, "answer", "Use mmlu:all or rows with an 'answer' letter")
        return [
            float(answer_letter(c) == str(g).strip().upper())
            for c, g in zip(completions, golds, strict=True)
        ]

    return reward


@functools.cache
def _sacrebleu() -> Any:
    try:
        import sacrebleu.metrics
    except ImportError:
        raise ConfigError(
            "rewards chrf and bleu need sacrebleu: pip install 'rlhfkit[tasks]'"
        ) from None
    return sacrebleu.metrics


@functools.cache
def _chrf_metric() -> Any:
    return _sacrebleu().CHRF()


@functools.cache
def _bleu_metric() -> Any:
    return _sacrebleu().BLEU(effective_order=True)


def chrf(hypothesis: str, reference: str) -> float:
    """sacrebleu's sentence chrF (character 6-grams, beta = 2) on 0..1:
    ``chrF = (1 + b^2) P R / (b^2 P + R)`` with P, R the mean n-gram precision and recall."""
    return _chrf_metric().sentence_score(hypothesis, [reference]).score / 100


def bleu(hypothesis: str, reference: str) -> float:
    """sacrebleu's sentence BLEU on 0..1 with exponential smoothing and effective order (its
    sentence-level defaults): ``BP * exp(mean_n log p_n)`` over 1..4-grams, BP the brevity
    penalty."""
    return _bleu_metric().sentence_score(hypothesis, [reference]).score / 100


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """Corpus-level chrF and BLEU (0..100, as papers report them) over aligned lists."""
    metrics = _sacrebleu()
    return {
        "chrf": metrics.CHRF().corpus_score(hypotheses, [references]).score,
        "bleu": metrics.BLEU().corpus_score(hypotheses, [references]).score,
    }


def _translation_reward(name: str, metric: Any) -> RewardFn:
    def reward(prompts: list[str], completions: list[str], **meta: list[Any]) -> list[float]:
        references = _column(
            name, meta, "reference", "Use translation:fr|de|es or rows with a 'reference'"
        )
        return [
            metric(short_answer(c), str(r)) for c, r in zip(completions, references, strict=True)
        ]

    return reward


@register_reward("chrf")
def chrf_reward(arg: str | None) -> RewardFn:
    """Translation: sentence chrF (sacrebleu) of the first line with the 'reference' (0..1)."""
    no_argument("chrf", arg)
    _sacrebleu()
    return _translation_reward("chrf", chrf)


@register_reward("bleu")
def bleu_reward(arg: str | None) -> RewardFn:
    """Translation: sentence BLEU (sacrebleu) of the first line with the 'reference' (0..1)."""
    no_argument("bleu", arg)
    _sacrebleu()
    return _translation_reward("bleu", bleu)
