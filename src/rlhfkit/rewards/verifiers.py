"""Verifiable rewards: a reasoning-gym task's own scorer checks the completion's answer.

No learned judge, nothing to hack: the score is whether the answer is right (some tasks give
partial credit). The scorer needs the dataset item each completion answers, so these rewards
read it from the per-item meta columns that ride along with the prompts.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

from rlhfkit.errors import ConfigError, RewardError, did_you_mean
from rlhfkit.rewards.registry import RewardFn, RewardItemError, register_reward

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"-?\d+(?:[./]\d+)?")


def extract_answer(completion: str) -> str | None:
    """The answer a completion gives: inside its last ``<answer>...</answer>``, else the last
    number on its last non-empty line, else that whole line; None for an empty completion.

    Small models often skip the tags the prompt asks for; taking the last number still scores
    "... so the total is 42." as 42 on the arithmetic tasks they are trained on.

    >>> extract_answer("Let me think. <answer> 12 </answer>")
    '12'
    >>> extract_answer("3 + 4 = 7\\nSo the total is 42.")
    '42'
    >>> extract_answer("I think...\\nThe colour is blue")
    'The colour is blue'
    >>> extract_answer("  ") is None
    True
    """
    tagged = _ANSWER_TAG.findall(completion)
    if tagged:
        return tagged[-1].strip()
    lines = [line.strip() for line in completion.splitlines() if line.strip()]
    if not lines:
        return None
    numbers = _NUMBER.findall(lines[-1])
    return numbers[-1] if numbers else lines[-1]


def dataset_entries(
    reward: str, prompts: list[str], completions: list[str], meta: dict[str, list[Any]]
) -> list[dict[str, Any]]:
    """The reasoning-gym item of each completion: meta ``entry``, or ``answer`` + ``metadata``."""
    if "entry" in meta:
        return [
            _as_dict(reward, i, completions[i], "entry", value)
            for i, value in enumerate(meta["entry"])
        ]
    if "answer" in meta:
        answers = meta["answer"]
        metadata = meta.get("metadata", [{}] * len(prompts))
        return [
            {
                "question": prompts[i],
                "answer": answers[i] if isinstance(answers[i], str) else json.dumps(answers[i]),
                "metadata": _as_dict(reward, i, completions[i], "metadata", metadata[i]),
            }
            for i in range(len(prompts))
        ]
    found = ", ".join(sorted(meta)) or "none"
    raise RewardError(
        f"reward {reward!r} needs each completion's dataset item: a column 'entry' "
        "(the reasoning-gym item) or 'answer' (plus 'metadata' where the task's "
        f"scorer reads it); the data has extra columns: {found}. Use a prompt file "
        "made from the reasoning-gym task, or add the column"
    )


def _as_dict(reward: str, item: int, completion: str, column: str, value: Any) -> dict[str, Any]:
    """A meta value that should be a dict; a CSV or Parquet column may hold it as JSON text."""
    if isinstance(value, str):
        with contextlib.suppress(json.JSONDecodeError):  # not JSON: reported below
            value = json.loads(value)
    if not isinstance(value, dict):
        raise RewardItemError(
            reward,
            item,
            completion,
            f"column {column!r} holds "
            f"{type(value).__name__}, expected a JSON object (the "
            "reasoning-gym item)",
        )
    return value


@register_reward("reasoning_gym")
def reasoning_gym_reward(arg: str | None) -> RewardFn:
    """reasoning_gym:TASK verifies the answer with that task's scorer (0 wrong .. 1 right)."""
    if not arg:
        raise ConfigError(
            "reward reasoning_gym: name the task, as in reasoning_gym:basic_arithmetic"
        )
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    # the scorer reads each item, so task options (chain_sum:max_terms=2) need no handling here
    arg = arg.partition(":")[0]
    if arg not in DATASETS:
        hint = did_you_mean(arg, DATASETS)
        raise ConfigError(
            f"reward reasoning_gym:{arg}: reasoning-gym has no task {arg!r}; {hint}"
            f"for example basic_arithmetic, chain_sum, leg_counting "
            f"({len(DATASETS)} tasks in reasoning_gym.factory.DATASETS)"
        )
    name = f"reasoning_gym:{arg}"
    score_answer = reasoning_gym.get_score_answer_fn(arg)

    def verify(prompts: list[str], completions: list[str], **meta: list[Any]) -> list[float]:
        """The task's score of each completion's extracted answer against its dataset item."""
        entries = dataset_entries(name, prompts, completions, meta)
        return [
            float(score_answer(extract_answer(completion), entry))
            for completion, entry in zip(completions, entries, strict=True)
        ]

    return verify
