"""Implicit Language Q-Learning (Snell et al. 2022): offline RL from texts with rewards.

Each step:
  1. render each rated text (prompt + completion + EOS) as tokens; its reward sits on the last
     completion token
  2. one forward pass of the policy: the LM's logits and the trunk's last hidden states, which
     the twin Q heads, their Polyak-averaged targets and the V head read
  3. the ILQL loss (``rlhfkit.losses.ilql``): TD regression of both Q heads toward
     r + gamma V(s'), expectile regression of V toward the target heads' min Q, the
     conservative (CQL) term; plus ``bc_weight`` x the completions' NLL, which fits the
     behaviour policy pi_beta on the shared trunk (no advantage-weighted term)
  4. the shared offline step: accumulate, clip, update; then Polyak-average the target heads;
     evaluate held-out; checkpoint (target heads included, so a resumed run is exact)

Decoding then samples from logits + beta * (Q - V): ``rlhfkit generate --ilql`` on the
exported model, whose directory holds the heads (``models/ilql_heads.py``).

Data: ``{prompt, completion, rating}`` rows (``--data.rating_field reward`` for a reward column),
or the VADER human ratings (``vader:movies``); see ``rlhfkit.data.feedback.load_ratings``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rlhfkit import distributed
from rlhfkit.config import NonNegativeFloat, PositiveFloat, Problem, default
from rlhfkit.data.sequences import Encoded
from rlhfkit.errors import RlhfkitError
from rlhfkit.train import kit
from rlhfkit.train.offline import OfflineConfig


@dataclass(frozen=True)
class AlgoCfg:
    """The ILQL loss and the decoding it trains for."""

    gamma: NonNegativeFloat = 0.99
    """Discount per token in the TD target r + gamma V(s')."""
    tau: PositiveFloat = 0.7
    """Expectile V regresses to (0.5 = the mean of Q under the data; toward 1 = its best
    in-support action)."""
    cql_weight: NonNegativeFloat = 0.1
    """alpha, the weight of the conservative term that pushes down the Q of unseen tokens."""
    bc_weight: NonNegativeFloat = 1.0
    """Weight of the completions' NLL, fitting the behaviour policy the heads steer on the
    shared trunk (0 = leave the LM's head to the trunk's drift)."""
    polyak: PositiveFloat = 0.01
    """Target heads move this fraction of the way to the online heads after each step."""
    beta: NonNegativeFloat = 1.0
    """Decoding: logits + beta x (Q - V); saved with the heads, the beta `rlhfkit generate
    --ilql` decodes the exported model with."""
    reward_scale: PositiveFloat = 1.0
    """Rewards (the rating column) are multiplied by this."""

    def check(self) -> Iterable[Problem]:
        if self.tau >= 1.0:
            yield Problem("tau", self.tau, "must lie in (0, 1); 0.7 to 0.9 are usual")
        if self.gamma > 1.0:
            yield Problem("gamma", self.gamma, "must lie in [0, 1]")
        if self.polyak > 1.0:
            yield Problem("polyak", self.polyak, "must lie in (0, 1]; 1 copies every step")


@dataclass(frozen=True)
class Config(OfflineConfig):
    """Offline RL on texts with rewards: Implicit Language Q-Learning (ILQL)."""

    algo: AlgoCfg = default(AlgoCfg)


@dataclass(frozen=True)
class RatedExample:
    encoded: Encoded
    reward: float


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    result = train(cfg)
    print_summary(result.run, result.summary)


def with_heads(policy: Any) -> Any:
    """The policy and its ILQL heads as one module, so the kit's optimiser, checkpoints and
    resume handle both (the target heads are frozen parameters: saved, never stepped)."""
    import torch

    from rlhfkit.models.ilql_heads import IlqlHeads

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.policy = policy
            device = next(policy.parameters()).device
            hidden = policy.config.get_text_config().hidden_size
            vocab = policy.get_output_embeddings().weight.shape[0]
            self.heads = IlqlHeads(hidden, vocab, device)

    return Wrapped()


def train(cfg: Config) -> kit.TrainResult:
    import torch

    from rlhfkit.data import sequences
    from rlhfkit.data.feedback import load_ratings
    from rlhfkit.losses import ilql as losses
    from rlhfkit.losses.preference import sft_loss
    from rlhfkit.train import offline
    from rlhfkit.train.runs import seed_everything

    if distributed.active():  # every rank stops here, before loading anything
        raise RlhfkitError(
            "rlhfkit ilql runs in one process: its Q and V heads are not sharded, tied or "
            "exported under torchrun yet; start it without torchrun"
        )
    algo = cfg.algo
    # before any random init: the heads, LoRA adapters
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    policy, tokenizer, _ = kit.load_policy_and_reference(cfg.model, cfg.lora, need_reference=False)
    model = with_heads(policy)
    heads = model.heads
    device = next(policy.parameters()).device
    chat = sequences.uses_chat_template(tokenizer, cfg.train.chat_template)
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )

    def examples_of(split: str) -> list[RatedExample]:
        return [
            RatedExample(
                sequences.encode(
                    tokenizer,
                    row.prompt,
                    row.completion,
                    chat and bool(row.prompt),
                    cfg.train.max_length,
                    row.weight,
                ),
                row.rating * algo.reward_scale,
            )
            for row in load_ratings(cfg.data, split)
        ]

    examples = examples_of("train")
    offline.report_truncated(
        sum(e.encoded.truncated for e in examples), len(examples), cfg.train.max_length
    )
    eval_examples = examples_of("eval")
    if cfg.train.max_eval:
        eval_examples = eval_examples[: cfg.train.max_eval]

    def loss_of(batch: list[RatedExample]) -> tuple[torch.Tensor, dict[str, float]]:
        tokens = sequences.collate([e.encoded for e in batch], pad_id).to(device)
        out = policy(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            output_hidden_states=True,
            use_cache=False,
        )
        # state s_t (hidden at column t - 1) chooses token t
        states = out.hidden_states[-1][:, :-1].float()  # (B, N, H)
        actions = tokens.input_ids[:, 1:]  # (B, N)
        mask = tokens.loss_mask[:, 1:]  # (B, N)
        rewards = torch.tensor([e.reward for e in batch], device=device)
        target_q = heads.target_q(states).gather(-1, actions[..., None]).squeeze(-1)
        loss, stats = losses.ilql_loss(
            heads.q1(states),
            heads.q2(states),
            target_q,
            heads.values(states),
            actions,
            losses.terminal_rewards(rewards, mask),
            mask,
            algo.gamma,
            algo.tau,
            algo.cql_weight,
        )
        logprobs = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
        logprobs = logprobs.gather(-1, actions[..., None]).squeeze(-1)
        weight = torch.tensor([e.encoded.weight for e in batch], device=device)
        nll = sft_loss(logprobs, mask, weight)[0]
        metrics = {key: float(value.detach()) for key, value in stats._asdict().items()}
        return loss + algo.bc_weight * nll, {**metrics, "nll": float(nll.detach())}

    def evaluate() -> dict[str, float]:
        return offline.held_out_means(eval_examples, cfg.train.eval_batch_size, loss_of)

    lengths = [len(e.encoded.ids) for e in examples]
    with offline.Fitting(
        cfg, "ilql", model, examples, lengths, evaluate if eval_examples else None
    ) as fitting:
        for step, batches in fitting.steps():
            metrics = fitting.accumulate(batches, loss_of)
            grad_norm = fitting.learner.step()[0]  # clip, NaN/inf guard, optimiser step
            heads.update_targets(algo.polyak)
            fitting.end_step(step, metrics, grad_norm)  # log, evaluate, checkpoint
    run = fitting.run
    exported = kit.export(run.path / "model", policy, tokenizer)
    if distributed.is_main():
        heads.save(exported, algo.beta)
    summary = {
        "steps": fitting.total_steps,
        "seconds": fitting.seconds,
        "train_loss_last": fitting.last.get("loss"),
        **{f"{key}_before": value for key, value in fitting.eval_before.items()},
        **{f"{key}_after": value for key, value in fitting.eval_after.items()},
        "skipped_steps": fitting.learner.guard.skipped,
        "beta": algo.beta,
        "model": str(exported),
    }
    run.finish(summary)
    return kit.TrainResult(run, policy, tokenizer, summary)
