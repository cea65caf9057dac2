"""The bit-flipping environment of hindsight experience replay (Andrychowicz et al. 2017, §3.1).

The state is ``n`` bits, and so is the goal, both drawn uniformly at random at reset. Action
``i`` flips bit ``i``. The reward is -1 on every step that leaves the state different from the
goal and 0 on the step that reaches it, which ends the episode; after ``n`` steps it is
truncated. A random policy almost never sees a 0 for large ``n`` (2^n goals), so plain DQN
learns nothing; HER relabels the goal with states actually reached, and learns.

A goal env in gymnasium-robotics' convention: the observation is a dict of ``observation``,
``achieved_goal`` (the state again) and ``desired_goal``, and ``compute_reward`` and ``compute_terminated``
recompute the reward and the end for any goal, which is what HER's relabelling needs.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

ENV_ID = "rlhfkit/BitFlip-v0"


class BitFlipEnv(gymnasium.Env):
    """``n_bits`` bits to turn into the goal, one flip a step."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, n_bits: int = 15):
        if n_bits < 1:
            raise ValueError(f"n_bits={n_bits!r} must be at least 1")
        self.n_bits = n_bits
        bits = spaces.MultiBinary(n_bits)
        self.observation_space = spaces.Dict(
            {"observation": bits, "achieved_goal": bits, "desired_goal": bits}
        )
        self.action_space = spaces.Discrete(n_bits)
        self._state = np.zeros(n_bits, dtype=np.int8)
        self._goal = np.zeros(n_bits, dtype=np.int8)
        self._steps = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self._state = self.np_random.integers(0, 2, self.n_bits, dtype=np.int8)
        self._goal = self.np_random.integers(0, 2, self.n_bits, dtype=np.int8)
        self._steps = 0
        return self._obs(), {"is_success": self._success()}

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action={action!r}: flip a bit in [0, {self.n_bits})")
        self._state[action] ^= 1
        self._steps += 1
        success = bool(self.compute_terminated(self._state, self._goal, {}))
        reward = float(self.compute_reward(self._state, self._goal, {}))
        truncated = not success and self._steps >= self.n_bits
        return self._obs(), reward, success, truncated, {"is_success": success}

    def compute_reward(self, achieved_goal: Any, desired_goal: Any, info: Any) -> Any:
        """0 where the achieved goal equals the desired one, else -1 (batched over rows too)."""
        same = np.all(np.asarray(achieved_goal) == np.asarray(desired_goal), axis=-1)
        return same.astype(np.float32) - 1.0

    def compute_terminated(self, achieved_goal: Any, desired_goal: Any, info: Any) -> Any:
        """True where the achieved goal equals the desired one: reaching it ends the episode."""
        return np.all(np.asarray(achieved_goal) == np.asarray(desired_goal), axis=-1)

    def _success(self) -> bool:
        return bool(np.array_equal(self._state, self._goal))

    def _obs(self) -> dict[str, np.ndarray]:
        return {
            "observation": self._state.copy(),
            "achieved_goal": self._state.copy(),
            "desired_goal": self._goal.copy(),
        }


if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point=BitFlipEnv)
