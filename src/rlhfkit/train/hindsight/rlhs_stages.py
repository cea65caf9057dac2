"""RLHS's training stages: the judged pairs train the policy with DPO, or with PPO.

``rlhs.optimiser``:

- ``dpo``: ``rlhfkit.train.dpo`` on ``<run>/pairs.jsonl``, a sub-run in ``<run>/dpo``;
- ``ppo``: as InstructGPT (Ouyang et al. 2022): a Bradley-Terry reward model on the pairs,
  ``rlhfkit.train.reward`` in ``<run>/reward``, then ``rlhfkit.train.ppo`` with
  ``--reward rm:<run>/reward/model`` on the same prompts, in ``<run>/ppo``.

Each stage is the very trainer of its own command, given a config built here from the RLHS
config (``rlhfkit dpo|reward|ppo --config <run>/<stage>/config.toml`` reruns one alone), and
each resumes from its own checkpoints when the RLHS run is resumed. Kept apart from ``rlhs.py``,
which reads top to bottom as the paper's steps; this file maps its settings onto the trainers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rlhfkit.config import ModelCfg, ModelPath, OptimCfg, PositiveInt, Problem, RunCfg, default
from rlhfkit.train.offline import TrainCfg
from rlhfkit.train.ppo import AlgoCfg as PpoAlgoCfg
from rlhfkit.train.ppo import CriticCfg
from rlhfkit.train.reward import RewardCfg

PAIRS_FILE = "pairs.jsonl"


def _reward_model_train() -> TrainCfg:
    return TrainCfg(epochs=2, batch_size=16, eval_batch_size=64)


def _reward_model_optim() -> OptimCfg:
    return OptimCfg(lr=5e-5, warmup_steps=3, schedule="linear")  # as reward-vader-minilm.toml


def _ppo_optim() -> OptimCfg:
    return OptimCfg(lr=1e-5, warmup_steps=3)  # as sentiment-ppo.toml


@dataclass(frozen=True)
class RewardModelCfg:
    """rlhs.optimiser = ppo: a Bradley-Terry reward model on the judged pairs, in <run>/reward.

    Trained by `rlhfkit reward`'s trainer; its rm, train and optim groups are that command's.
    """

    model: ModelPath = "minilm"
    """The reward model's backbone: an alias (minilm, the embedded sentence encoder; smollm2)
    or a local model directory; it loads on model.device with model.dtype."""
    rm: RewardCfg = default(RewardCfg)
    train: TrainCfg = field(default_factory=_reward_model_train)
    optim: OptimCfg = field(default_factory=_reward_model_optim)

    def check(self) -> Iterable[Problem]:
        if self.rm.objective != "pairs":
            yield Problem(
                "rm.objective",
                self.rm.objective,
                "needs human ratings, and RLHS's "
                "judged pairs carry none; use pairs (Bradley-Terry)",
            )
        if self.rm.use_margin:
            yield Problem(
                "rm.use_margin", True, "the judged pairs have no margin column; set it to false"
            )


@dataclass(frozen=True)
class PpoStageCfg:
    """rlhs.optimiser = ppo: PPO against that reward model on the same prompts, in <run>/ppo.

    Trained by `rlhfkit ppo`'s trainer; its algo, critic and optim groups are that command's,
    sampling follows the gen group and LoRA the lora group.
    """

    steps: PositiveInt = 50
    """PPO steps (each samples ppo.algo.prompts_per_step completions and updates on them)."""
    algo: PpoAlgoCfg = default(PpoAlgoCfg)
    critic: CriticCfg = default(CriticCfg)
    optim: OptimCfg = field(default_factory=_ppo_optim)


def stage_problems(cfg: Any) -> Iterable[Problem]:
    """The chosen optimiser's own cross-field checks, named as RLHS's fields (pre-flight)."""
    if cfg.rlhs.optimiser == "ppo":
        for problem in ppo_config(cfg, Path(cfg.run.output_dir or ".")).check():
            yield problem._replace(field=f"ppo.{problem.field}")


def optimise(cfg: Any, run_dir: Path) -> Any:
    """Train on ``<run>/pairs.jsonl`` with the chosen optimiser: the last stage's
    ``kit.TrainResult``, its summary holding the reward model's too."""
    if cfg.rlhs.optimiser == "dpo":
        from rlhfkit.train import dpo

        return dpo.train(_validated(dpo_config(cfg, run_dir), "DPO"))

    from rlhfkit.train import ppo, reward

    reward_summary = reward.train(_validated(reward_config(cfg, run_dir), "reward model")).summary
    outcome = ppo.train(_validated(ppo_config(cfg, run_dir), "PPO"))
    summary = {
        **{
            f"reward_model/{key}": value
            for key, value in reward_summary.items()
            if key not in ("model", "objective")
        },
        "reward_model": reward_summary["model"],
        **outcome.summary,
    }
    return replace(outcome, summary=summary)


def _sub_run(cfg: Any, run_dir: Path, name: str) -> RunCfg:
    """A stage's run settings: its own directory, resumed when the RLHS run is and it began."""
    sub_run = run_dir / name
    resume = cfg.run.resume and (sub_run / "config.toml").is_file()
    return replace(cfg.run, output_dir=str(sub_run), resume=resume, overwrite=not resume)


def _validated(built: Any, stage: str) -> Any:
    from rlhfkit import config_io
    from rlhfkit.errors import ConfigError

    if problems := config_io.validate(built):
        raise ConfigError([f"rlhs's {stage} stage: {problem}" for problem in problems])
    return built


def dpo_config(cfg: Any, run_dir: Path) -> Any:
    """The DPO config that trains on this run's pairs file, in ``<run>/dpo``."""
    from rlhfkit.config import FeedbackDataCfg
    from rlhfkit.train import dpo

    return dpo.Config(
        model=cfg.model,
        lora=cfg.lora,
        algo=cfg.algo,
        train=cfg.train,
        optim=cfg.optim,
        log=cfg.log,
        data=FeedbackDataCfg(path=str(run_dir / PAIRS_FILE), eval_fraction=cfg.data.eval_fraction),
        run=_sub_run(cfg, run_dir, "dpo"),
    )


def reward_config(cfg: Any, run_dir: Path) -> Any:
    """The reward-model config that trains on this run's pairs file, in ``<run>/reward``."""
    from rlhfkit.config import FeedbackDataCfg
    from rlhfkit.train import reward

    rm = cfg.reward_model
    return reward.Config(
        model=ModelCfg(path=rm.model, device=cfg.model.device, dtype=cfg.model.dtype),
        rm=rm.rm,
        train=rm.train,
        optim=rm.optim,
        log=cfg.log,
        data=FeedbackDataCfg(path=str(run_dir / PAIRS_FILE), eval_fraction=cfg.data.eval_fraction),
        run=_sub_run(cfg, run_dir, "reward"),
    )


def ppo_config(cfg: Any, run_dir: Path) -> Any:
    """The PPO config that trains against ``<run>/reward/model`` on RLHS's prompts, in
    ``<run>/ppo``."""
    from rlhfkit.train import ppo

    stage = cfg.ppo
    return ppo.Config(
        reward=f"rm:{run_dir / 'reward' / 'model'}",
        steps=stage.steps,
        model=cfg.model,
        lora=cfg.lora,
        data=cfg.data.online(),
        gen=cfg.gen,
        optim=stage.optim,
        log=cfg.log,
        critic=stage.critic,
        algo=stage.algo,
        run=_sub_run(cfg, run_dir, "ppo"),
    )
