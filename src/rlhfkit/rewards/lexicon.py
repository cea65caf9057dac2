"""The VADER lexicon judge: a rule-based sentiment score, independent of any trained model.

Its value is independence: a policy trained against the learned ``sentiment`` reward can
exploit that model's blind spots, and a judge built on a hand-made lexicon and grammar rules
(Hutto & Gilbert, ICWSM 2014) shares none of them, so it tells real gains from reward hacking.
"""

from __future__ import annotations

from typing import Any

from rlhfkit.rewards.registry import RewardFn, no_argument, register_reward


@register_reward("vader")
def vader_reward(arg: str | None) -> RewardFn:
    """VADER lexicon compound sentiment of the completion, -1 (negative) to 1 (positive).

    >>> score = vader_reward(None)
    >>> [round(s, 2) for s in score(["Q", "Q", "Q"], ["I loved it!", "A table.", "Awful."])]
    [0.64, 0.0, -0.46]
    """
    no_argument("vader", arg)
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def vader_compound(
        prompts: list[str], completions: list[str], **meta: list[Any]
    ) -> list[float]:
        """VADER's compound score of each completion (the prompt is not judged)."""
        return [float(analyzer.polarity_scores(text)["compound"]) for text in completions]

    return vader_compound
