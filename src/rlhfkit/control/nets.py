"""What the control loops share: the MLP, seeding, flat observations and episode records."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from rlhfkit.errors import ConfigError


@dataclass(frozen=True)
class Episode:
    """One finished episode, as the loops log it."""

    index: int
    """0-based episode number within the run."""
    steps: int
    """Environment steps taken so far in the run, this episode included."""
    ret: float
    """Undiscounted return."""
    length: int
    success: bool | None
    """``info["is_success"]`` at the episode's end where the env reports it (goal envs)."""

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "episode": self.index,
            "env_steps": self.steps,
            "return": self.ret,
            "length": self.length,
        }
        if self.success is not None:
            row["success"] = float(self.success)
        return row


def mlp(inputs: int, outputs: int, hidden: int, layers: int = 2) -> nn.Sequential:
    """``layers`` hidden tanh layers of width ``hidden``, then a linear head."""
    modules: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.Tanh()]
        width = hidden
    modules.append(nn.Linear(width, outputs))
    return nn.Sequential(*modules)


def seed_all(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch; the loop's own NumPy generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def flat(obs: Any) -> np.ndarray:
    """A flat float32 vector: a Box observation as is, a goal env's dict as observation + goal."""
    if isinstance(obs, dict):
        return np.concatenate([obs["observation"], obs["desired_goal"]]).astype(np.float32)
    return np.asarray(obs, dtype=np.float32).reshape(-1)


def spaces(env: Any) -> tuple[int, int]:
    """(flat observation size, number of actions); a ConfigError for a continuous action space."""
    import gymnasium

    if not isinstance(env.action_space, gymnasium.spaces.Discrete):
        raise ConfigError(
            f"env={env.spec.id if env.spec else env!r} has action space {env.action_space}; "
            "the control algorithms take a discrete one (e.g. CartPole-v1, Acrobot-v1)"
        )
    obs, _ = env.reset(seed=0)
    return flat(obs).size, int(env.action_space.n)


@dataclass(frozen=True)
class Batch:
    """Whole episodes, right-padded to the longest: the (B, T) layout of the LM completions."""

    obs: torch.Tensor
    """(B, T, D) flat observations."""
    actions: torch.Tensor
    """(B, T) long."""
    rewards: torch.Tensor
    """(B, T) the env's rewards, 0 on padding."""
    logprobs: torch.Tensor
    """(B, T) log pi(a_t | s_t) at sampling time."""
    mask: torch.Tensor
    """(B, T) 1 on real steps."""


def setup(make_env: Any, seed: int) -> tuple[Any, int, int, np.random.Generator]:
    """Seed everything, build the env and seed its resets: (env, obs size, actions, rng)."""
    rng = seed_all(seed)
    env = make_env()
    obs_dim, n_actions = spaces(env)
    env.reset(seed=seed)
    return env, obs_dim, n_actions, rng


def episode_batches(
    env: Any, policy: nn.Module, episodes: int, per_batch: int
) -> Iterator[tuple[Batch, list[Episode]]]:
    """``episodes`` episodes from the current ``policy``, ``per_batch`` at a time (on-policy)."""
    done, steps = 0, 0
    while done < episodes:
        count = min(per_batch, episodes - done)
        batch, finished = play_episodes(env, policy, count, done, steps)
        done, steps = done + count, finished[-1].steps
        yield batch, finished


def play_episodes(
    env: Any, policy: nn.Module, count: int, first: int, steps_before: int
) -> tuple[Batch, list[Episode]]:
    """Sample ``count`` whole episodes from the categorical ``policy``; numbered from ``first``."""
    trajectories, episodes, steps = [], [], steps_before
    for i in range(count):
        obs, info = env.reset()
        rows: list[tuple[np.ndarray, int, float, float]] = []
        done = False
        while not done:
            x = torch.from_numpy(flat(obs))
            with torch.no_grad():
                dist = torch.distributions.Categorical(logits=policy(x))
                action = dist.sample()
            obs, reward, terminated, truncated, info = env.step(int(action))
            rows.append((x.numpy(), int(action), float(reward), float(dist.log_prob(action))))
            done = terminated or truncated
        steps += len(rows)
        trajectories.append(rows)
        episodes.append(
            Episode(
                first + i,
                steps,
                sum(r[2] for r in rows),
                len(rows),
                bool(info["is_success"]) if "is_success" in info else None,
            )
        )
    return _pad(trajectories), episodes


def _pad(trajectories: list[list[tuple[np.ndarray, int, float, float]]]) -> Batch:
    count, length = len(trajectories), max(len(t) for t in trajectories)
    dim = trajectories[0][0][0].size
    obs = torch.zeros(count, length, dim)
    actions = torch.zeros(count, length, dtype=torch.long)
    rewards, logprobs, mask = (torch.zeros(count, length) for _ in range(3))
    for b, rows in enumerate(trajectories):
        n = len(rows)
        obs[b, :n] = torch.from_numpy(np.stack([r[0] for r in rows]))
        actions[b, :n] = torch.tensor([r[1] for r in rows])
        rewards[b, :n] = torch.tensor([r[2] for r in rows])
        logprobs[b, :n] = torch.tensor([r[3] for r in rows])
        mask[b, :n] = 1.0
    return Batch(obs, actions, rewards, logprobs, mask)


def log_probs(policy: nn.Module, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """(B, T) log pi(a_t | s_t) with grad, for (B, T, D) observations."""
    logits = policy(obs)  # (B, T, A)
    return torch.log_softmax(logits, dim=-1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
