"""`rlhfkit demo`: RL fine-tuning of SmolLM2-135M-Instruct toward positive movie reviews.

The whole loop on the embedded defaults, offline, on a laptop CPU:
  1. prepare the assets (first run only): SmolLM2, MiniLM, the VADER human ratings
  2. openings of human-rated movie snippets are the prompts (held-out split kept apart)
  3. the `sentiment` reward: a head on MiniLM embeddings trained on the human ratings
  4. GRPO with a KL penalty to the frozen starting model
  5. before/after on held-out openings, judged by the independent VADER lexicon (not the
     training reward): positive rate, training reward, KL to the reference, length, samples
  6. reward / KL / length curves as a PNG in the run directory
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhfkit.config import GenCfg, LogCfg, OptimCfg, PositiveInt, PromptDataCfg, RunCfg
from rlhfkit.train.grpo import AlgoCfg
from rlhfkit.train.grpo import Config as GrpoConfig


@dataclass(frozen=True)
class Config(GrpoConfig):
    """Run the whole RLHF loop on the embedded defaults: sentiment steering of SmolLM2-135M."""

    steps: PositiveInt = 60
    samples: PositiveInt = 5
    """Before/after sample pairs shown at the end."""
    judge: str = "vader"
    """Independent judge for the before/after table (not the training reward)."""
    data: PromptDataCfg = field(default_factory=lambda: PromptDataCfg(
        prompts="vader:movies", eval_size=64))
    gen: GenCfg = field(default_factory=lambda: GenCfg(
        max_new_tokens=24, temperature=1.0, batch_size=16, chat_template="off"))
    algo: AlgoCfg = field(default_factory=lambda: AlgoCfg(
        advantage="grpo", group_size=4, prompts_per_step=4, micro_batch_size=16, kl_coef=0.05))
    optim: OptimCfg = field(default_factory=lambda: OptimCfg(lr=3e-5, warmup_steps=3))
    log: LogCfg = field(default_factory=LogCfg)
    run: RunCfg = field(default_factory=lambda: RunCfg(checkpoint_every=30))


def main(cfg: Config) -> None:
    import time

    from rich.console import Console
    from rich.table import Table

    from rlhfkit import assets
    from rlhfkit.eval.policy import evaluate_policy
    from rlhfkit.eval.report import plot_curves
    from rlhfkit.rewards import load_reward
    from rlhfkit.train import grpo, online

    console = Console()
    started = time.perf_counter()
    # 1. assets (each is a no-op once cached)
    console.rule("1/4 embedded model and human ratings")
    for name in ("smollm2", "minilm", "vader"):
        console.print(f"{name}: {assets.ensure(name)}")
    # 2. held-out prompts and the two scorers
    console.rule(f"2/4 reward '{cfg.reward}' (trained on human ratings on first use) and judge "
                 f"'{cfg.judge}'")
    held_out = online.prompt_rows(cfg.data, "test")
    rewards = {"reward": load_reward(cfg.reward), "judge": load_reward(cfg.judge)}
    eval_gen = cfg.gen
    # 3. train; the reference is the starting model, so "before" samples come from it
    console.rule(f"3/4 {cfg.algo.advantage} for {cfg.steps} steps "
                 f"({cfg.algo.prompts_per_step} prompts x {cfg.algo.group_size} samples)")
    outcome = grpo.train(cfg)
    reference = outcome.reference  # None with LoRA: the policy with adapters off
    # 4. before / after on held-out openings with the same sampling seed
    console.rule(f"4/4 before vs after on {len(held_out)} held-out openings")
    with online.reference(outcome.policy, reference) as before_model:
        before = evaluate_policy(before_model, outcome.tokenizer, held_out, eval_gen, rewards,
                                 seed=cfg.run.seed + 17)
    after = evaluate_policy(outcome.policy, outcome.tokenizer, held_out, eval_gen, rewards,
                            seed=cfg.run.seed + 17,
                            reference=lambda: online.reference(outcome.policy, reference))

    table = Table(title=f"held-out movie openings ({len(held_out)} prompts)")
    table.add_column("")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row(f"training reward ({cfg.reward})", f"{before.mean('reward'):+.3f}",
                  f"{after.mean('reward'):+.3f}")
    table.add_row(f"positive rate, judged by {cfg.judge}", f"{before.positive_rate('judge'):.0%}",
                  f"{after.positive_rate('judge'):.0%}")
    table.add_row("KL to reference (nats / completion)", "0", f"{after.mean_kl:.2f}")
    table.add_row("mean length (tokens)", f"{before.mean_length:.1f}", f"{after.mean_length:.1f}")
    console.print(table)
    pairs = Table(title="samples: same opening, before vs after", show_lines=True)
    pairs.add_column("opening")
    pairs.add_column("before")
    pairs.add_column("after")
    shown = zip(held_out, before.completions, after.completions, strict=True)
    for row, old, new in list(shown)[:cfg.samples]:
        pairs.add_row(row["prompt"], old, new)
    console.print(pairs, markup=False)
    plot = plot_curves(outcome.run.metrics(), outcome.run.path / "curves.png")
    figures = {
        "judge": cfg.judge, "positive_rate_before": before.positive_rate("judge"),
        "positive_rate_after": after.positive_rate("judge"),
        "reward_before": before.mean("reward"), "reward_after": after.mean("reward"),
        "kl_after": after.mean_kl, "length_before": before.mean_length,
        "length_after": after.mean_length, "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    outcome.run.finish({**outcome.summary, **figures})
    console.print(f"run directory: {outcome.run.path}  (curves: {plot}, trained model: "
                  f"{outcome.run.path / 'model'})")
