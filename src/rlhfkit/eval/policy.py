"""Score a policy on held-out prompts: rewards, judged positive rate, KL to a reference, length."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from rlhfkit.config import GenCfg

if TYPE_CHECKING:
    from rlhfkit.conditioning import Conditioning

POSITIVE_COMPOUND = 0.05
"""VADER's own threshold: a compound score >= 0.05 reads as positive (Hutto & Gilbert 2014)."""


@dataclass
class PolicyEval:
    """Held-out figures for one policy; ``scores`` maps reward name -> per-completion scores."""

    completions: list[str]
    scores: dict[str, list[float]]
    lengths: list[int]
    kl: list[float] = field(default_factory=list)

    def mean(self, name: str) -> float:
        values = self.scores[name]
        return sum(values) / len(values)

    def positive_rate(self, name: str = "vader") -> float:
        values = self.scores[name]
        return sum(v >= POSITIVE_COMPOUND for v in values) / len(values)

    @property
    def mean_length(self) -> float:
        return sum(self.lengths) / len(self.lengths)

    @property
    def mean_kl(self) -> float:
        return sum(self.kl) / len(self.kl) if self.kl else 0.0


def evaluate_policy(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    gen: GenCfg,
    rewards: dict[str, Any],
    seed: int,
    reference: Callable[[], AbstractContextManager[Any]] | None = None,
    conditioning: Conditioning | None = None,
    backend: Any = None,
) -> PolicyEval:
    """Sample one completion per held-out prompt and score it with every reward.

    ``conditioning`` (``load_conditioning`` of the model's directory) asks a hindsight-trained
    model with the words it was trained on; rewards still see the original prompts. The KL is
    then taken on the conditioned prompt for both models: how far training moved the model on
    the input it is actually given.

    With ``reference`` (a context yielding the reference model, e.g. ``models.lora.reference``,
    which also covers LoRA's adapters-off base), also the KL of each completion to it:
    Σ_t log π(y_t) - log π_ref(y_t) over the sampled tokens (k1 summed over the completion, an
    unbiased estimate of the sequence-level KL(π || π_ref)).

    ``backend``: the generation backend to sample with (a training loop's own, say a vLLM
    engine that already holds the policy's weights); None builds ``gen.backend`` for ``model``.
    """
    from rlhfkit.data.prompts import meta_columns, prompt_text
    from rlhfkit.generation import generate_conditioned, get_backend
    from rlhfkit.models import token_logprobs
    from rlhfkit.rewards import compute_rewards

    was_training = model.training
    model.eval()
    cache = model.config.use_cache
    model.config.use_cache = True
    try:
        prompts = [row["prompt"] for row in rows]
        rollout = generate_conditioned(
            backend or get_backend(gen.backend, model, tokenizer), prompts, gen, seed, conditioning
        )
        texts = [prompt_text(p) for p in prompts]
        meta = meta_columns(rows)
        scores = {
            name: compute_rewards(reward, texts, rollout.completions, **meta)
            for name, reward in rewards.items()
        }
        kl: list[float] = []
        if reference is not None:
            with torch.no_grad(), reference() as reference_model:
                start = rollout.prompt_ids.shape[1]
                for i in range(0, len(rollout), gen.batch_size):
                    ids = rollout.input_ids[i : i + gen.batch_size]
                    att = rollout.attention_mask[i : i + gen.batch_size]
                    mask = rollout.response_mask[i : i + gen.batch_size].float()
                    ref = token_logprobs(reference_model, ids, att, start, gen.temperature)
                    own = rollout.logprobs[i : i + gen.batch_size]
                    kl += ((own - ref) * mask).sum(dim=1).tolist()
    finally:
        model.config.use_cache = cache
        model.train(was_training)
    return PolicyEval(
        completions=rollout.completions,
        scores=scores,
        lengths=rollout.response_lengths.tolist(),
        kl=kl,
    )
