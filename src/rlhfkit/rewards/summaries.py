"""Summary metrics as rewards: ROUGE-L and embedding similarity to the row's reference.

Both read the reference summary from the prompt row's ``reference`` meta column (the built-in
``wiki:summaries`` set carries Wikipedia's human-written one-line description there), so they
are verifiable rewards for grpo and metrics for ``rlhfkit eval --reward``:

- ``rouge_l``: the ROUGE-L F-measure of the completion against the reference (Lin 2004, the
  rouge-score package with Porter stemming, as summarisation papers report it):

      P = LCS(c, r) / |c|,   R = LCS(c, r) / |r|,   F = 2 P R / (P + R)

  over word tokens, LCS the longest common subsequence. Needs the ``tasks`` extra.
- ``similarity``: the cosine of the all-MiniLM-L6-v2 sentence embeddings of completion and
  reference (mean-pooled, L2-normalised): credit for the same meaning in other words.
"""

from __future__ import annotations

from typing import Any

from rlhfkit.errors import ConfigError, RewardError
from rlhfkit.rewards.registry import RewardFn, no_argument, register_reward


def references(name: str, completions: list[str], meta: dict[str, list[Any]]) -> list[str]:
    """The reference summary of each completion, from the ``reference`` meta column."""
    found = meta.get("reference")
    if found is None:
        columns = ", ".join(sorted(meta)) or "none"
        raise RewardError(
            f"reward {name!r}: the prompt rows carry no 'reference' column (found: {columns}); "
            "use --data.prompts wiki:summaries or a prompt file with a reference column"
        )
    return ["" if value is None else str(value) for value in found[: len(completions)]]


def rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer as module
    except ImportError as e:
        raise ConfigError(
            f"reward 'rouge_l' needs the rouge-score package ({e}); pip install 'rlhfkit[tasks]'"
        ) from None
    return module.RougeScorer(["rougeL"], use_stemmer=True)


@register_reward("rouge_l")
def rouge_l_reward(arg: str | None) -> RewardFn:
    """ROUGE-L F-measure against the row's reference summary (rouge-score, stemmed), 0..1."""
    no_argument("rouge_l", arg)
    scorer = rouge_scorer()

    def rouge_l(prompts: list[str], completions: list[str], **meta: list[Any]) -> list[float]:
        """Each completion's ROUGE-L F against its reference."""
        wanted = references("rouge_l", completions, meta)
        return [
            scorer.score(reference, completion)["rougeL"].fmeasure
            for completion, reference in zip(completions, wanted, strict=True)
        ]

    return rouge_l


@register_reward("similarity")
def similarity_reward(arg: str | None) -> RewardFn:
    """Cosine of MiniLM sentence embeddings of completion and reference summary, -1..1."""
    from rlhfkit import assets
    from rlhfkit.rewards.sentiment import SentenceEncoder

    no_argument("similarity", arg)
    encoder = SentenceEncoder(assets.ensure("minilm"))

    def similarity(prompts: list[str], completions: list[str], **meta: list[Any]) -> list[float]:
        """Each completion's embedding cosine with its reference's."""
        wanted = references("similarity", completions, meta)
        both = encoder([*completions, *wanted])  # (2N, D), unit rows
        return (both[: len(completions)] * both[len(completions) :]).sum(-1).tolist()

    return similarity
