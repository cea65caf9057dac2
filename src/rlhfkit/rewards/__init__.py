"""Rewards: ``(prompts, completions, **meta) -> one float per completion``, chosen by a spec.

Built-ins (``list_rewards()`` describes them): ``sentiment`` (a head trained on human ratings),
``rm:PATH`` (a reward model trained with ``rlhfkit reward``), ``vader`` (a lexicon judge),
``reasoning_gym:TASK`` (a verifier), ``exact_match`` / ``token_f1`` / ``choice`` /
``chrf`` / ``bleu`` (against the row's reference answer), ``judge:MODEL`` (an LLM judge, local or over an
OpenAI-compatible API), ``length[:N]``, ``format[:REGEX]``. Register your own
with ``@register_reward("name")`` on a factory, or name a function directly as
``path/to/file.py:fn`` or ``package.module:fn``.

Importing this package registers the built-ins but loads nothing heavy: each factory imports
its libraries (torch, vaderSentiment, reasoning-gym) when a reward is loaded.
"""

# importing these modules registers their rewards
from rlhfkit.rewards import (  # noqa: F401
    classifier,
    code,
    judge,
    learned,
    lexicon,
    reference,
    rules,
    sentiment,
    summaries,
    verifiers,
)
from rlhfkit.rewards.registry import (
    Reward,
    RewardFactory,
    RewardFn,
    RewardItemError,
    compute_rewards,
    list_rewards,
    load_reward,
    no_argument,
    register_reward,
    resolve_reward,
    spec_problems,
)

__all__ = [
    "Reward",
    "RewardFactory",
    "RewardFn",
    "RewardItemError",
    "compute_rewards",
    "list_rewards",
    "load_reward",
    "no_argument",
    "register_reward",
    "resolve_reward",
    "spec_problems",
]
