"""RLHS's evaluators: who judges each pair of responses, and with what in view.

- ``judge``: an LLM judge (``rlhfkit.rewards.judge``), a local model or an OpenAI-compatible
  endpoint, asked in both orders;
- ``reward``: a registered reward scores each response, in hindsight the response followed by
  its simulated outcome (``response + " " + outcome``: how things turned out), in foresight the
  response alone. The pair's preference is Bradley-Terry in the score difference,
  P(A better) = sigmoid((s_A - s_B) / rlhs.reward_temperature), so ``rlhs.min_confidence``
  drops pairs the reward barely separates, as it does for a judge;
- ``people``: the responses and outcomes are written as a feedback-studio import file.

Kept apart from ``rlhs.py`` (the run's steps and stages) so that file stays one loop read top
to bottom; this one says how a verdict is reached.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rlhfkit.config import (
    NonNegativeInt,
    PositiveFloat,
    Problem,
)
from rlhfkit.rewards.judge import DEFAULT_API_KEY_ENV, PAIR_TEMPLATE

IMPORT_FILE = "studio-import.jsonl"


@dataclass(frozen=True)
class Sample:
    """One response to one prompt, with what the simulator says happened after it."""

    prompt: str
    response: str
    seed: int
    outcome: str | None = None
    finished: bool = True  # False: cut off by max_new_tokens (DPO then learns no EOS after it)


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
        yield from model_problem("model", self.model)
        yield from template_problem(
            "template", self.template, ("prompt", "response_a", "response_b")
        )
        if self.url and not self.url.startswith(("http://", "https://")):
            yield Problem(
                "url",
                self.url,
                "is not an http(s) URL; give the server's base URL, "
                "such as http://localhost:8000/v1",
            )
        if self.url and not self.endpoint_model:
            yield Problem(
                "endpoint_model", "", "is required with judge.url; name the model the server runs"
            )


def model_problem(name: str, value: str) -> Iterable[Problem]:
    from rlhfkit.config import model_problem

    message = model_problem(value) if value else None
    if message:
        yield Problem(name, value, message + "; or leave it empty for the policy's model")


def template_problem(name: str, template: str, fields: tuple[str, ...]) -> Iterable[Problem]:
    from rlhfkit.rewards.judge import template_problem as problem_of

    if problem := problem_of(template, fields):
        yield Problem(name, template, problem)


def build_judge(cfg: Any, policy: tuple[Any, Any]) -> Any:
    """The configured LLM judge; a local judge that is the policy's model reuses the loaded one."""
    from rlhfkit.rewards.judge import EndpointJudge, LocalJudge

    judge = cfg.judge
    if judge.url:
        return EndpointJudge(
            judge.url,
            judge.endpoint_model,
            judge.api_key_env,
            judge.timeout,
            judge.retries,
            logprobs=judge.logprobs,
            pair_template=judge.template,
        )
    path = judge.model or cfg.model.path
    if path == cfg.model.path:
        return LocalJudge(*policy, name=path, pair_template=judge.template)
    return LocalJudge.load(path, cfg.model.device, pair_template=judge.template)


def evaluated_text(sample: Sample) -> str:
    """What a reward evaluator scores: the response, then (in hindsight) how things turned out."""
    return sample.response if sample.outcome is None else f"{sample.response} {sample.outcome}"


class RewardJudge:
    """A registered reward as the evaluator: P(A better) = sigmoid((s_A - s_B) / temperature).

    Every sample is scored once, in one batch, when the judge is made; ``prefer`` then reads
    two scores. ``meta`` holds each prompt's extra columns (a reasoning-gym answer, say), which
    the reward receives as it does in the online commands.
    """

    def __init__(
        self,
        reward: Any,
        samples: list[list[Sample]],
        temperature: float,
        meta: dict[str, dict[str, Any]] | None = None,
    ):
        from rlhfkit.rewards import compute_rewards

        flat = [one for group in samples for one in group]
        meta = meta or {}
        keys = sorted({key for one in flat for key in meta.get(one.prompt, {})})
        columns = {key: [meta.get(one.prompt, {}).get(key) for one in flat] for key in keys}
        scores = (
            compute_rewards(
                reward,
                [one.prompt for one in flat],
                [evaluated_text(one) for one in flat],
                **columns,
            )
            if flat
            else []
        )
        self.scores = {
            (one.prompt, one.response, one.outcome): score
            for one, score in zip(flat, scores, strict=True)
        }
        self.temperature = temperature

    def prefer(
        self,
        prompt: str,
        response_a: str,
        response_b: str,
        outcome_a: str | None = None,
        outcome_b: str | None = None,
    ) -> float:
        gap = (
            self.scores[(prompt, response_a, outcome_a)]
            - self.scores[(prompt, response_b, outcome_b)]
        ) / self.temperature
        return 1.0 / (1.0 + math.exp(-max(min(gap, 50.0), -50.0)))  # exp stays finite


def judge_pairs(
    judge: Any, samples: list[list[Sample]], min_confidence: float
) -> tuple[list[dict[str, Any]], dict[str, int]]:
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
            row = {
                "prompt": a.prompt,
                "chosen": chosen.response,
                "rejected": rejected.response,
                "judge_probability": round(max(p_a, 1.0 - p_a), 6),
                "chosen_seed": chosen.seed,
                "rejected_seed": rejected.seed,
                "chosen_finished": chosen.finished,
                "rejected_finished": rejected.finished,
            }
            if a.outcome is not None:
                row.update(chosen_outcome=chosen.outcome, rejected_outcome=rejected.outcome)
            pairs.append(row)
    return pairs, counts


def judge_name(cfg: Any) -> str:
    """Who judged, for the pairs' provenance and the summary."""
    if cfg.rlhs.evaluator == "people":
        return "people"
    if cfg.rlhs.evaluator == "reward":
        return f"reward:{cfg.reward}"
    if cfg.judge.url:
        return f"{cfg.judge.endpoint_model}@{cfg.judge.url}"
    return cfg.judge.model or cfg.model.path


def write_studio_import(
    cfg: Any, run: Any, samples: list[list[Sample]], simulator: str | None
) -> dict[str, Any]:
    """The outputs, with their outcomes, as a file ``rlhfkit label init --import`` reads; each
    outcome lands in the output's generation settings, which the labelling page shows."""
    from rlhfkit import config_io
    from rlhfkit.data.files import write_jsonl

    path = run.path / IMPORT_FILE
    model_hash = weights_hash(cfg.model.path)
    settings = config_io.to_dict(cfg.gen)
    rows = []
    for group in samples:
        for one in group:
            row = {
                "prompt": one.prompt,
                "completion": one.response,
                "model": cfg.model.path,
                "model_hash": model_hash,
                "seed": one.seed,
                "generation": settings,
            }
            if one.outcome is not None:
                row.update(simulated_outcome=one.outcome, simulator=simulator)
            rows.append(row)
    write_jsonl(path, rows)
    campaign = f"rlhs-{run.path.name}"
    pairs_file = run.path / "people-pairs.jsonl"
    if cfg.rlhs.optimiser == "ppo":  # as rlhs's own PPO stages: a reward model, then PPO on it
        reward_dir = run.path / "people-reward"
        train = [
            f"rlhfkit reward --model {cfg.reward_model.model} --data {pairs_file} "
            f"--run.output_dir {reward_dir}",
            f"rlhfkit ppo --model {cfg.model.path} --reward rm:{reward_dir}/model "
            f"--data.prompts {cfg.data.prompts}",
        ]
    else:
        train = [f"rlhfkit dpo --model {cfg.model.path} --data {pairs_file}"]
    summary = {
        "feedback": cfg.rlhs.feedback,
        "evaluator": "people",
        "outputs": len(rows),
        "prompts": len(samples),
        "import_file": str(path),
        "next": [
            f"rlhfkit label init --campaign {campaign} --import {path}",
            f"rlhfkit label serve --campaign {campaign}",
            f"rlhfkit label export --campaign {campaign} --as pairs --output {pairs_file}",
            *train,
        ],
    }
    run.finish(summary)
    return summary


def weights_hash(model: str) -> str:
    from rlhfkit.feedback.campaign import weights_hash as of_model

    return of_model(model)
