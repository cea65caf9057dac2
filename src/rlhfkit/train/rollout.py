"""The rollout step every online loop shares: sample -> score -> reference / old log-probs.

GRPO, PPO and the online hindsight methods all start a step the same way: the current policy
samples completions for a batch of prompt rows, the reward scores them, and two forward passes
without gradients give the log-probabilities the update needs: under the reference model (for
the KL) and under the policy as it sampled (when several updates reuse the batch). ``collect``
does exactly that and returns one typed ``Experience``; what a loop adds on top (PPO's value
estimates, the advantages, the objective) starts from it.

The generation backend is the seam for other rollout engines (``gen.backend``): whatever
samples, the trainer recomputes the log-probabilities it learns from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
from torch import Tensor

from rlhfkit.batch import Prompt, Rollout
from rlhfkit.data.prompts import meta_columns, prompt_text
from rlhfkit.train.kit import in_chunks

ReferenceContext = Callable[[], AbstractContextManager[Any]]
"""Opens the reference model: a frozen copy, or the policy with its LoRA adapters off."""


@dataclass(frozen=True)
class Experience:
    """One step's batch of ``B`` completions (``P`` prompt and ``R`` response columns)."""

    rows: list[dict[str, Any]]  # B prompt rows (prompt + meta columns); a group's rows adjacent
    completions: list[str]  # B completion texts, cut before any stop string, without EOS
    input_ids: Tensor  # (B, P+R) long: the prompt left-padded, then the response right-padded
    attention_mask: Tensor  # (B, P+R) long: 1 on prompt and generated tokens
    response_mask: Tensor  # (B, R) float32: 1 on generated tokens up to and including EOS
    sample_logprobs: Tensor  # (B, R) float32: log p(token) as the backend sampled it
    finished: Tensor  # (B,) bool: ended by EOS or a stop string, not by the token budget
    lengths: Tensor  # (B,) long: generated tokens per completion
    raw_scores: Tensor  # (B,) float32: the reward as it returned them
    scores: Tensor  # (B,) float32: after the optional clip and whitening; what learning sees
    ref_logprobs: Tensor | None  # (B, R) log pi_ref, no grad; None without a reference
    old_logprobs: Tensor | None  # (B, R) log pi_old by a forward pass, no grad; None if not asked
    response_start: int  # P: the column of input_ids where the response starts
    temperature: float  # the sampling temperature, which every log-prob here divides by
    sample_seconds: float  # wall time of the sampling alone

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def policy_logprobs(self) -> Tensor:
        """(B, R) the sampling policy's log-probs: the forward pass's when there is one."""
        return self.old_logprobs if self.old_logprobs is not None else self.sample_logprobs

    def kl_tokens(self) -> Tensor:
        """(B, R) per-token k1 KL(pi || pi_ref) of the sampled tokens, 0 on padding (0 without
        a reference): the reward penalty and the logged ``kl``."""
        from rlhfkit.losses.policy import kl_estimate

        if self.ref_logprobs is None:
            return torch.zeros_like(self.response_mask)
        return kl_estimate(self.policy_logprobs, self.ref_logprobs, "k1") * self.response_mask


def sampler_gap(
    exp: Experience, index: Tensor, trainer_logprobs: Tensor, rollout_is: str, cap: float
) -> tuple[Tensor | None, Tensor]:
    """How the sampler's log-probs of rows ``index`` differ from the trainer's (``(b, R)``, no
    gradient): the truncated importance weights when ``rollout_is`` is ``tis`` (else None),
    and the mean per-token KL(sampler || trainer) (k3), logged as ``mismatch_kl``."""
    from rlhfkit.losses.policy import kl_estimate, masked_mean, truncated_importance_weights

    mask = exp.response_mask[index]  # (b, R)
    sampler = torch.where(mask.bool(), exp.sample_logprobs[index], 0.0)  # (b, R)
    trainer = torch.where(mask.bool(), trainer_logprobs.detach(), 0.0)  # (b, R)
    gap = masked_mean(kl_estimate(sampler, trainer, "k3"), mask)
    if rollout_is != "tis":
        return None, gap
    return truncated_importance_weights(trainer, sampler, mask, cap), gap


@dataclass(frozen=True)
class RolloutOptions:
    """What a loop asks of the rollout step beyond sampling and scoring."""

    micro_batch_size: int = 16
    """Rows per forward pass of the no-grad log-prob passes."""
    old_logprobs: bool = False
    """Recompute the policy's log-probs by a forward pass (several updates reuse the batch)."""
    reward_clip: float = 0.0
    """Clip scores to [-reward_clip, reward_clip] (0 = off)."""
    whiten_scores: bool = False
    """Whiten scores over the batch."""
    overlong_buffer: int = 0
    """DAPO's soft overlong punishment over the last this many tokens of the budget (0 = off)."""
    overlong_penalty: float = 1.0
    """The punishment of a completion that reaches the budget (``advantages.overlong_penalty``)."""


@dataclass(frozen=True)
class Scored:
    """Completions sampled and scored, before any log-prob pass: what dynamic sampling sifts."""

    rows: list[dict[str, Any]]  # B prompt rows, a group's rows adjacent
    rollout: Rollout  # the B samples
    raw_scores: Tensor  # (B,) float32: the reward as it returned them
    scores: Tensor  # (B,) float32: shaped (overlong), clipped, whitened: what learning sees
    sample_seconds: float

    def __getitem__(self, index: list[int]) -> Scored:
        return Scored(
            [self.rows[i] for i in index],
            self.rollout[index],
            self.raw_scores[index],
            self.scores[index],
            self.sample_seconds,
        )

    @staticmethod
    def concat(parts: list[Scored], pad_token_id: int) -> Scored:
        return Scored(
            [row for part in parts for row in part.rows],
            Rollout.concat([part.rollout for part in parts], pad_token_id),
            torch.cat([part.raw_scores for part in parts]),
            torch.cat([part.scores for part in parts]),
            sum(part.sample_seconds for part in parts),
        )


def collect(
    policy: Any,
    backend: Any,
    reward: Any,
    rows: list[dict[str, Any]],
    gen: Any,
    seed: int,
    options: RolloutOptions,
    reference: ReferenceContext | None = None,
) -> Experience:
    """Sample completions for ``rows`` from ``policy``, score them, and compute the log-probs the
    update needs: ``ref_logprobs`` when a ``reference`` is given, ``old_logprobs`` when asked."""
    scored = sample_and_score(policy, backend, reward, rows, gen, seed, options)
    return experience(policy, scored, gen, options, reference)


def sample_and_score(
    policy: Any,
    backend: Any,
    reward: Any,
    rows: list[dict[str, Any]],
    gen: Any,
    seed: int,
    options: RolloutOptions,
) -> Scored:
    """Completions of ``rows`` from the current policy, with the reward's scores, shaped."""
    from rlhfkit.advantages import overlong_penalty

    started = time.perf_counter()
    rollout = sample(policy, backend, [row["prompt"] for row in rows], gen, seed)
    sample_seconds = time.perf_counter() - started
    penalty = None
    if options.overlong_buffer:
        penalty = overlong_penalty(
            rollout.response_lengths,
            gen.max_new_tokens,
            options.overlong_buffer,
            options.overlong_penalty,
        )  # (B,)
    raw_scores, scores = score(
        reward,
        rows,
        rollout.completions,
        rollout.response_mask.device,
        options.reward_clip,
        options.whiten_scores,
        penalty,
    )  # (B,)
    return Scored(rows, rollout, raw_scores, scores, sample_seconds)


def experience(
    policy: Any,
    scored: Scored,
    gen: Any,
    options: RolloutOptions,
    reference: ReferenceContext | None = None,
) -> Experience:
    """The scored samples with the log-prob passes the update needs, as one ``Experience``.

    Old log-probs come from a forward pass like the reference's, not from sampling: incremental
    decoding rounds differently (~1e-5 per token in float32, ~0.1 under model.autocast), which
    the KL would count.
    """
    from rlhfkit.models import token_logprobs

    rollout = scored.rollout
    input_ids, attention_mask = rollout.input_ids, rollout.attention_mask  # (B, P+R)
    start = rollout.prompt_ids.shape[1]

    def logprobs(model: Any) -> Tensor:  # (B, R)
        return in_chunks(
            partial(token_logprobs, model, response_start=start, temperature=gen.temperature),
            input_ids,
            attention_mask,
            options.micro_batch_size,
        )

    with torch.no_grad():
        ref_logprobs = None
        if reference is not None:
            with reference() as ref_model:
                ref_logprobs = logprobs(ref_model)
        old_logprobs = logprobs(policy) if options.old_logprobs else None
    return Experience(
        rows=scored.rows,
        completions=rollout.completions,
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=rollout.response_mask.float(),
        sample_logprobs=rollout.logprobs,
        finished=rollout.finished,
        lengths=rollout.response_lengths,
        raw_scores=scored.raw_scores,
        scores=scored.scores,
        ref_logprobs=ref_logprobs,
        old_logprobs=old_logprobs,
        response_start=start,
        temperature=gen.temperature,
        sample_seconds=scored.sample_seconds,
    )


def sample_informative(
    sample_round: Callable[[int], Scored],
    group_size: int,
    groups: int,
    max_extra_rounds: int,
    pad_token_id: int,
) -> tuple[Scored, int]:
    """DAPO's dynamic sampling (Yu et al. 2025, §3.2): ``groups`` groups whose scores are not all
    equal, sampling more rounds of prompts (``sample_round(round)``, round 0 the step's own)
    while there are fewer, at most ``max_extra_rounds`` beyond the first.

    The batch keeps its size: if the cap is reached short, groups that all scored alike fill
    the rest (they add no policy gradient). Data-parallel, every rank samples as many rounds as
    the rank that needs the most, so their forward passes stay in step. Returns the batch and
    the number of rounds sampled.
    """
    from rlhfkit import distributed
    from rlhfkit.advantages import informative_groups

    parts: list[Scored] = []
    informative = 0
    while True:
        parts.append(sample_round(len(parts)))
        informative += int(informative_groups(parts[-1].scores, group_size).sum())
        short = float(max(groups - informative, 0))
        if len(parts) > max_extra_rounds or distributed.sum_floats([short])[0] == 0:
            break
    pool = Scored.concat(parts, pad_token_id)
    keep = informative_groups(pool.scores, group_size).tolist()  # (groups in the pool,)
    order = [g for g, ok in enumerate(keep) if ok] + [g for g, ok in enumerate(keep) if not ok]
    chosen = sorted(order[:groups])  # the informative first, in sampling order
    return pool[[g * group_size + k for g in chosen for k in range(group_size)]], len(parts)


def sample(policy: Any, backend: Any, prompts: list[Prompt], gen: Any, seed: int) -> Rollout:
    """Completions from the current policy: eval mode and KV cache on, then back to training.

    A training loop samples every step, so on CUDA ``gen.compile auto`` compiles here (a resumed
    run compiles from its first step too, so it samples as the uninterrupted run did); one-shot
    sampling (evaluation, ``generate``, data stages) keeps ``auto`` eager, and so do a model
    made data-parallel under torchrun and a model under ``model.autocast`` (the static KV cache holds one dtype; autocast makes keys float32
    and values bfloat16).
    """
    from rlhfkit import distributed
    from rlhfkit.models import uses_autocast

    if (
        gen.compile == "auto"
        and policy.device.type == "cuda"
        and not uses_autocast(policy)
        and not distributed.is_data_parallel(policy)  # FSDP2's hooks: untried in a CUDA graph
    ):
        gen = replace(gen, compile="on")
    policy.eval()
    policy.config.use_cache = True
    try:
        return backend.generate(prompts, gen, seed=seed)
    finally:
        policy.config.use_cache = False
        policy.train()


def score(
    reward: Any,
    rows: list[dict[str, Any]],
    completions: list[str],
    device: Any,
    clip: float = 0.0,
    whiten: bool = False,
    penalty: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(raw scores, scores after an optional penalty (B,) added, clipping and whitening), both
    (B,) float32."""
    from rlhfkit.advantages import clip_scores, whiten_scores
    from rlhfkit.rewards import compute_rewards

    raw = torch.tensor(
        compute_rewards(
            reward, [prompt_text(row["prompt"]) for row in rows], completions, **meta_columns(rows)
        ),
        dtype=torch.float32,
        device=device,
    )  # (B,)
    shaped = raw if penalty is None else raw + penalty
    shaped = clip_scores(shaped, clip) if clip > 0 else shaped
    return raw, whiten_scores(shaped) if whiten else shaped


def step_metrics(experience: Experience, kl: float, kl_coef: float) -> dict[str, float]:
    """What every online loop logs about its sampled batch: reward, KL, length, entropy
    (data-parallel, over every rank's completions)."""
    from rlhfkit import distributed
    from rlhfkit.losses.policy import masked_mean

    scores = distributed.gather_rows(experience.raw_scores)
    mask = experience.response_mask
    entropy = float(-masked_mean(experience.policy_logprobs, mask))
    if distributed.active():
        logprob_sum, tokens = distributed.sum_floats(
            [float((experience.policy_logprobs * mask).sum()), float(mask.sum())]
        )
        entropy = -logprob_sum / max(tokens, 1.0)
    return {
        "reward": float(scores.mean()),
        "reward_std": float(scores.std()),
        "kl": kl,
        "kl_coef": kl_coef,
        "length": float(distributed.gather_rows(experience.lengths).float().mean()),
        "finished": float(distributed.gather_rows(experience.finished.float()).mean()),
        "entropy_proxy": entropy,
    }


def token_view(
    experience: Experience, advantages: Tensor, tokenizer: Any, count: int = 4
) -> list[dict[str, Any]]:
    """The first ``count`` completions token by token, for the run report: each token's text,
    advantage, KL to the reference and log-prob, with the prompt and the reward's score.

    The first ``count`` rows of a GRPO batch are one prompt's group, so the page shows
    completions the advantages set against each other.
    """
    kl = experience.kl_tokens()  # (B, R)
    start = experience.response_start
    samples = []
    for row in range(min(count, len(experience))):
        length = int(experience.response_mask[row].sum())
        ids = experience.input_ids[row, start : start + length].tolist()
        samples.append(
            {
                "prompt": prompt_text(experience.rows[row]["prompt"]),
                "score": float(experience.raw_scores[row]),
                "tokens": [
                    [
                        tokenizer.decode([token]),
                        round(float(advantages[row, t]), 4),
                        round(float(kl[row, t]), 4),
                        round(float(experience.policy_logprobs[row, t]), 4),
                    ]
                    for t, token in enumerate(ids)
                ],
            }
        )
    return samples
