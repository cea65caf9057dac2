"""`rlhfkit demo`: the whole RLHF pipeline on the embedded defaults, offline, on a laptop CPU.

  1. assets (first run only): SmolLM2-135M-Instruct, MiniLM, the VADER human ratings
  2. human feedback -> preferences: pairs of movie snippets whose human mean ratings differ
  3. a reward model (MiniLM + scalar head, Bradley-Terry) trained on those pairs; its held-out
     pairwise accuracy is reported next to the human agreement ceiling
  4. PPO (policy with a value head on its trunk, GAE, KL penalty to the frozen starting model) on
     SmolLM2, continuing movie-review openings, rewarded by that reward model
  5. before/after on held-out openings, judged by the independent VADER lexicon (not the training
     reward): positive rate, training reward, KL to the reference, length, sample pairs; reward /
     KL / length curves as a PNG

The run directory holds the PPO run (``model/``, ``curves.png``, ``summary.json``) and the reward
model's own run under ``reward-model/`` (its trained model in ``reward-model/model``). With
``--resume`` a finished reward model is reused and PPO continues from its last checkpoint.
``--reward SPEC`` skips steps 2-3 and trains against that reward instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rlhfkit.config import (
    FeedbackDataCfg,
    GenCfg,
    LogCfg,
    ModelCfg,
    ModelPath,
    NonNegativeFloat,
    OptimCfg,
    PositiveFloat,
    PositiveInt,
    PromptDataCfg,
    RunCfg,
    default,
)
from rlhfkit.train.ppo import AlgoCfg, CriticCfg
from rlhfkit.train.ppo import Config as PpoConfig

REWARD_MODEL_DIR = "reward-model"


@dataclass(frozen=True)
class RewardStageCfg:
    """Steps 2-3: preferences from human ratings, and the reward model trained on them."""

    data: str = "vader:movies"
    """Human-rated texts the preference pairs come from (train split; validation/test held out)."""
    min_gap: NonNegativeFloat = 1.0
    """Pair two texts only when their human mean ratings differ by at least this (-4..4 scale)."""
    backbone: ModelPath = "minilm"
    """The reward model's backbone: minilm (fast encoder), smollm2, or a model directory."""
    steps: PositiveInt = 90
    """Reward-model optimiser steps."""
    batch_size: PositiveInt = 32
    """Pairs per step."""
    lr: PositiveFloat = 5e-5
    """Reward-model peak learning rate (linear decay after 10 warm-up steps)."""


@dataclass(frozen=True)
class Config(PpoConfig):
    """Run the whole RLHF loop on the embedded defaults: human ratings -> reward model -> PPO."""

    reward: str = ""
    """Empty trains a reward model on human ratings first (steps 2-3); or name a reward to use
    instead (sentiment, vader, rm:PATH, file.py:fn, ...)."""
    steps: PositiveInt = 60
    model: ModelCfg = field(default_factory=lambda: ModelCfg(autocast="auto"))
    samples: PositiveInt = 5
    """Before/after sample pairs shown at the end."""
    judge: str = "vader"
    """Independent judge for the before/after table (not the training reward)."""
    reward_model: RewardStageCfg = default(RewardStageCfg)
    data: PromptDataCfg = field(
        default_factory=lambda: PromptDataCfg(prompts="vader:movies", eval_size=64)
    )
    gen: GenCfg = field(
        default_factory=lambda: GenCfg(
            max_new_tokens=24, temperature=1.0, batch_size=16, chat_template="off"
        )
    )
    algo: AlgoCfg = field(
        default_factory=lambda: AlgoCfg(
            prompts_per_step=16, micro_batch_size=16, epochs=1, kl_coef=0.05
        )
    )
    # A value head on the policy's trunk: a PPO step in about two thirds of the time of a separate
    # critic's, 3 GB less memory, and in the measured run more learning (README).
    critic: CriticCfg = field(default_factory=lambda: CriticCfg(share_policy=True, lr=1e-3))
    optim: OptimCfg = field(default_factory=lambda: OptimCfg(lr=3e-5, warmup_steps=3))
    log: LogCfg = field(default_factory=LogCfg)
    run: RunCfg = field(default_factory=lambda: RunCfg(checkpoint_every=30))


def main(cfg: Config) -> None:
    import time

    from rich.console import Console

    from rlhfkit import assets
    from rlhfkit.conditioning import load_conditioning
    from rlhfkit.data.prompts import prompt_rows
    from rlhfkit.eval.policy import evaluate_policy
    from rlhfkit.eval.report import plot_curves
    from rlhfkit.generation import describe_conditioning
    from rlhfkit.models import lora, resolve_model_dir
    from rlhfkit.rewards import load_reward
    from rlhfkit.train import ppo
    from rlhfkit.train.runs import Run

    console = Console()
    started = time.perf_counter()
    out = Path(cfg.run.output_dir).expanduser()
    # The directory is a run from the start (its config.toml written now, not by the PPO stage),
    # so a demo stopped in any stage can be resumed or overwritten; --overwrite clears it here,
    # not in the PPO stage, which would delete the reward model.
    Run.start(cfg, "demo").close()
    cfg = replace(cfg, run=replace(cfg.run, overwrite=False))

    # 1. assets (each is a no-op once cached)
    console.rule("1/5 embedded models and human ratings")
    for name in ("smollm2", "minilm", "vader"):
        console.print(f"{name}: {assets.ensure(name)}")

    # 2-3. preferences from human ratings, and a reward model trained on them
    rm_figures: dict[str, Any] = {}
    if not cfg.reward:
        stage = cfg.reward_model
        console.rule(
            f"2-3/5 reward model on {stage.data} preference pairs "
            f"(human means >= {stage.min_gap:g} apart), {stage.backbone} backbone"
        )
        reward_dir, rm_figures = train_reward_model(cfg, out / REWARD_MODEL_DIR, console)
        cfg = replace(cfg, reward=f"rm:{reward_dir}")
    held_out = prompt_rows(cfg.data, "test")
    rewards = {"reward": load_reward(cfg.reward), "judge": load_reward(cfg.judge)}

    # 4. PPO; the reference is the starting model, so "before" samples come from it
    console.rule(
        f"4/5 PPO for {cfg.steps} steps ({cfg.algo.prompts_per_step} prompts, reward "
        f"{cfg.reward}, KL coefficient {cfg.algo.kl_coef:g})"
    )
    # the demo evaluates before/after itself (step 5), so PPO's own held-out evaluation is off
    outcome = ppo.train(replace(cfg, data=replace(cfg.data, eval_size=0)))
    reference = outcome.reference  # None with LoRA: the policy with adapters off

    # 5. before / after on held-out openings with the same sampling seed (a hindsight-trained
    # starting model is asked with the words it was trained on, both before and after)
    console.rule(f"5/5 before vs after on {len(held_out)} held-out openings")
    conditioning = load_conditioning(resolve_model_dir(cfg.model.path))
    if conditioning is not None:
        console.print(describe_conditioning(conditioning), markup=False)
    with lora.reference(outcome.model, reference) as before_model:
        before = evaluate_policy(
            before_model,
            outcome.tokenizer,
            held_out,
            cfg.gen,
            rewards,
            seed=cfg.run.seed + 17,
            conditioning=conditioning,
        )
    after = evaluate_policy(
        outcome.model,
        outcome.tokenizer,
        held_out,
        cfg.gen,
        rewards,
        seed=cfg.run.seed + 17,
        reference=lambda: lora.reference(outcome.model, reference),
        conditioning=conditioning,
    )
    print_before_after(console, cfg, held_out, before, after)
    plot = plot_curves(outcome.run.metrics(), outcome.run.path / "curves.png")
    figures = {
        "reward": cfg.reward,
        "judge": cfg.judge,
        **rm_figures,
        "positive_rate_before": before.positive_rate("judge"),
        "positive_rate_after": after.positive_rate("judge"),
        "reward_before": before.mean("reward"),
        "reward_after": after.mean("reward"),
        "kl_after": after.mean_kl,
        "length_before": before.mean_length,
        "length_after": after.mean_length,
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    outcome.run.finish({**outcome.summary, **figures})
    console.print(
        f"run directory: {outcome.run.path}  (curves: {plot}, trained model: "
        f"{outcome.run.path / 'model'})"
    )


def train_reward_model(cfg: Config, directory: Path, console: Any) -> tuple[Path, dict[str, Any]]:
    """Train (or, on --resume, reuse) the demo's reward model; its directory and report figures."""
    import json

    from rich.table import Table

    from rlhfkit.train import offline, reward

    stage = cfg.reward_model
    model_dir = directory / "model"
    summary_file = directory / "summary.json"
    if cfg.run.resume and summary_file.is_file() and (model_dir / "reward_model.json").is_file():
        summary = json.loads(summary_file.read_text())
        console.print(f"reusing the reward model in {model_dir}")
    else:
        rm_cfg = reward.Config(
            model=ModelCfg(
                path=stage.backbone, device=cfg.model.device, autocast=cfg.model.autocast
            ),
            data=FeedbackDataCfg(path=stage.data, min_gap=stage.min_gap),
            train=offline.TrainCfg(
                max_steps=stage.steps, batch_size=stage.batch_size, eval_batch_size=64, max_eval=500
            ),
            optim=OptimCfg(lr=stage.lr, warmup_steps=10, schedule="linear"),
            log=cfg.log,
            run=RunCfg(
                output_dir=str(directory),
                seed=cfg.run.seed,
                deterministic=cfg.run.deterministic,
                overwrite=True,
                checkpoint_every=0,
            ),
        )
        summary = reward.train(rm_cfg).summary
    table = Table(title="reward model on held-out (test) preference pairs")
    table.add_column("")
    table.add_column("all pairs", justify="right")
    table.add_column(f"human means >= {reward.RewardCfg.report_gap:g} apart", justify="right")
    table.add_row(
        "reward model accuracy",
        f"{summary['test_accuracy']:.1%}",
        f"{summary.get('test_accuracy_gap', float('nan')):.1%}",
    )
    table.add_row(
        "one human rater vs the consensus (ceiling)",
        f"{summary.get('test_human_single_rater', float('nan')):.1%}",
        f"{summary.get('test_human_single_rater_gap', float('nan')):.1%}",
    )
    table.add_row(
        "pairs", f"{summary['test_pairs']:.0f}", f"{summary.get('test_pairs_gap', 0):.0f}"
    )
    console.print(table)
    figures = {
        f"rm_{key}": summary.get(key)
        for key in (
            "test_accuracy",
            "test_accuracy_gap",
            "test_human_single_rater",
            "test_human_single_rater_gap",
            "seconds",
        )
    }
    return model_dir, figures


def print_before_after(
    console: Any, cfg: Config, held_out: list[dict[str, Any]], before: Any, after: Any
) -> None:
    """The before/after table and the sample pairs."""
    from rich.table import Table

    table = Table(title=f"held-out movie openings ({len(held_out)} prompts)")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row(
        f"training reward ({cfg.reward})",
        f"{before.mean('reward'):+.3f}",
        f"{after.mean('reward'):+.3f}",
    )
    table.add_row(
        f"positive rate, judged by {cfg.judge}",
        f"{before.positive_rate('judge'):.0%}",
        f"{after.positive_rate('judge'):.0%}",
    )
    table.add_row("KL to reference (nats / completion)", "0", f"{after.mean_kl:.2f}")
    table.add_row("mean length (tokens)", f"{before.mean_length:.1f}", f"{after.mean_length:.1f}")
    console.print(table)
    pairs = Table(title="samples: same opening, before vs after", show_lines=True)
    pairs.add_column("opening")
    pairs.add_column("before")
    pairs.add_column("after")
    shown = zip(held_out, before.completions, after.completions, strict=True)
    for row, old, new in list(shown)[: cfg.samples]:
        pairs.add_row(row["prompt"], old, new)
    console.print(pairs, markup=False)
