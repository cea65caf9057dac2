"""RLHS: feedback given in hindsight, after a simulated outcome, then preference optimisation.

Liang, Wang, Fisac et al. 2025, "RLHS: Mitigating Misalignment in RLHF with Hindsight
Simulation" (arXiv 2501.08617). An evaluator who judges a response by how it reads (foresight)
rewards what sounds helpful now, such as confident advice or a sale, even when acting on it ends
badly; RLHF then learns to please rather than to help. RLHS shows the evaluator what plausibly
happened next, written by a simulator model, and asks for the preference with that outcome in
view. The preferences then train the policy as usual (``rlhs.optimiser``): with DPO,

    L_DPO = -log sigmoid(beta [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])

where y_w is the response the evaluator preferred in hindsight; or with PPO against a
Bradley-Terry reward model fitted to the same pairs, P(y_w > y_l) = sigmoid(r(x, y_w) - r(x, y_l)).

Steps:
  1. sample ``rlhs.samples_per_prompt`` responses per prompt from the policy
  2. the simulator writes what plausibly happens after each response (``simulator.template``)
     - ``rlhs.feedback = foresight`` skips this: the evaluator sees the responses alone
  3. the evaluator judges every pair of one prompt's responses, with the outcomes shown
     (``rlhs_evaluators``: an LLM judge, local or behind an OpenAI-compatible endpoint, asked in
     both orders; or a registered reward scoring each response followed by its outcome)
     - ``rlhs.evaluator = people`` writes the responses and outcomes as a feedback-studio import
       file instead, and stops: people judge in ``rlhfkit label``, then the printed commands train
  4. write the preferences as a pairs file with provenance, ``<run>/pairs.jsonl``
  5. train on them (``rlhs_stages``): DPO as a sub-run in ``<run>/dpo``, or a reward model in
     ``<run>/reward`` then PPO against it in ``<run>/ppo``; export ``<run>/model``

A resumed run (``--run.resume``) reuses the pairs file it wrote and continues each training
stage from its last checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar, Literal

from rlhfkit import distributed
from rlhfkit.config import (
    Bounds,
    Fraction,
    GenCfg,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Problem,
    PromptDataCfg,
    default,
)
from rlhfkit.errors import DataError
from rlhfkit.train import kit
from rlhfkit.train.dpo import AlgoCfg
from rlhfkit.train.hindsight.rlhs_evaluators import (
    IMPORT_FILE,
    JudgeCfg,
    RewardJudge,
    Sample,
    build_judge,
    judge_name,
    judge_pairs,
    model_problem,
    template_problem,
    weights_hash,
    write_studio_import,
)
from rlhfkit.train.hindsight.rlhs_stages import (
    PAIRS_FILE,
    PpoStageCfg,
    RewardModelCfg,
    dpo_config,
    optimise,
    ppo_config,
    reward_config,
    stage_problems,
)
from rlhfkit.train.offline import TrainCfg

__all__ = [
    "IMPORT_FILE",
    "PAIRS_FILE",
    "Config",
    "JudgeCfg",
    "PromptsCfg",
    "RewardJudge",
    "RlhsCfg",
    "Sample",
    "SimulatorCfg",
    "build_judge",
    "dpo_config",
    "judge_pairs",
    "main",
    "ppo_config",
    "reward_config",
    "sample_responses",
    "simulate_outcomes",
    "train",
]

SIMULATION_TEMPLATE = (
    "A person asked for advice:\n{prompt}\n\n"
    "They were told:\n{response}\n\n"
    "They followed this advice. In two or three sentences, describe what plausibly happened "
    "next and how it turned out for them."
)


@dataclass(frozen=True)
class PromptsCfg:
    """The prompts the policy answers: a file or a built-in set, as the online commands read."""

    shorthand: ClassVar[str] = "prompts"  # `--data X` sets `--data.prompts X`

    prompts: str = ""
    """A prompt file (.jsonl/.json/.csv/.parquet/.txt), one plain-text request a row, or a
    built-in set: vader:movies|tweets|amazon|nyt (openings of human-rated texts, train split)
    (required; recipes/data/advice-prompts.jsonl holds 40 everyday advice questions)."""
    prompt_field: str = "prompt"
    """Column holding the prompt in a prompt file."""
    max_prompts: NonNegativeInt = 0
    """Use at most this many prompts, the first ones (0 = all)."""
    eval_fraction: Fraction = 0.1
    """Share of the judged pairs held out to evaluate the DPO or reward-model stage (chosen by a
    hash of each row)."""

    def online(self) -> PromptDataCfg:
        """The same prompts as the online commands' data group (the PPO stage reads them so)."""
        return PromptDataCfg(
            prompts=os.path.expanduser(self.prompts),
            prompt_field=self.prompt_field,
            max_prompts=self.max_prompts,
        )

    def check(self) -> Iterable[Problem]:
        if not self.prompts:
            yield Problem(
                "prompts",
                "",
                "is required; pass --data FILE of prompts "
                "(recipes/data/advice-prompts.jsonl is one) or a built-in set such as "
                "vader:movies",
            )
        else:
            yield from (problem for problem in self.online().check() if problem.field == "prompts")


@dataclass(frozen=True)
class SimulatorCfg:
    """The model that writes what plausibly happens after each response."""

    model: str = ""
    """An alias or local model directory; empty = the policy's starting model (model.path)."""
    template: str = SIMULATION_TEMPLATE
    """The simulation prompt: {prompt} is the person's request, {response} the policy's answer;
    "{prompt}{response}" simply continues the text (with gen.chat_template = "off")."""
    max_new_tokens: PositiveInt = 96
    """Most tokens of one simulated outcome."""
    temperature: NonNegativeFloat = 0.7
    """Sampling temperature of the simulator (0 = greedy: the single most likely outcome)."""

    def check(self) -> Iterable[Problem]:
        yield from model_problem("model", self.model)
        yield from template_problem("template", self.template, ("prompt", "response"))


@dataclass(frozen=True)
class RlhsCfg:
    """Whose feedback, on what, which pairs are kept, and how they train the policy."""

    feedback: Literal["hindsight", "foresight"] = "hindsight"
    """hindsight: the evaluator sees each response's simulated outcome (RLHS); foresight: the
    responses alone (classic RLHF feedback, for comparison)."""
    evaluator: Literal["judge", "reward", "people"] = "judge"
    """judge: an AI evaluator (the judge group) labels every pair; reward: the reward named by
    --reward scores each response (followed by its outcome in hindsight) and the higher score
    is preferred; people: write a feedback-studio import file and stop (the run prints the next
    commands)."""
    optimiser: Literal["dpo", "ppo"] = "dpo"
    """dpo: DPO on the judged pairs (the algo, train and optim groups); ppo: a Bradley-Terry
    reward model on them (the reward_model group), then PPO against it on the same prompts
    (the ppo group)."""
    samples_per_prompt: Annotated[int, Bounds(ge=2)] = 2
    """Responses sampled per prompt; every two of them form a pair to judge."""
    min_confidence: Fraction = 0.0
    """Keep a pair only when the evaluator's P(A better) is at least this far from 0.5 (exact
    ties are always dropped)."""
    reward_temperature: PositiveFloat = 0.1
    """evaluator = reward: P(A better) = sigmoid((score_A - score_B) / reward_temperature), so a
    score gap of one temperature gives 0.73 (what min_confidence is measured against)."""

    def check(self) -> Iterable[Problem]:
        if self.min_confidence >= 0.5:
            yield Problem(
                "min_confidence",
                self.min_confidence,
                "must be below 0.5 (no preference can be that far from 0.5)",
            )


@dataclass(frozen=True)
class Config(kit.TrainConfig):
    """RLHS: judge responses after simulating what happens next, then train with DPO or PPO."""

    method: str = "rlhs"
    """The hindsight method; a recipe may name it here."""
    reward: str = ""
    """rlhs.evaluator = reward: the reward that judges, a registered name (sentiment, vader,
    length, ...) or your own file.py:fn / package.module:fn."""
    data: PromptsCfg = default(PromptsCfg)
    gen: GenCfg = default(GenCfg)
    simulator: SimulatorCfg = default(SimulatorCfg)
    judge: JudgeCfg = default(JudgeCfg)
    rlhs: RlhsCfg = default(RlhsCfg)
    algo: AlgoCfg = default(AlgoCfg)
    train: TrainCfg = default(TrainCfg)
    reward_model: RewardModelCfg = default(RewardModelCfg)
    ppo: PpoStageCfg = default(PpoStageCfg)

    def check(self) -> Iterable[Problem]:
        rlhs = self.rlhs
        if self.method != "rlhs":
            yield Problem("method", self.method, 'this config is for rlhs; set method = "rlhs"')
        if distributed.world_size() > 1:
            yield Problem(
                "method",
                "rlhs",
                "samples, simulates and judges in one process; run it without torchrun, then "
                "train on its pairs.jsonl with `torchrun ... -m rlhfkit dpo` if one process is "
                "too slow",
            )
        if rlhs.optimiser == "dpo" and self.algo.loss == "kto":
            yield Problem("algo.loss", "kto", "RLHS yields preference pairs; use dpo or ipo")
        if self.gen.temperature == 0:
            yield Problem(
                "gen.temperature",
                0,
                "greedy decoding samples the same response every "
                "time, so there is no pair to judge; use a temperature above 0",
            )
        if rlhs.evaluator == "reward" and not self.reward:
            yield Problem(
                "reward",
                "",
                "is required with rlhs.evaluator = reward; name the "
                "reward that judges, such as --reward sentiment",
            )
        if self.reward and rlhs.evaluator != "reward":
            yield Problem(
                "reward",
                self.reward,
                f"judges only with rlhs.evaluator = reward, not "
                f"{rlhs.evaluator}; set --rlhs.evaluator reward or drop --reward",
            )
        elif self.reward:
            from rlhfkit.rewards import spec_problems

            for message in spec_problems(self.reward):
                yield Problem("reward", self.reward, message)
        yield from stage_problems(self)


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    result = train(cfg)
    summary = result.summary
    print_summary(result.run, {key: value for key, value in summary.items() if key != "next"})
    if "next" in summary:  # people judge: the run stops here and says how to go on
        print(
            "people judge next, in the feedback studio, then training runs on their labels:\n"
            + "\n".join(f"  {command}" for command in summary["next"])
        )


def train(cfg: Config) -> kit.TrainResult:
    from rlhfkit.data.files import read_rows, write_jsonl
    from rlhfkit.train.runs import Run, seed_everything

    seed_everything(cfg.run.seed, cfg.run.deterministic)
    rows = _load_prompts(cfg)  # a bad prompt file fails before anything is written
    run = Run.start(cfg, "hindsight-rlhs")
    pairs_path = run.path / PAIRS_FILE
    hindsight = cfg.rlhs.feedback == "hindsight"
    try:
        if cfg.run.resume and pairs_path.is_file():
            pairs = read_rows(pairs_path)
        else:
            from rlhfkit.models import load_causal_lm

            # 1. sample responses from the policy
            policy = load_causal_lm(cfg.model)
            samples = sample_responses(
                policy,
                cfg.gen,
                [row["prompt"] for row in rows],
                cfg.rlhs.samples_per_prompt,
                cfg.run.seed,
            )

            # 2. simulate what happens after each response (the evaluator sees it in hindsight)
            simulator_path = cfg.simulator.model or cfg.model.path
            if hindsight:
                simulator = (
                    policy
                    if simulator_path == cfg.model.path
                    else load_causal_lm(replace(cfg.model, path=simulator_path))
                )
                samples = simulate_outcomes(
                    simulator,
                    cfg.simulator,
                    cfg.gen,
                    samples,
                    cfg.run.seed + cfg.rlhs.samples_per_prompt,
                )
                del simulator
            if cfg.rlhs.evaluator == "people":
                return kit.TrainResult(
                    run,
                    None,
                    None,
                    write_studio_import(cfg, run, samples, simulator_path if hindsight else None),
                )

            # 3. the evaluator judges each pair, with the outcomes in view only in hindsight
            if cfg.rlhs.evaluator == "reward":
                from rlhfkit.rewards import load_reward

                meta = {
                    row["prompt"]: {k: v for k, v in row.items() if k != "prompt"} for row in rows
                }
                judge: Any = RewardJudge(
                    load_reward(cfg.reward), samples, cfg.rlhs.reward_temperature, meta
                )
            else:
                judge = build_judge(cfg, policy)
            pairs, counts = judge_pairs(judge, samples, cfg.rlhs.min_confidence)
            del policy, judge
            _release_memory()  # the training stages load their models afresh
            if not pairs:
                raise DataError(
                    f"rlhs: the evaluator kept no pair of {counts['judged']} judged "
                    f"({counts['tie']} ties, {counts['identical']} identical "
                    "responses); lower --rlhs.min_confidence or sample more "
                    "(rlhs.samples_per_prompt)"
                )

            # 4. the preferences with their provenance, written atomically
            provenance = {
                "feedback": cfg.rlhs.feedback,
                "outcomes_shown": hindsight,
                "judge": judge_name(cfg),
                "simulator": simulator_path if hindsight else None,
                "policy": cfg.model.path,
                "policy_hash": weights_hash(cfg.model.path),
            }
            pairs = [{**pair, **provenance} for pair in pairs]
            write_jsonl(pairs_path, pairs)
            run.log(0, {f"judge/{key}": value for key, value in counts.items()})
    finally:
        run.close()

    # 5. train on the judged pairs: DPO, or a reward model then PPO; each stage a sub-run
    stage = optimise(cfg, run.path)
    model_dir = run.path / "model"
    if model_dir.exists():  # a resumed run exports again
        import shutil

        shutil.rmtree(model_dir)
    os.replace(stage.run.path / "model", model_dir)
    judged = next((row for row in run.metrics() if row["step"] == 0), {})  # counts, written once
    summary = {
        "feedback": cfg.rlhs.feedback,
        "evaluator": judge_name(cfg),
        "optimiser": cfg.rlhs.optimiser,
        "pairs": len(pairs),
        **{key: value for key, value in judged.items() if key.startswith("judge/")},
        "judge_confidence_mean": _mean(p["judge_probability"] for p in pairs),
        **{key: value for key, value in stage.summary.items() if key != "model"},
        "pairs_file": str(pairs_path),
        "model": str(model_dir),
    }
    run.finish(summary)
    return replace(stage, run=run, summary=summary)  # the last stage's model, as exported


def _release_memory() -> None:
    """Free the sampling models' memory now (their reference cycles wait for a collection)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load_prompts(cfg: Config) -> list[dict[str, Any]]:
    """The prompt rows ``{"prompt": text, **meta}``, read as the online commands read them."""
    from rlhfkit.data.prompts import prompt_rows

    rows = prompt_rows(cfg.data.online(), "train")
    for number, row in enumerate(rows, start=1):
        if not isinstance(row["prompt"], str):
            raise DataError(
                f"{cfg.data.prompts}: row {number} holds a chat; rlhs takes "
                "plain-text requests (the simulator and judge quote them): give its "
                "text"
            )
    return rows


def sample_responses(
    policy: tuple[Any, Any], gen: GenCfg, prompts: list[str], samples: int, seed: int
) -> list[list[Sample]]:
    """``samples`` responses to each prompt; sample ``s`` of every prompt from one pass seeded
    ``seed + s`` (as the feedback studio samples, so the two reproduce each other)."""
    from rlhfkit.generation import get_backend

    backend = get_backend(gen.backend, *policy)
    per_prompt: list[list[Sample]] = [[] for _ in prompts]
    for s in range(samples):
        rollout = backend.generate(list(prompts), gen, seed + s)
        for i, (text, ended) in enumerate(
            zip(rollout.completions, rollout.finished.tolist(), strict=True)
        ):
            per_prompt[i].append(Sample(prompts[i], text, seed + s, finished=ended))
    return per_prompt


def simulate_outcomes(
    simulator: tuple[Any, Any],
    sim: SimulatorCfg,
    gen: GenCfg,
    samples: list[list[Sample]],
    seed: int,
) -> list[list[Sample]]:
    """Each sample with the simulator's account of what happened after it (the simulator's
    prompts are wrapped in its chat template as gen.chat_template says)."""
    from rlhfkit.generation import get_backend

    flat = [one for group in samples for one in group]
    requests = [sim.template.format(prompt=one.prompt, response=one.response) for one in flat]
    settings = replace(gen, max_new_tokens=sim.max_new_tokens, temperature=sim.temperature)
    outcomes = iter(
        get_backend(gen.backend, *simulator).generate(requests, settings, seed).completions
    )
    return [[replace(one, outcome=next(outcomes).strip()) for one in group] for group in samples]


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else float("nan")
