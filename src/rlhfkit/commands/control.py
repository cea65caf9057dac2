"""``rlhfkit control``: classic RL on gymnasium environments (REINFORCE, PPO, DQN, DQN + HER).

    rlhfkit control --env CartPole-v1 --algo ppo --episodes 300
    rlhfkit control --env rlhfkit/BitFlip-v0 --bits 15 --algo dqn --her both --episodes 2000

writes a run directory (``--output_dir``, by default ``runs/control-<algo>-<time>``):

    metrics.jsonl   one row per episode: run, episode, env_steps, return, length, success
    summary.json    the config and each run's mean return / success over its last 100 episodes
    curve.png       return per episode (success rate for goal envs), a 50-episode moving average

The directory is written under a temporary name and renamed when the run ends, so it never
holds a partial run. There is no checkpoint or resume: a run takes minutes on a CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from rlhfkit.config import NonNegativeInt, PositiveInt, Problem
from rlhfkit.errors import ConfigError, RlhfkitError, did_you_mean

BITFLIP = "rlhfkit/BitFlip-v0"
WINDOW = 50  # episodes in the plotted moving average


@dataclass(frozen=True)
class Config:
    """Classic RL on a gymnasium env: REINFORCE, PPO or DQN (+ HER on bit-flipping)."""

    env: str = "CartPole-v1"
    """A gymnasium env id with a discrete action space (CartPole-v1, Acrobot-v1, ...), or
    rlhfkit/BitFlip-v0, the HER paper's bit-flipping task."""
    algo: Literal["reinforce", "ppo", "dqn"] = "reinforce"
    """The algorithm: reinforce, ppo or dqn."""
    episodes: PositiveInt = 300
    """Training episodes (per run with --her both)."""
    seed: NonNegativeInt = 0
    """Seed of the networks, the exploration and the env."""
    bits: NonNegativeInt = 0
    """rlhfkit/BitFlip-v0 only: the number of bits n (0 for 15, where the paper's plain DQN
    fails)."""
    her: Literal["off", "on", "both"] = "off"
    """dqn on a goal env only: hindsight experience replay; both trains plain DQN and DQN + HER
    with the same seed and plots the two success rates together."""
    output_dir: str = ""
    """The run directory to create; empty for runs/control-<algo>-<time>."""

    def check(self) -> Iterable[Problem]:
        if self.bits and self.env != BITFLIP:
            yield Problem("bits", self.bits, f"only applies to env={BITFLIP}; drop --bits")
        if self.her != "off" and self.algo != "dqn":
            yield Problem("her", self.her, "hindsight replay is for --algo dqn; pass --her off")
        if self.output_dir and Path(os.path.expanduser(self.output_dir)).exists():
            yield Problem("output_dir", self.output_dir, "already exists; choose a new directory")


def main(cfg: Config) -> None:
    summary = run(cfg)
    for name, figures in summary["runs"].items():
        shown = ", ".join(f"{k} {v:.3g}" for k, v in figures.items())
        print(f"{name}: {shown}")
    print(f"wrote {summary['output_dir']}")


def run(cfg: Config) -> dict[str, Any]:
    """Train every run the config asks for and write the run directory; its summary."""
    make_env = _env_factory(cfg)
    out = Path(
        os.path.expanduser(
            cfg.output_dir or f"runs/control-{cfg.algo}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
    )
    if out.exists():
        raise ConfigError(f"output_dir={str(out)!r} already exists; choose a new directory")
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name, episodes in _runs(cfg, make_env):
        rows += [{"run": name, **episode.row()} for episode in episodes]
    summary = {
        "config": asdict(cfg),
        "output_dir": str(out),
        "runs": {name: _last(rows, name) for name in dict.fromkeys(r["run"] for r in rows)},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with open(tmp / "metrics.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        plot(rows, tmp / "curve.png", f"{cfg.env} ({_env_label(cfg)}), seed {cfg.seed}")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _runs(cfg: Config, make_env: Any) -> Iterable[tuple[str, Iterable[Any]]]:
    """(run name, its episodes) for each training run the config asks for."""
    from rlhfkit.control import dqn, ppo, reinforce

    if cfg.algo == "reinforce":
        yield (
            "reinforce",
            reinforce.train(make_env, reinforce.Settings(cfg.episodes, seed=cfg.seed)),
        )
    elif cfg.algo == "ppo":
        yield "ppo", ppo.train(make_env, ppo.Settings(cfg.episodes, seed=cfg.seed))
    else:
        for her in {"off": [False], "on": [True], "both": [False, True]}[cfg.her]:
            settings = dqn_settings(cfg.env, cfg.episodes, _bits(cfg), cfg.seed, her)
            yield ("dqn+her" if her else "dqn"), dqn.train(make_env, settings)


def dqn_settings(env: str, episodes: int, bits: int, seed: int, her: bool) -> Any:
    """DQN's settings: on bit-flipping the paper's gamma 0.98 and a larger net, exploration
    over the first third of the run; on other envs over its first 1000 steps."""
    from rlhfkit.control.dqn import Settings

    if env == BITFLIP:
        return Settings(
            episodes,
            gamma=0.98,
            hidden=128,
            learn_start=100,
            explore_steps=max(1, episodes * bits // 3),
            tau=0.05,
            her=her,
            seed=seed,
        )
    return Settings(
        episodes, learn_start=100, explore_steps=1000, lr=2e-3, tau=0.02, her=her, seed=seed
    )


def _bits(cfg: Config) -> int:
    return cfg.bits or 15


def _env_label(cfg: Config) -> str:
    return f"n = {_bits(cfg)}" if cfg.env == BITFLIP else cfg.algo


def _env_factory(cfg: Config) -> Any:
    """A no-argument env constructor, checked to build now (a clear error on a bad id)."""
    try:
        import gymnasium
    except ImportError as e:
        raise RlhfkitError(
            f"rlhfkit control needs gymnasium ({e}); pip install 'rlhfkit[control]'"
        ) from e
    from rlhfkit.control import bitflip

    if cfg.env not in gymnasium.registry:
        hint = did_you_mean(cfg.env, gymnasium.registry, end="")
        raise ConfigError(
            f"env={cfg.env!r} is not a registered gymnasium env; {hint or 'e.g. CartPole-v1'}"
        )
    kwargs = {"n_bits": _bits(cfg)} if cfg.env == bitflip.ENV_ID else {}
    return lambda: gymnasium.make(cfg.env, **kwargs)


def _last(rows: list[dict[str, Any]], name: str, n: int = 100) -> dict[str, float]:
    """A run's mean return (and success rate) over its last ``n`` episodes."""
    tail = [r for r in rows if r["run"] == name][-n:]
    figures = {"mean_return": sum(r["return"] for r in tail) / len(tail)}
    if "success" in tail[0]:
        figures["success_rate"] = sum(r["success"] for r in tail) / len(tail)
    return figures


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Each run's return (success rate for goal envs) against the episode, moving-averaged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "success" if "success" in rows[0] else "return"
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name in dict.fromkeys(r["run"] for r in rows):
        values = [r[key] for r in rows if r["run"] == name]
        smooth = [
            sum(values[max(0, i - WINDOW + 1) : i + 1])
            / len(values[max(0, i - WINDOW + 1) : i + 1])
            for i in range(len(values))
        ]
        ax.plot(range(1, len(values) + 1), smooth, linewidth=2, label=name)
    ax.set_xlabel("episode")
    ax.set_ylabel(f"{'success rate' if key == 'success' else 'return'} ({WINDOW}-episode mean)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
