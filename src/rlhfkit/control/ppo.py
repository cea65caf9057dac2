"""PPO on a gymnasium environment (Schulman et al. 2017): clipped surrogate, GAE, a critic.

Each update samples whole episodes, then runs ``epochs`` passes of minibatches over their steps:

    A, R = GAE(r, V; gamma, lam)                     advantages.gae (Schulman et al. 2016)
    L    = ppo_clip_loss(log pi, log pi_old, A)       losses.policy.ppo_clip_loss (eq. 7)
         + vf_coef * 0.5 (V - R)^2

GAE and the clipped surrogate are the LM trainers' own functions: an episode is a completion,
a step a token, the env's reward the per-token reward (an episode's end bootstraps V = 0, as a
completion's does; a time-limit truncation is treated as an end too). Advantages are whitened
per minibatch (``masked_whiten``), as PPO implementations do. The critic is a separate MLP
with a plain squared error: value clipping (``losses.policy.value_loss``) is on the LM
trainer's token scale and tends to hurt on returns in the hundreds (Huang et al. 2022, detail 9).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.advantages import gae
from rlhfkit.control.nets import Episode, episode_batches, log_probs, mlp, setup
from rlhfkit.losses.policy import masked_whiten, ppo_clip_loss


@dataclass(frozen=True)
class Settings:
    episodes: int = 300
    episodes_per_update: int = 8
    gamma: float = 0.99
    lam: float = 0.95
    lr: float = 3e-3
    clip_eps: float = 0.2
    epochs: int = 4
    minibatches: int = 4
    vf_coef: float = 0.5
    hidden: int = 64
    seed: int = 0


def train(make_env: Callable[[], Any], s: Settings) -> Iterator[Episode]:
    """Train; yields each finished episode as it is logged."""
    env, obs_dim, n_actions, _ = setup(make_env, s.seed)
    policy, critic = mlp(obs_dim, n_actions, s.hidden), mlp(obs_dim, 1, s.hidden)
    optimizer = torch.optim.Adam([*policy.parameters(), *critic.parameters()], lr=s.lr)
    for batch, episodes in episode_batches(env, policy, s.episodes, s.episodes_per_update):
        yield from episodes
        with torch.no_grad():
            values = critic(batch.obs).squeeze(-1)  # (B, T)
        advantages, returns = gae(batch.rewards, values, batch.mask, gamma=s.gamma, lam=s.lam)
        valid = batch.mask.bool()  # flatten the valid steps: minibatches of steps, not episodes
        obs, actions, old = batch.obs[valid], batch.actions[valid], batch.logprobs[valid]
        advantages, returns = advantages[valid], returns[valid]
        for _ in range(s.epochs):
            for idx in torch.randperm(len(actions)).chunk(s.minibatches):
                ones = torch.ones(1, len(idx))  # (1, N): the minibatch as one "completion"
                logprobs = log_probs(policy, obs[idx], actions[idx]).unsqueeze(0)
                adv = masked_whiten(advantages[idx].unsqueeze(0), ones)
                policy_loss, _ = ppo_clip_loss(
                    logprobs, old[idx].unsqueeze(0), adv, ones, s.clip_eps
                )
                value_error = critic(obs[idx]).squeeze(-1) - returns[idx]
                loss = policy_loss + s.vf_coef * 0.5 * value_error.pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_([*policy.parameters(), *critic.parameters()], 0.5)
                optimizer.step()
