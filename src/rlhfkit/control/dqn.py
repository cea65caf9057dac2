"""DQN (Mnih et al. 2015) with optional hindsight experience replay (Andrychowicz et al. 2017).

    y    = r + gamma (1 - done) max_a' Q_target(s', a')
    L    = Huber(Q(s, a) - y)                   on minibatches from a replay buffer
    Q_target <- (1 - tau) Q_target + tau Q       Polyak averaging, after each update

Exploration is epsilon-greedy with epsilon decaying linearly over ``explore_steps``. No LM
loss has this math (the LM trainers have no Q-function), so the TD loss is written here.

HER (``her=True``) needs a goal env: a dict observation with ``achieved_goal`` and
``desired_goal``, and ``compute_reward`` / ``compute_terminated`` on the unwrapped env (the
convention of gymnasium-robotics, and of ``bitflip.BitFlipEnv``). At the end of each episode
every transition is stored as it happened and ``her_k`` more times with the goal replaced by
one achieved later in the same episode (the paper's "future" strategy), its reward and end
recomputed for that goal. Those relabelled goals are reached by construction, so the sparse
reward carries signal even when the real goal is never reached.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlhfkit.control.nets import Episode, flat, mlp, setup
from rlhfkit.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    episodes: int = 300
    gamma: float = 0.99
    lr: float = 1e-3
    hidden: int = 128
    buffer_size: int = 50_000
    batch_size: int = 64
    learn_start: int = 500
    """Env steps taken at random before the first update."""
    explore_steps: int = 5_000
    """Env steps over which epsilon falls linearly from 1 to ``final_epsilon``."""
    final_epsilon: float = 0.05
    tau: float = 0.01
    her: bool = False
    her_k: int = 4
    seed: int = 0


class Replay:
    """A ring buffer of transitions (s, a, r, s', done) as flat float32 arrays."""

    def __init__(self, size: int, dim: int):
        self.obs = np.zeros((size, dim), np.float32)
        self.next_obs = np.zeros((size, dim), np.float32)
        self.actions = np.zeros(size, np.int64)
        self.rewards = np.zeros(size, np.float32)
        self.dones = np.zeros(size, np.float32)
        self.size, self.count, self.head = size, 0, 0

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray, done: bool):
        i = self.head
        self.obs[i], self.actions[i], self.rewards[i] = obs, action, reward
        self.next_obs[i], self.dones[i] = next_obs, float(done)
        self.head, self.count = (i + 1) % self.size, min(self.count + 1, self.size)

    def sample(self, rng: np.random.Generator, n: int) -> list[torch.Tensor]:
        idx = rng.integers(0, self.count, n)
        arrays = (self.obs, self.actions, self.rewards, self.next_obs, self.dones)
        return [torch.from_numpy(a[idx]) for a in arrays]


def train(make_env: Callable[[], Any], s: Settings) -> Iterator[Episode]:
    """Train; yields each finished episode as it is logged."""
    env, obs_dim, n_actions, rng = setup(make_env, s.seed)
    goal_env = _goal_env(env) if s.her else None
    q = mlp(obs_dim, n_actions, s.hidden)
    target = mlp(obs_dim, n_actions, s.hidden)
    target.load_state_dict(q.state_dict())
    optimizer = torch.optim.Adam(q.parameters(), lr=s.lr)
    replay = Replay(s.buffer_size, obs_dim)
    steps = 0
    for index in range(s.episodes):
        obs, info = env.reset(seed=s.seed) if index == 0 else env.reset()
        trajectory: list[tuple[Any, int, float, Any, bool]] = []
        done, total = False, 0.0
        while not done:
            epsilon = max(s.final_epsilon, 1.0 - (1.0 - s.final_epsilon) * steps / s.explore_steps)
            if rng.random() < epsilon:
                action = int(rng.integers(n_actions))
            else:
                with torch.no_grad():
                    action = int(q(torch.from_numpy(flat(obs))).argmax())
            next_obs, reward, terminated, truncated, info = env.step(action)
            replay.add(flat(obs), action, float(reward), flat(next_obs), terminated)
            trajectory.append((obs, action, float(reward), next_obs, terminated))
            obs, total, steps = next_obs, total + float(reward), steps + 1
            done = terminated or truncated
            if steps >= s.learn_start:
                _update(q, target, optimizer, replay.sample(rng, s.batch_size), s)
        if goal_env is not None:
            _relabel(goal_env, trajectory, replay, rng, s.her_k)
        success = bool(info["is_success"]) if "is_success" in info else None
        yield Episode(index, steps, total, len(trajectory), success)


def _update(q, target, optimizer, batch: list[torch.Tensor], s: Settings) -> None:
    obs, actions, rewards, next_obs, dones = batch
    with torch.no_grad():
        y = rewards + s.gamma * (1.0 - dones) * target(next_obs).max(dim=1).values  # (N,)
    predicted = q(obs).gather(1, actions.unsqueeze(1)).squeeze(1)  # (N,)
    loss = torch.nn.functional.smooth_l1_loss(predicted, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for p_target, p in zip(target.parameters(), q.parameters(), strict=True):
            p_target.lerp_(p, s.tau)


def _relabel(goal_env: Any, trajectory: list, replay: Replay, rng: np.random.Generator, k: int):
    """Store each step ``k`` more times, its goal one achieved at that step or later (HER)."""
    for t, (obs, action, _, next_obs, _) in enumerate(trajectory):
        for future in rng.integers(t, len(trajectory), k):
            goal = trajectory[future][3]["achieved_goal"]
            achieved = next_obs["achieved_goal"]
            reward = float(goal_env.compute_reward(achieved, goal, {}))
            done = bool(goal_env.compute_terminated(achieved, goal, {}))
            replay.add(
                flat({**obs, "desired_goal": goal}),
                action,
                reward,
                flat({**next_obs, "desired_goal": goal}),
                done,
            )


def _goal_env(env: Any) -> Any:
    """The unwrapped goal env HER relabels with; a ConfigError naming what is missing."""
    import gymnasium

    inner = env.unwrapped
    missing = [m for m in ("compute_reward", "compute_terminated") if not hasattr(inner, m)]
    if missing or not isinstance(env.observation_space, gymnasium.spaces.Dict):
        raise ConfigError(
            f"her=true needs a goal env (dict observations, compute_reward and "
            f"compute_terminated); {env.spec.id if env.spec else env!r} is not one: "
            "use rlhfkit/BitFlip-v0 or a gymnasium-robotics env, or her=false"
        )
    return inner
