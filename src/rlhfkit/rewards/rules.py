"""Rule rewards: completion length, format and the number written. Cheap, transparent, and handy
as shaping terms, as sanity checks of a training loop (a policy should learn to hit a length
target fast), or as measurements for goal relabelling.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from rlhfkit.errors import ConfigError
from rlhfkit.rewards.registry import RewardFn, register_reward

ANSWER_TAGS = r"<answer>.*?</answer>"


def word_count(prompts: list[str], completions: list[str], **meta: list[Any]) -> list[float]:
    """Number of whitespace-separated words in each completion.

    >>> word_count(["Say hi"], ["hi there, friend"])
    [3.0]
    """
    return [float(len(text.split())) for text in completions]


def length_deviation(
    prompts: list[str], completions: list[str], *, target: int, **meta: list[Any]
) -> list[float]:
    """``-|words - target| / target``: 0 at the target, -1 for an empty completion.

    Relative, so the same reward scale suits a target of 10 words or 200.

    >>> length_deviation(["Q", "Q"], ["one two", "one two three four"], target=2)
    [0.0, -1.0]
    """
    return [-abs(len(text.split()) - target) / target for text in completions]


def matches_format(
    prompts: list[str], completions: list[str], *, pattern: re.Pattern[str], **meta: list[Any]
) -> list[float]:
    """1.0 where ``pattern`` is found anywhere in the completion (``re.search``), else 0.0.

    >>> matches_format(["Q", "Q"], ["so <answer>4</answer>", "4"], pattern=re.compile(ANSWER_TAGS))
    [1.0, 0.0]
    """
    return [1.0 if pattern.search(text) else 0.0 for text in completions]


_WHOLE_NUMBER = re.compile(r"\d+")


def first_number(prompts: list[str], completions: list[str], **meta: list[Any]) -> list[float]:
    """The first whole number written in digits in each completion, -1 when there is none.

    A measurement more than a score: goal relabelling reads from it the number a sample wrote.

    >>> first_number(["Q", "Q", "Q"], ["about 12 or 13", "none", "x7y"])
    [12.0, -1.0, 7.0]
    """
    found = [_WHOLE_NUMBER.search(text) for text in completions]
    # capped: a run of 400 digits would otherwise be an infinite score
    return [min(float(match.group()), 1e15) if match else -1.0 for match in found]


@register_reward("number")
def number_reward(arg: str | None) -> RewardFn:
    """The first whole number in the completion (digits), -1 when none: measures number goals."""
    if arg is not None:
        raise ConfigError(
            f"reward number:{arg}: the number reward takes no argument; use plain number"
        )
    return first_number


@register_reward("length")
def length_reward(arg: str | None) -> RewardFn:
    """Words in the completion; length:N scores -|words - N| / N (best 0 at N words)."""
    if arg is None:
        return word_count
    try:
        target = int(arg)
    except ValueError:
        target = 0
    if target < 1:
        raise ConfigError(
            f"reward length:{arg}: the target must be a whole number of words "
            ">= 1, as in length:50 (or plain length for the word count)"
        )
    return functools.partial(length_deviation, target=target)


@register_reward("format")
def format_reward(arg: str | None) -> RewardFn:
    """1 if the completion matches format:REGEX (re.search, DOTALL), else 0; default: answer tags.

    >>> format_reward(None)(["Q", "Q"], ["<answer>4</answer>", "4"])
    [1.0, 0.0]
    """
    source = ANSWER_TAGS if arg is None else arg
    try:
        pattern = re.compile(source, re.DOTALL)
    except re.error as e:
        raise ConfigError(
            f"reward format:{arg}: not a valid regular expression ({e}); "
            "fix the pattern (quote it in the shell)"
        ) from None
    return functools.partial(matches_format, pattern=pattern)
