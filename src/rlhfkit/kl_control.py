"""KL coefficient controllers: how strongly the policy is held near the reference model.

The training loop multiplies its KL penalty by ``controller.coef``, calls
``controller.update(observed_kl, n_samples)`` once per batch, and saves ``state_dict()`` in its
checkpoints so that a resumed run continues with the same coefficient.

``observed_kl`` is the KL per completion (per-token estimates summed over the completion,
averaged over the batch), the same quantity as ``AdaptiveKL``'s ``target``.
"""

from __future__ import annotations

import math
from typing import Protocol

from rlhfkit.errors import ConfigError, RlhfkitError


class KLController(Protocol):
    """What a training loop needs from a KL controller."""

    coef: float

    def update(self, observed_kl: float, n_samples: int) -> None: ...

    def state_dict(self) -> dict[str, float]: ...

    def load_state_dict(self, state: dict[str, float]) -> None: ...


class FixedKL:
    """A constant coefficient: the penalty is ``coef * KL`` throughout training."""

    def __init__(self, coef: float):
        if not coef >= 0:
            raise ConfigError(f"KL coef={coef!r} must be >= 0 (0 turns the KL penalty off)")
        self.coef = float(coef)

    def update(self, observed_kl: float, n_samples: int) -> None:
        """Nothing to adapt; present so loops treat every controller alike."""

    def state_dict(self) -> dict[str, float]:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.coef = _read_coef(state)


class AdaptiveKL:
    """Steer the coefficient so the observed KL tracks a target (Ziegler et al. 2019, §2.2).

        e_t   = clip(KL_t / KL_target - 1, -0.2, 0.2)
        beta <- beta (1 + K_beta e_t),     K_beta = n_samples / horizon

    A proportional controller: above target the coefficient grows, below it shrinks, by at most
    20% of ``n_samples / horizon`` per update (the clip keeps one odd batch from swinging it).
    ``horizon`` is in samples, like ``n_samples``, and at least one batch: the paper uses 10,000.
    """

    def __init__(self, init_coef: float, target: float, horizon: int):
        if not init_coef > 0:
            raise ConfigError(
                f"KL init_coef={init_coef!r} must be > 0: a multiplicative "
                "controller cannot move a coefficient of 0 (e.g. 0.1)"
            )
        if not target > 0:
            raise ConfigError(f"KL target={target!r} must be > 0 (KL per completion, e.g. 6.0)")
        if not horizon > 0:
            raise ConfigError(f"KL horizon={horizon!r} must be > 0 samples (e.g. 10000)")
        self.coef = float(init_coef)
        self.target = float(target)
        self.horizon = horizon

    def update(self, observed_kl: float, n_samples: int) -> None:
        """Adapt ``coef`` after a batch of ``n_samples`` completions with mean KL ``observed_kl``."""
        observed_kl = float(observed_kl)
        if not math.isfinite(observed_kl):
            raise RlhfkitError(
                f"observed KL is {observed_kl}: the policy diverged from the "
                "reference; lower the learning rate or raise the KL coefficient"
            )
        if n_samples > self.horizon:
            raise ConfigError(
                f"KL horizon={self.horizon} is shorter than a batch of {n_samples} "
                "samples, so one update could flip the coefficient's sign; set the "
                "horizon to many batches (the paper: 10000)"
            )
        error = min(max(observed_kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n_samples / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.coef = _read_coef(state)


def _read_coef(state: dict[str, float]) -> float:
    if "coef" not in state:
        raise RlhfkitError(
            f"KL controller state {state!r} lacks 'coef'; the checkpoint is "
            "damaged or not from a KL-controlled run"
        )
    return float(state["coef"])
