"""RLHS: feedback given in hindsight, after a simulated outcome, then preference optimisation.

Liang, Wang, Fisac et al. 2025, "RLHS: Mitigating Misalignment in RLHF with Hindsight
Simulation" (arXiv 2501.08617). An evaluator who judges a response by how it reads (foresight)
rewards what sounds helpful now, such as confident advice or a sale, even when acting on it ends
badly; RLHF then learns to please rather than to help. RLHS shows the evaluator what plausibly
happened next, written by a simulator model, and asks for the preference with that outcome in
view. The preferences then train the policy as usual; here with DPO:

    L_DPO = -log sigmoid(beta [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])

where y_w is the response the evaluator preferred in hindsight.

Steps:
  1. sample ``rlhs.samples_per_prompt`` responses per prompt from the policy
  2. the simulator writes what plausibly happens after each response (``simulator.template``)
     - ``rlhs.feedback = foresight`` skips this: the evaluator sees the responses alone
  3. the evaluator judges every pair of one prompt's responses, with the outcomes shown
     (``rlhfkit.rewards.judge``: a local model or an OpenAI-compatible endpoint, both orders)
     - ``rlhs.evaluator = people`` writes the responses and outcomes as a feedback-studio import
       file instead, and stops: people judge in ``rlhfkit label``, then ``rlhfkit dpo`` trains
  4. write the preferences as a pairs file with provenance, ``<run>/pairs.jsonl``
  5. train with DPO (``rlhfkit.train.dpo``) as a sub-run in ``<run>/dpo``; export ``<run>/model``

A resumed run (``--run.resume``) reuses the pairs file it wrote and continues the DPO stage from
its last checkpoint.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from rlhfkit.config import (
    Fraction,
    GenCfg,
    InputFile,
    LogCfg,
    LoraCfg,
    Min,
    ModelCfg,
    ModelReference,
    NonNegativeFloat,
    NonNegativeInt,
    OptimCfg,
    PositiveFloat,
    PositiveInt,
    Problem,
    RunCfg,
    default,
)
from rlhfkit.errors import DataError
from rlhfkit.rewards.judge import DEFAULT_API_KEY_ENV, PAIR_TEMPLATE
from rlhfkit.train.dpo import AlgoCfg
from rlhfkit.train.offline import TrainCfg

SIMULATION_TEMPLATE = (
    "A person asked for advice:\n{prompt}\n\n"
    "They were told:\n{response}\n\n"
    "They followed this advice. In two or three sentences, describe what plausibly happened "
    "next and how it turned out for them."
)

PAIRS_FILE = "pairs.jsonl"
IMPORT_FILE = "studio-import.jsonl"


@dataclass(frozen=True)
class PromptsCfg:
    """The advice-seeking prompts the policy answers."""

    shorthand: ClassVar[str] = "path"  # `--data X` sets `--data.path X`

    path: InputFile = ""
    """Prompt file (.jsonl/.json/.csv/.parquet/.txt), one plain-text request a row (required;
    recipes/data/advice-prompts.jsonl holds 40 everyday advice questions)."""
    prompt_field: str = "prompt"
    """Column holding the prompt."""
    max_prompts: NonNegativeInt = 0
    """Use at most this many prompts, the first ones (0 = all)."""
    eval_fraction: Fraction = 0.1
    """Share of the judged pairs held out to evaluate DPO (chosen by a hash of each row)."""

    def check(self) -> Iterable[Problem]:
        if not self.path:
            yield Problem("path", "", "is required; pass --data FILE of advice-seeking prompts "
                          "(recipes/data/advice-prompts.jsonl is one)")


@dataclass(frozen=True)
class SimulatorCfg:
    """The model that writes what plausibly happens after each response."""

    model: str = ""
    """An alias or local model directory; empty = the policy's starting model (model.path)."""
    template: str = SIMULATION_TEMPLATE
    """The simulation prompt: {prompt} is the person's request, {response} the policy's answer."""
    max_new_tokens: PositiveInt = 96
    """Most tokens of one simulated outcome."""
    temperature: NonNegativeFloat = 0.7
    """Sampling temperature of the simulator (0 = greedy: the single most likely outcome)."""

    def check(self) -> Iterable[Problem]:
        yield from _model_problem("model", self.model)
        yield from _template_problem("template", self.template, ("prompt", "response"))


@dataclass(frozen=True)
class JudgeCfg:
    """The AI evaluator (rlhs.evaluator = judge): a local model or an OpenAI-compatible endpoint."""

    model: str = ""
    """Local judge: an alias or model directory; empty = the policy's starting model. Unused
    when url is set."""
    url: str = ""
    """Base URL of an OpenAI-compatible server (http://localhost:8000/v1); empty = judge with
    the local model."""
    endpoint_model: str = ""
    """The model name the server is asked for (required with url)."""
    api_key_env: str = DEFAULT_API_KEY_ENV
    """Environment variable holding the endpoint's API key (sent when set)."""
    timeout: PositiveFloat = 60.0
    """Seconds to wait for one endpoint reply."""
    retries: NonNegativeInt = 3
    """Retries after a timeout, refused connection, 429 or 5xx, waiting 1, 2, 4 ... s between."""
    logprobs: bool = True
    """Ask the endpoint for the answer's log-probs (a graded preference); off for servers that
    reject the option (the reply's text is read instead)."""
    template: str = PAIR_TEMPLATE
    """The judging prompt: {prompt}, {response_a}, {response_b} (each response followed by its
    outcome in hindsight); it must ask for the answer A or B."""

    def check(self) -> Iterable[Problem]:
        yield from _model_problem("model", self.model)
        yield from _template_problem("template", self.template,
                                     ("prompt", "response_a", "response_b"))
        if self.url and not self.url.startswith(("http://", "https://")):
            yield Problem("url", self.url, "is not an http(s) URL; give the server's base URL, "
                          "such as http://localhost:8000/v1")
        if self.url and not self.endpoint_model:
            yield Problem("endpoint_model", "", "is required with judge.url; name the model the "
                          "server runs")


@dataclass(frozen=True)
class RlhsCfg:
    """Whose feedback, on what, and which pairs are kept."""

    feedback: Literal["hindsight", "foresight"] = "hindsight"
    """hindsight: the evaluator sees each response's simulated outcome (RLHS); foresight: the
    responses alone (classic RLHF feedback, for comparison)."""
    evaluator: Literal["judge", "people"] = "judge"
    """judge: an AI evaluator (the judge group) labels every pair and DPO trains at once; people:
    write a feedback-studio import file and stop (the run prints the next commands)."""
    samples_per_prompt: Annotated[int, Min(2)] = 2
    """Responses sampled per prompt; every two of them form a pair to judge."""
    min_confidence: Fraction = 0.0
    """Keep a pair only when the judge's P(A better) is at least this far from 0.5 (exact ties
    are always dropped)."""

    def check(self) -> Iterable[Problem]:
        if self.min_confidence >= 0.5:
            yield Problem("min_confidence", self.min_confidence,
                          "must be below 0.5 (no preference can be that far from 0.5)")


@dataclass(frozen=True)
class Config:
    """RLHS: judge responses after simulating what happens next, then train with DPO."""

    method: str = "rlhs"
    """The hindsight method; a recipe may name it here."""
    model: ModelCfg = default(ModelCfg)
    lora: LoraCfg = default(LoraCfg)
    data: PromptsCfg = default(PromptsCfg)
    gen: GenCfg = default(GenCfg)
    simulator: SimulatorCfg = default(SimulatorCfg)
    judge: JudgeCfg = default(JudgeCfg)
    rlhs: RlhsCfg = default(RlhsCfg)
    algo: AlgoCfg = default(AlgoCfg)
    train: TrainCfg = default(TrainCfg)
    optim: OptimCfg = default(OptimCfg)
    log: LogCfg = default(LogCfg)
    run: RunCfg = default(RunCfg)

    def check(self) -> Iterable[Problem]:
        if self.method != "rlhs":
            yield Problem("method", self.method, "this config is for rlhs; set method = \"rlhs\"")
        if self.algo.loss == "kto":
            yield Problem("algo.loss", "kto", "RLHS yields preference pairs; use dpo or ipo")
        if self.gen.temperature == 0:
            yield Problem("gen.temperature", 0, "greedy decoding samples the same response every "
                          "time, so there is no pair to judge; use a temperature above 0")


def _model_problem(name: str, value: str) -> Iterable[Problem]:
    message = ModelReference()(value) if value else None
    if message:
        yield Problem(name, value, message + "; or leave it empty for the policy's model")


def _template_problem(name: str, template: str, fields: tuple[str, ...]) -> Iterable[Problem]:
    from rlhfkit.rewards.judge import template_problem

    if problem := template_problem(template, fields):
        yield Problem(name, template, problem)


@dataclass(frozen=True)
class Sample:
    """One response to one prompt, with what the simulator says happened after it."""

    prompt: str
    response: str
    seed: int
    outcome: str | None = None


def main(cfg: Config) -> None:
    from rlhfkit.eval.report import print_summary

    run, summary = train(cfg)
    print_summary(run, {key: value for key, value in summary.items() if key != "next"})
    if "next" in summary:  # people judge: the run stops here and says how to go on
        print("people judge next, in the feedback studio, then DPO trains on their labels:\n"
              + "\n".join(f"  {command}" for command in summary["next"]))


def train(cfg: Config) -> tuple[Any, dict[str, Any]]:
    from rlhfkit.data.files import read_rows, write_jsonl
    from rlhfkit.runs import Run, seed_everything

    seed_everything(cfg.run.seed)
    prompts = _load_prompts(cfg)  # a bad prompt file fails before anything is written
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
            samples = sample_responses(policy, cfg.gen, prompts, cfg.rlhs.samples_per_prompt,
                                       cfg.run.seed)

            # 2. simulate what happens after each response (the evaluator sees it in hindsight)
            simulator_path = cfg.simulator.model or cfg.model.path
            if hindsight:
                simulator = policy if simulator_path == cfg.model.path else load_causal_lm(
                    replace(cfg.model, path=simulator_path))
                samples = simulate_outcomes(simulator, cfg.simulator, cfg.gen, samples,
                                            cfg.run.seed + cfg.rlhs.samples_per_prompt)
                del simulator
            if cfg.rlhs.evaluator == "people":
                return run, _write_studio_import(cfg, run, samples,
                                                 simulator_path if hindsight else None)

            # 3. the evaluator judges each pair, with the outcomes in view only in hindsight
            judge = build_judge(cfg, policy)
            pairs, counts = judge_pairs(judge, samples, cfg.rlhs.min_confidence)
            del policy, judge
            _release_memory()  # DPO loads the policy afresh
            if not pairs:
                raise DataError(f"rlhs: the judge kept no pair of {counts['judged']} judged "
                                f"({counts['tie']} ties, {counts['identical']} identical "
                                "responses); lower --rlhs.min_confidence or sample more "
                                "(rlhs.samples_per_prompt)")

            # 4. the preferences with their provenance, written atomically
            provenance = {"feedback": cfg.rlhs.feedback, "outcomes_shown": hindsight,
                          "judge": _judge_name(cfg),
                          "simulator": simulator_path if hindsight else None,
                          "policy": cfg.model.path, "policy_hash": _weights_hash(cfg.model.path)}
            pairs = [{**pair, **provenance} for pair in pairs]
            write_jsonl(pairs_path, pairs)
            run.log(0, {f"judge/{key}": value for key, value in counts.items()})
    finally:
        run.close()

    # 5. DPO on the judged pairs: the same trainer as rlhfkit dpo, as a sub-run
    from rlhfkit.train import dpo

    dpo_run, dpo_summary = dpo.train(dpo_config(cfg, run.path))
    model_dir = run.path / "model"
    if model_dir.exists():  # a resumed run exports again
        import shutil

        shutil.rmtree(model_dir)
    os.replace(dpo_run.path / "model", model_dir)
    judged = next((row for row in run.metrics() if row["step"] == 0), {})  # counts, written once
    summary = {"feedback": cfg.rlhs.feedback, "evaluator": _judge_name(cfg), "pairs": len(pairs),
               **{key: value for key, value in judged.items() if key.startswith("judge/")},
               "judge_confidence_mean": _mean(p["judge_probability"] for p in pairs),
               **{key: value for key, value in dpo_summary.items() if key != "model"},
               "pairs_file": str(pairs_path), "model": str(model_dir)}
    run.finish(summary)
    return run, summary


def _release_memory() -> None:
    """Free the sampling models' memory now (their reference cycles wait for a collection)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _load_prompts(cfg: Config) -> list[str]:
    from rlhfkit.data.prompts import load_prompts

    rows = load_prompts(os.path.expanduser(cfg.data.path), cfg.data.prompt_field,
                        option="--data.prompt_field")
    rows = rows[:cfg.data.max_prompts] if cfg.data.max_prompts else rows
    for number, row in enumerate(rows, start=1):
        if not isinstance(row["prompt"], str):
            raise DataError(f"{cfg.data.path}: row {number} holds a chat; rlhs takes plain-text "
                            "requests (the simulator and judge quote them): give its text")
    return [row["prompt"] for row in rows]


def sample_responses(policy: tuple[Any, Any], gen: GenCfg, prompts: list[str], samples: int,
                     seed: int) -> list[list[Sample]]:
    """``samples`` responses to each prompt; sample ``s`` of every prompt from one pass seeded
    ``seed + s`` (as the feedback studio samples, so the two reproduce each other)."""
    from rlhfkit.generation import get_backend

    backend = get_backend(gen.backend, *policy)
    per_prompt: list[list[Sample]] = [[] for _ in prompts]
    for s in range(samples):
        rollout = backend.generate(list(prompts), gen, seed + s)
        for i, text in enumerate(rollout.completions):
            per_prompt[i].append(Sample(prompts[i], text, seed + s))
    return per_prompt


def simulate_outcomes(simulator: tuple[Any, Any], sim: SimulatorCfg, gen: GenCfg,
                      samples: list[list[Sample]], seed: int) -> list[list[Sample]]:
    """Each sample with the simulator's account of what happened after it."""
    from rlhfkit.generation import get_backend

    flat = [one for group in samples for one in group]
    requests = [sim.template.format(prompt=one.prompt, response=one.response) for one in flat]
    settings = replace(gen, max_new_tokens=sim.max_new_tokens, temperature=sim.temperature)
    outcomes = iter(get_backend(gen.backend, *simulator).generate(requests, settings, seed)
                    .completions)
    return [[replace(one, outcome=next(outcomes).strip()) for one in group] for group in samples]


def build_judge(cfg: Config, policy: tuple[Any, Any]) -> Any:
    """The configured judge; a local judge that is the policy's model reuses the loaded one."""
    from rlhfkit.rewards.judge import EndpointJudge, LocalJudge

    judge = cfg.judge
    if judge.url:
        return EndpointJudge(judge.url, judge.endpoint_model, judge.api_key_env, judge.timeout,
                             judge.retries, logprobs=judge.logprobs, pair_template=judge.template)
    path = judge.model or cfg.model.path
    if path == cfg.model.path:
        return LocalJudge(*policy, name=path, pair_template=judge.template)
    return LocalJudge.load(path, cfg.model.device, pair_template=judge.template)


def judge_pairs(judge: Any, samples: list[list[Sample]],
                min_confidence: float) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every two responses of a prompt judged: (pair rows, counts of judged / tie / identical).

    A sample's outcome reaches the judge only when it has one (hindsight). The chosen response
    is the one the judge prefers; ``judge_probability`` is P(chosen is better), >= 0.5.
    """
    pairs, counts = [], {"judged": 0, "tie": 0, "identical": 0}
    for group in samples:
        for a, b in itertools.combinations(group, 2):
            if a.response == b.response:
                counts["identical"] += 1
                continue
            p_a = judge.prefer(a.prompt, a.response, b.response, a.outcome, b.outcome)
            counts["judged"] += 1
            if abs(p_a - 0.5) <= min_confidence or p_a == 0.5:
                counts["tie"] += 1
                continue
            chosen, rejected = (a, b) if p_a > 0.5 else (b, a)
            row = {"prompt": a.prompt, "chosen": chosen.response, "rejected": rejected.response,
                   "judge_probability": round(max(p_a, 1.0 - p_a), 6),
                   "chosen_seed": chosen.seed, "rejected_seed": rejected.seed}
            if a.outcome is not None:
                row.update(chosen_outcome=chosen.outcome, rejected_outcome=rejected.outcome)
            pairs.append(row)
    return pairs, counts


def dpo_config(cfg: Config, run_dir: Path) -> Any:
    """The DPO config that trains on this run's pairs file, in ``<run>/dpo``."""
    from rlhfkit import config_io
    from rlhfkit.config import FeedbackDataCfg
    from rlhfkit.errors import ConfigError
    from rlhfkit.train import dpo

    sub_run = run_dir / "dpo"
    resume = cfg.run.resume and (sub_run / "config.toml").is_file()
    built = dpo.Config(
        model=cfg.model, lora=cfg.lora, algo=cfg.algo, train=cfg.train, optim=cfg.optim,
        log=cfg.log,
        data=FeedbackDataCfg(path=str(run_dir / PAIRS_FILE), eval_fraction=cfg.data.eval_fraction),
        run=replace(cfg.run, output_dir=str(sub_run), resume=resume, overwrite=not resume))
    problems = config_io.validate(built)
    if problems:
        raise ConfigError([f"rlhs's DPO stage: {problem}" for problem in problems])
    return built


def _write_studio_import(cfg: Config, run: Any, samples: list[list[Sample]],
                         simulator: str | None) -> dict[str, Any]:
    """The outputs, with their outcomes, as a file ``rlhfkit label init --import`` reads; each
    outcome lands in the output's generation settings, which the labelling page shows."""
    from rlhfkit import config_io
    from rlhfkit.data.files import write_jsonl

    path = run.path / IMPORT_FILE
    model_hash = _weights_hash(cfg.model.path)
    settings = config_io.to_dict(cfg.gen)
    rows = []
    for group in samples:
        for one in group:
            row = {"prompt": one.prompt, "completion": one.response, "model": cfg.model.path,
                   "model_hash": model_hash, "seed": one.seed, "generation": settings}
            if one.outcome is not None:
                row.update(simulated_outcome=one.outcome, simulator=simulator)
            rows.append(row)
    write_jsonl(path, rows)
    campaign = f"rlhs-{run.path.name}"
    pairs_file = run.path / "people-pairs.jsonl"
    summary = {"feedback": cfg.rlhs.feedback, "evaluator": "people", "outputs": len(rows),
               "prompts": len(samples), "import_file": str(path),
               "next": [f"rlhfkit label init --campaign {campaign} --import {path}",
                        f"rlhfkit label serve --campaign {campaign}",
                        f"rlhfkit label export --campaign {campaign} --as pairs --output "
                        f"{pairs_file}",
                        f"rlhfkit dpo --model {cfg.model.path} --data {pairs_file}"]}
    run.finish(summary)
    return summary


def _judge_name(cfg: Config) -> str:
    if cfg.rlhs.evaluator == "people":
        return "people"
    if cfg.judge.url:
        return f"{cfg.judge.endpoint_model}@{cfg.judge.url}"
    return cfg.judge.model or cfg.model.path


def _weights_hash(model: str) -> str:
    from rlhfkit.feedback.campaign import weights_hash

    return weights_hash(model)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else float("nan")
