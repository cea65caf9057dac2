"""Online DPO: preference optimisation on pairs the current policy samples, judged as it trains.

Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback" (OAIF): offline DPO
learns from pairs another model wrote, so its data drift off-policy as it trains; here every
step's pairs come from the policy being trained. Each step:
  1. take prompts (data-parallel: this rank's share), each twice
  2. the shared rollout step (``rollout.collect``): sample two completions per prompt from the
     current policy, score them with the reward, and the reference's log-probs (dpo, ipo)
  3. the preferred of each pair: the higher score, or the judge's pick (``--judge``); a tie
     has no preference and weighs 0
  4. the policy's log-probs of both completions, the pair loss (``dpo.pair_loss``: dpo, ipo,
     or the reference-free simpo, orpo, cpo, which load no reference model), backward, step
  5. log, checkpoint (``kit.Session``)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from rlhfkit import distributed
from rlhfkit.config import PositiveInt, Problem, default
from rlhfkit.data.prompts import PromptStream, prompt_rows, prompt_text
from rlhfkit.models.lora import reference
from rlhfkit.train import kit, rollout
from rlhfkit.train.dpo import MEAN_LOGPROB, REFERENCE_FREE, PairLossCfg, pair_loss


@dataclass(frozen=True)
class AlgoCfg(PairLossCfg):
    """The pair loss, its strength and the batch."""

    prompts_per_step: PositiveInt = 8
    """Prompts per step; each gets two completions, one pair."""
    micro_batch_size: PositiveInt = 8
    """Pairs per forward/backward pass (the step's pairs accumulate into one update)."""


@dataclass(frozen=True)
class Config(kit.OnlineConfig):
    """Online DPO: the policy's own completions, paired and judged each step (Guo et al. 2024)."""

    judge: str = ""
    """A pairwise LLM judge picks the preferred completion: a local model (alias or directory)
    or MODEL@http(s)://HOST/v1 (an OpenAI-compatible endpoint). Empty: the higher reward wins;
    with a judge the reward is only logged."""
    algo: AlgoCfg = default(AlgoCfg)

    def check(self) -> Iterable[Problem]:
        if problem := kit.prompts_per_rank_problem(self.algo.prompts_per_step):
            yield problem
        if self.gen.temperature == 0:
            yield Problem(
                "gen.temperature",
                0.0,
                "samples the same completion twice, so no pair has a preference; use a "
                "temperature above 0 (1.0)",
            )


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    outcome = train(cfg)
    print_summary(outcome.run, outcome.summary)


def train(cfg: Config) -> kit.TrainResult:
    import torch

    from rlhfkit.generation import get_backend
    from rlhfkit.models import token_logprobs
    from rlhfkit.rewards import load_reward
    from rlhfkit.rewards.judge import load_judge
    from rlhfkit.train.runs import seed_everything

    algo, optim = cfg.algo, cfg.optim
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    reward = load_reward(cfg.reward)
    judge = load_judge(cfg.judge, device=cfg.model.device) if cfg.judge else None
    stream = PromptStream(prompt_rows(cfg.data, "train"), cfg.run.seed)
    needs_reference = algo.loss not in REFERENCE_FREE
    policy, tokenizer, frozen_ref = kit.load_policy_and_reference(
        cfg.model, cfg.lora, need_reference=needs_reference
    )
    backend = get_backend(cfg.gen.backend, policy, tokenizer)
    learner = kit.Learner(
        {"policy": (policy, optim)},
        cfg.steps,
        optim.max_grad_norm,
        optim.max_nonfinite_steps,
        cfg.dist,
    )
    options = rollout.RolloutOptions(algo.micro_batch_size * 2)
    ref_context = partial(reference, policy, frozen_ref) if needs_reference else None
    stateful = {**learner.stateful(), "stream": stream}
    with kit.Session(
        cfg, "online-dpo", learner, tokenizer, stateful, (), reward, ref_context, backend
    ) as session:
        for step in session.steps():
            step_started = time.perf_counter()
            # 1-2. each prompt twice (a pair's completions adjacent); sample, score, reference
            rows = [row for row in kit.rank_share(stream.take(algo.prompts_per_step)) for _ in "ab"]
            exp = rollout.collect(
                policy,
                backend,
                reward,
                rows,
                cfg.gen,
                kit.rollout_seed(cfg.run.seed, step),
                options,
                ref_context,
            )
            mask = exp.response_mask  # (2N, R)

            # 3. which completion of each pair is preferred; a tie weighs 0
            if judge is None:
                first_wins = pair_preferences(exp.scores.tolist())
            else:
                first_wins = judged_preferences(judge, exp.rows, exp.completions)
            chosen, rejected, weight = pair_rows(first_wins)  # (N,) each
            weight = weight.to(mask.device)
            total = distributed.sum_floats([float(weight.sum())])[0]

            # 4. the pair loss, accumulated over micro-batches of pairs into one update
            stats = kit.Stats()
            for pairs in torch.arange(len(chosen)).split(algo.micro_batch_size):
                index = torch.cat([chosen[pairs], rejected[pairs]])  # (2b,) chosen first
                logprobs = token_logprobs(
                    policy,
                    exp.input_ids[index],
                    exp.attention_mask[index],
                    exp.response_start,
                    exp.temperature,
                )  # (2b, R)
                policy_c, policy_r = _completion_logprobs(logprobs, mask[index], algo.loss)
                ref_c = ref_r = None
                if exp.ref_logprobs is not None:
                    ref = exp.ref_logprobs[index]  # (2b, R)
                    ref_c, ref_r = _completion_logprobs(ref, mask[index], algo.loss)
                tokens = mask[chosen[pairs]].sum(dim=1)  # (b,)
                loss, parts = pair_loss(
                    algo, policy_c, policy_r, ref_c, ref_r, tokens, weight[pairs]
                )
                # each micro-batch's weighted mean counts by its share of the step's weight
                share = float(weight[pairs].sum()) * distributed.world_size() / max(total, 1e-12)
                learner.backward(loss * share)
                stats.add(share, loss=loss.detach(), **parts._asdict())
            grad_norm = learner.step()[0]

            # 5. metrics, checkpoint
            kl = kit.batch_mean(exp.kl_tokens().sum(dim=1))
            elapsed = time.perf_counter() - step_started
            metrics = {
                **rollout.step_metrics(exp, kl, algo.beta if needs_reference else 0.0),
                "lr": learner.lrs()[0],
                "grad_norm": grad_norm,
                "decided_pairs": total / (len(chosen) * distributed.world_size()),
                "step_seconds": elapsed,
                "skipped_steps": learner.guard.skipped,
                **distributed.mean_floats(stats.sums),
            }
            session.end_step(step, metrics, f"reward {metrics['reward']:+.3f}  kl {kl:.3f}")
    history = session.run.metrics()
    return session.finish(kit.online_summary(history, learner.guard.skipped), frozen_ref)


def pair_preferences(scores: list[float]) -> list[bool | None]:
    """For adjacent pairs of scores ``[a_1, b_1, a_2, b_2, ...]``: True where a wins, False where
    b does, None for a tie (no preference to learn)."""
    pairs = zip(scores[0::2], scores[1::2], strict=True)
    return [None if a == b else a > b for a, b in pairs]


def judged_preferences(
    judge: Any, rows: list[dict[str, Any]], completions: list[str]
) -> list[bool | None]:
    """The judge's pick of each adjacent pair (both orders asked, ``Judge.prefer``); None where
    it finds them equal, or the two texts are the same."""
    picks: list[bool | None] = []
    for i in range(0, len(rows), 2):
        a, b = completions[i], completions[i + 1]
        p_a = 0.5 if a == b else judge.prefer(prompt_text(rows[i]["prompt"]), a, b)
        picks.append(None if p_a == 0.5 else p_a > 0.5)
    return picks


def pair_rows(first_wins: list[bool | None]) -> tuple[Any, Any, Any]:
    """(chosen rows, rejected rows, weights), each ``(N,)``, for N adjacent pairs: weight 0 on a
    tie (its rows kept, so every rank's batch keeps its shape)."""
    import torch

    first = torch.arange(0, 2 * len(first_wins), 2)  # (N,)
    a_wins = torch.tensor([wins is not False for wins in first_wins])  # (N,) a tie: either
    chosen = torch.where(a_wins, first, first + 1)
    rejected = torch.where(a_wins, first + 1, first)
    weight = torch.tensor([0.0 if wins is None else 1.0 for wins in first_wins])
    return chosen, rejected, weight


def _completion_logprobs(logprobs: Any, mask: Any, loss: str) -> tuple[Any, Any]:
    """(chosen, rejected) ``(b,)`` log-probs from ``(2b, R)`` rows, chosen first: summed over
    each completion, or per-token means for the losses that compare them."""
    from rlhfkit.losses.policy import masked_mean, masked_sum

    per_row = (
        masked_mean(logprobs, mask, dim=1)
        if loss in MEAN_LOGPROB
        else masked_sum(logprobs, mask, 1)
    )  # (2b,)
    half = len(per_row) // 2
    return per_row[:half], per_row[half:]
