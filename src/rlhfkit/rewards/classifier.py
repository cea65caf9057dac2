"""The ``classifier`` reward: P(LABEL | completion) under a head trained with ``rlhfkit classify``.

``classifier:DIR:LABEL`` loads the classifier saved in DIR (a run's ``model`` directory) and
scores each completion by the probability it gives LABEL, in [0, 1]: steer generations toward a
topic, a style or any class people labelled. It reads the completion alone, as the classifier
was trained on texts without prompts.
"""

from __future__ import annotations

from typing import Any

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.rewards.registry import RewardFn, register_reward


@register_reward("classifier")
def classifier_reward(arg: str | None) -> RewardFn:
    """A classifier trained with rlhfkit classify: classifier:DIR:LABEL scores P(LABEL | text)."""
    from rlhfkit.models.classifier import load_classifier

    directory, _, label = (arg or "").rpartition(":")
    if not directory or not label:
        raise ConfigError(
            f"reward 'classifier:{arg or ''}': give the classifier directory and a class, "
            "as classifier:RUN/model:LABEL"
        )
    try:
        model = load_classifier(directory)
    except RlhfkitError as e:
        raise ConfigError(f"reward 'classifier:{arg}': {e}") from None
    if label not in model.labels:
        raise ConfigError(
            f"reward 'classifier:{arg}': {label!r} is not one of its classes: "
            f"{', '.join(model.labels)}"
        )
    column = model.labels.index(label)

    def classifier(prompts: list[str], completions: list[str], **meta: list[Any]) -> list[float]:
        """The probability the classifier gives the class to each completion."""
        return model.probabilities(list(completions))[:, column].tolist()

    return classifier
