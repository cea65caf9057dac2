"""REINFORCE on a gymnasium environment (Williams 1992), with whitened reward-to-go.

    G_t = Σ_{i >= t} gamma^(i-t) r_i        A_t = (G_t - mean(G)) / std(G)   over the batch
    L   = -mean_t  log pi(a_t | s_t) A_t

The advantage is exactly the LM trainers' ``reinforce++`` estimator
(``advantages.reinforce_plus_plus``): an episode is a completion, each step a token, the env's
reward the per-token reward; the batch-wide normalisation is the usual variance reduction for
REINFORCE on control tasks. The loss is ``losses.policy.masked_mean`` over valid steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.advantages import reinforce_plus_plus
from rlhfkit.control.nets import Episode, episode_batches, log_probs, mlp, setup
from rlhfkit.losses.policy import masked_mean


@dataclass(frozen=True)
class Settings:
    episodes: int = 300
    episodes_per_update: int = 8
    gamma: float = 0.99
    lr: float = 1e-2
    hidden: int = 64
    seed: int = 0


def train(make_env: Callable[[], Any], s: Settings) -> Iterator[Episode]:
    """Train; yields each finished episode as it is logged."""
    env, obs_dim, n_actions, _ = setup(make_env, s.seed)
    policy = mlp(obs_dim, n_actions, s.hidden)
    optimizer = torch.optim.Adam(policy.parameters(), lr=s.lr)
    for batch, episodes in episode_batches(env, policy, s.episodes, s.episodes_per_update):
        yield from episodes
        advantages, _ = reinforce_plus_plus(batch.rewards, batch.mask, gamma=s.gamma)
        loss = -masked_mean(log_probs(policy, batch.obs, batch.actions) * advantages, batch.mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
