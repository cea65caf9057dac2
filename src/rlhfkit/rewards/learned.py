"""The ``rm`` reward: a reward model trained with ``rlhfkit reward``, named by its directory.

The model reads each prompt and completion joined into one text by ``join_text``, the rule
its training data went through, so it judges a completion as an answer to its prompt. Scores
are the model's normalised ones, (raw - offset) / scale: near unit scale on its training texts.
"""

from __future__ import annotations

from typing import Any

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.rewards.registry import RewardFn, register_reward


@register_reward("rm")
def reward_model_reward(arg: str | None) -> RewardFn:
    """A reward model trained with rlhfkit reward: rm:PATH scores prompt + completion."""
    from rlhfkit.data.feedback import join_text
    from rlhfkit.models.reward_model import load_reward_model

    if arg is None:
        raise ConfigError("reward 'rm': give the reward model directory: rm:PATH")
    try:
        model = load_reward_model(arg)  # checks the directory, its manifest and files
    except RlhfkitError as e:
        raise ConfigError(f"reward 'rm:{arg}': {e}") from None

    def rm(prompts: list[str], completions: list[str], **meta: list[Any]) -> list[float]:
        """The reward model's normalised score of each prompt joined with its completion."""
        return model.score_texts(
            [
                join_text(prompt, completion)
                for prompt, completion in zip(prompts, completions, strict=True)
            ]
        )

    rm.score_range = model.score_range  # type: ignore[attr-defined]  # the monitors read it
    return rm
