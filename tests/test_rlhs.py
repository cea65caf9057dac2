"""RLHS: sample, simulate, judge in hindsight (or foresight, or by people), DPO; on tiny models."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from rlhfkit import cli, config_io
from rlhfkit.config import GenCfg, LogCfg, ModelCfg, RunCfg
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.rewards.judge import Judge
from rlhfkit.train.hindsight import rlhs
from rlhfkit.train.offline import TrainCfg
from rlhfkit.train.ppo import AlgoCfg as PpoAlgoCfg
from rlhfkit.train.reward import RewardCfg
from test_judge import save_judge_capable_tiny

# the tiny model's context is 128 tokens: short templates keep every prompt inside it
SIMULATION = "{prompt}{response} Then"
JUDGING = "{prompt}|{response_a}|{response_b}|A or B?"
PROMPTS = "What is two\nPlease write a\nShe said the\nThe movie was\n"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random model (policy, simulator and judge) that can spell A and B."""
    return save_judge_capable_tiny(tmp_path_factory.mktemp("tiny-rlhs"))


@pytest.fixture
def cfg(tiny_dir, tmp_path):
    prompts = tmp_path / "advice.txt"
    prompts.write_text(PROMPTS)
    return rlhs.Config(
        model=ModelCfg(path=str(tiny_dir), device="cpu"),
        data=rlhs.PromptsCfg(prompts=str(prompts), eval_fraction=0.0),
        gen=GenCfg(max_new_tokens=4, batch_size=4),
        simulator=rlhs.SimulatorCfg(template=SIMULATION, max_new_tokens=4),
        judge=rlhs.JudgeCfg(template=JUDGING),
        train=TrainCfg(batch_size=2, max_length=128),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(tmp_path / "run")),
    )


def rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


class RecordingJudge(Judge):
    """Prefers the longer response (by what it is shown, outcome included); records prompts."""

    name = "recording"

    def __init__(self):
        super().__init__(pair_template=JUDGING)
        self.seen = []

    def choice_probabilities(self, texts, first, second):
        self.seen += texts
        return [0.9 if len(text.split("|")[1]) > len(text.split("|")[2]) else 0.1 for text in texts]


def test_end_to_end_from_the_command_line(cfg, tmp_path):
    """Tiny policy, simulator and judge: a pairs file with provenance and a trained model."""
    code = cli.main(
        [
            "hindsight",
            "--method",
            "rlhs",
            "--model",
            cfg.model.path,
            "--model.device",
            "cpu",
            "--data",
            cfg.data.prompts,
            "--data.eval_fraction",
            "0",
            "--gen.max_new_tokens",
            "4",
            "--simulator.template",
            SIMULATION,
            "--simulator.max_new_tokens",
            "4",
            "--judge.template",
            JUDGING,
            "--train.batch_size",
            "2",
            "--train.max_length",
            "128",
            "--log.tensorboard",
            "false",
            "--log.progress",
            "false",
            "--run.output_dir",
            cfg.run.output_dir,
        ]
    )
    assert code == 0
    run = tmp_path / "run"
    pairs = rows(run / "pairs.jsonl")
    assert 1 <= len(pairs) <= 4  # one pair per prompt, exact ties and identical samples dropped
    for pair in pairs:
        assert pair["chosen"] != pair["rejected"] and 0.5 < pair["judge_probability"] <= 1
        assert pair["feedback"] == "hindsight" and pair["outcomes_shown"] is True
        assert pair["judge"] == pair["simulator"] == pair["policy"] == cfg.model.path
        assert len(pair["policy_hash"]) == 64
        assert isinstance(pair["chosen_outcome"], str) and "rejected_outcome" in pair
    assert (run / "model" / "config.json").is_file()
    assert (run / "dpo" / "metrics.jsonl").is_file()  # the DPO stage, a sub-run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == str(run / "model") and summary["pairs"] == len(pairs)
    assert summary["steps"] >= 1
    assert summary["judge/judged"] == len(pairs) + summary["judge/tie"]
    assert 'method = "rlhs"' in (run / "config.toml").read_text()


def test_outcomes_reach_the_judge_only_in_hindsight(cfg, monkeypatch):
    judges = []

    def recording(cfg, policy):
        judges.append(RecordingJudge())
        return judges[-1]

    monkeypatch.setattr(rlhs, "build_judge", recording)
    summary = rlhs.train(cfg).summary
    hindsight_pairs = rows(Path(summary["pairs_file"]))
    foresight_cfg = dataclasses.replace(
        cfg,
        rlhs=rlhs.RlhsCfg(feedback="foresight"),
        run=dataclasses.replace(cfg.run, output_dir=cfg.run.output_dir + "-foresight"),
    )
    summary = rlhs.train(foresight_cfg).summary
    foresight_pairs = rows(Path(summary["pairs_file"]))

    hindsight, foresight = judges
    for pair in hindsight_pairs:
        assert any(
            pair["chosen_outcome"] in text and "What happened next" in text
            for text in hindsight.seen
        )
    assert all("What happened next" in text for text in hindsight.seen)
    assert not any("What happened next" in text for text in foresight.seen)
    for pair in foresight_pairs:
        assert pair["outcomes_shown"] is False and pair["simulator"] is None
        assert "chosen_outcome" not in pair

    # the same seed samples the same responses: foresight judges exactly hindsight's pairs
    def shown_responses(text):
        return [part.split("\n\nWhat happened next:")[0] for part in text.split("|")[:3]]

    assert [shown_responses(text) for text in hindsight.seen] == [
        shown_responses(text) for text in foresight.seen
    ]
    # the judge prefers the longer text it is shown: in foresight, the longer response
    assert all(len(p["chosen"]) > len(p["rejected"]) for p in foresight_pairs)


def test_judge_pairs_orients_drops_ties_and_counts():
    class Scripted:
        def __init__(self, answers):
            self.answers = iter(answers)

        def prefer(self, prompt, a, b, outcome_a=None, outcome_b=None):
            return next(self.answers)

    group = [
        rlhs.Sample("q", text, seed, finished=seed != 1)  # "y" was cut off
        for seed, text in enumerate(["x", "y", "x"])
    ]
    pairs, counts = rlhs.judge_pairs(Scripted([0.2, 0.5]), [group], 0.0)
    # (x, y): 0.2, so y is chosen; (x, x): identical, not judged; (y, x): an exact tie
    assert counts == {"judged": 2, "tie": 1, "identical": 1}
    assert pairs == [
        {
            "prompt": "q",
            "chosen": "y",
            "rejected": "x",
            "judge_probability": 0.8,
            "chosen_seed": 1,
            "rejected_seed": 0,
            "chosen_finished": False,
            "rejected_finished": True,
        }
    ]
    pairs, counts = rlhs.judge_pairs(Scripted([0.7, 0.9]), [group], 0.25)
    assert [p["judge_probability"] for p in pairs] == [0.9] and counts["tie"] == 1


def test_people_write_an_import_file_for_the_studio(cfg, tmp_path, capsys, monkeypatch):
    from rlhfkit.feedback.campaign import import_plans

    rlhs.main(dataclasses.replace(cfg, rlhs=rlhs.RlhsCfg(evaluator="people")))
    run = tmp_path / "run"
    assert not (run / "model").exists() and not (run / "pairs.jsonl").exists()
    import_file = run / "studio-import.jsonl"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["import_file"] == str(import_file) and summary["outputs"] == 8
    printed = capsys.readouterr().out
    assert f"  rlhfkit label init --campaign rlhs-run --import {import_file}\n" in printed
    assert "  rlhfkit label export --campaign rlhs-run --as pairs" in printed
    # the printed command makes the campaign, every output with its outcome
    monkeypatch.chdir(tmp_path)
    init = next(line.split() for line in printed.splitlines() if "label init" in line)
    assert cli.main(init[1:]) == 0
    from rlhfkit.feedback.store import open_store

    with open_store(tmp_path / "campaigns" / "rlhs-run" / "feedback.db") as store:
        outputs = [output for _, _, shown in store.campaign_outputs("rlhs-run") for output in shown]
    assert len(outputs) == 8 and all("simulated_outcome" in o.generation for o in outputs)
    plans = import_plans(str(import_file))
    assert [len(plan.outputs) for plan in plans] == [2, 2, 2, 2]
    assert all(plan.pairs == [(0, 1)] for plan in plans)
    for plan in plans:
        for output in plan.outputs:
            assert isinstance(output.generation["simulated_outcome"], str)
            assert output.generation["simulator"] == cfg.model.path
            assert output.model == cfg.model.path and len(output.model_hash) == 64


def test_resume_reuses_the_pairs_and_exports_again(cfg, monkeypatch):
    run = rlhs.train(cfg).run
    pairs_before = (run.path / "pairs.jsonl").read_text()

    def must_not_sample(*args, **kwargs):
        raise AssertionError("a resumed run samples again")

    monkeypatch.setattr(rlhs, "sample_responses", must_not_sample)
    resumed = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=True))
    result = rlhs.train(resumed)
    run, summary = result.run, result.summary
    assert (run.path / "pairs.jsonl").read_text() == pairs_before
    assert (run.path / "model" / "config.json").is_file() and summary["pairs"] >= 1
    assert summary["judge/judged"] >= summary["pairs"]  # the counts survive the resume


def problems(cfg, **changes):
    groups = {}
    for key, value in changes.items():
        group, _, name = key.partition("__")
        groups[group] = dataclasses.replace(groups.get(group, getattr(cfg, group)), **{name: value})
    return "\n".join(config_io.validate(dataclasses.replace(cfg, **groups)))


def test_bad_settings_are_named(cfg):
    assert "method = 'coh': this config is for rlhs" in problems(
        dataclasses.replace(cfg, method="coh")
    )
    assert "algo.loss = 'kto'" in problems(cfg, algo__loss="kto")
    assert "gen.temperature = 0" in problems(cfg, gen__temperature=0.0)
    assert "rlhs.min_confidence = 0.5: must be below 0.5" in problems(cfg, rlhs__min_confidence=0.5)
    assert "rlhs.samples_per_prompt = 1: must be at least 2" in problems(
        cfg, rlhs__samples_per_prompt=1
    )
    assert "data.prompts = '': is required" in problems(cfg, data__prompts="")
    assert "data.prompts = 'no/such.jsonl'" in problems(cfg, data__prompts="no/such.jsonl")
    assert "judge.endpoint_model = '': is required with judge.url" in problems(
        cfg, judge__url="http://localhost:8000/v1"
    )
    assert "judge.url = 'localhost:8000': is not an http(s) URL" in problems(
        cfg, judge__url="localhost:8000", judge__endpoint_model="m"
    )
    assert "lacks {response}" in problems(cfg, simulator__template="{prompt} then")
    assert "judge.model = 'no/such/model'" in problems(cfg, judge__model="no/such/model")
    with pytest.raises(ConfigError, match="rlhs.feedback = 'sometimes'"):
        config_io.load(rlhs.Config, ["--data", cfg.data.prompts, "--rlhs.feedback", "sometimes"])


def test_bad_data_is_a_clear_error(cfg, tmp_path):
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="row 1 holds a chat; rlhs takes plain-text"):
        rlhs.train(dataclasses.replace(cfg, data=rlhs.PromptsCfg(prompts=str(chats))))
    picky = dataclasses.replace(
        cfg,
        rlhs=rlhs.RlhsCfg(min_confidence=0.49),
        run=dataclasses.replace(cfg.run, overwrite=True),
    )
    with pytest.raises(
        DataError, match="the evaluator kept no pair of .*lower --rlhs.min_confidence"
    ):
        rlhs.train(picky)  # a random tiny judge is never that sure


# --- rlhs.optimiser = ppo: a reward model on the judged pairs, then PPO against it ----------------


def ppo_cfg(cfg):
    """PPO on the tiny model: a 2-step reward model on its own backbone, then 2 PPO steps."""
    return dataclasses.replace(
        cfg,
        rlhs=rlhs.RlhsCfg(optimiser="ppo"),
        reward_model=rlhs.RewardModelCfg(
            model=cfg.model.path,
            rm=RewardCfg(max_length=32),
            train=TrainCfg(max_steps=2, batch_size=2, eval_batch_size=4),
        ),
        ppo=rlhs.PpoStageCfg(steps=2, algo=PpoAlgoCfg(prompts_per_step=4, micro_batch_size=2)),
        run=dataclasses.replace(cfg.run, checkpoint_every=1),
    )


def test_ppo_trains_a_reward_model_then_ppo_and_resumes(cfg, monkeypatch):
    result = rlhs.train(ppo_cfg(cfg))
    run, summary = result.run, result.summary
    pairs = rows(run.path / "pairs.jsonl")
    assert pairs and summary["pairs"] == len(pairs) and summary["optimiser"] == "ppo"
    # the reward model: rlhfkit reward's trainer on the pairs file, a sub-run
    reward_run = run.path / "reward"
    assert (reward_run / "model").is_dir() and summary["reward_model"] == str(reward_run / "model")
    assert f'path = "{run.path / "pairs.jsonl"}"' in (reward_run / "config.toml").read_text()
    assert summary["reward_model/steps"] == 2
    # PPO: rlhfkit ppo's trainer against that reward model, on the same prompts
    ppo_run = run.path / "ppo"
    ppo_config = (ppo_run / "config.toml").read_text()
    assert f'reward = "rm:{reward_run / "model"}"' in ppo_config
    assert f'prompts = "{cfg.data.prompts}"' in ppo_config
    assert [row["step"] for row in rows(ppo_run / "metrics.jsonl")] == [1, 2]
    assert summary["steps"] == 2 and summary["reward_last"] is not None
    assert (run.path / "model" / "config.json").is_file() and not (run.path / "dpo").exists()
    assert summary["model"] == str(run.path / "model")

    # resumed: the pairs are reused, each stage resumes from its own checkpoint
    def must_not_sample(*args, **kwargs):
        raise AssertionError("a resumed run samples again")

    monkeypatch.setattr(rlhs, "sample_responses", must_not_sample)
    ppo_metrics = (ppo_run / "metrics.jsonl").read_text()
    resumed = ppo_cfg(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, resume=True)))
    assert "resume = true" in config_io.to_toml(rlhs.ppo_config(resumed, run.path))
    assert "resume = true" in config_io.to_toml(rlhs.reward_config(resumed, run.path))
    result = rlhs.train(resumed)
    run, summary = result.run, result.summary
    assert (ppo_run / "metrics.jsonl").read_text() == ppo_metrics  # finished: nothing redone
    assert (run.path / "model" / "config.json").is_file() and summary["pairs"] == len(pairs)


# --- rlhs.evaluator = reward: a registered reward judges, with the outcome in view ---------------


def test_reward_judge_scores_the_response_then_its_outcome():
    scored = []

    def letters(prompts, completions, **meta):
        scored.extend(zip(prompts, completions, meta["answer"], strict=True))
        return [float(len(text)) for text in completions]

    group = [
        rlhs.Sample("q", "short", 0, "and it ended very well"),
        rlhs.Sample("q", "a longer reply", 1, "bad"),
    ]
    judge = rlhs.RewardJudge(letters, [group], temperature=2.0, meta={"q": {"answer": 7}})
    assert scored == [("q", "short and it ended very well", 7), ("q", "a longer reply bad", 7)]
    # 28 - 18 characters = 10 points apart; P = sigmoid(10 / 2)
    assert judge.prefer("q", "short", "a longer reply", group[0].outcome, group[1].outcome) == (
        pytest.approx(1 / (1 + math.exp(-5.0)))
    )
    pairs, _ = rlhs.judge_pairs(judge, [group], 0.0)
    assert pairs[0]["chosen"] == "short" and pairs[0]["chosen_outcome"] == group[0].outcome
    # in foresight there is no outcome: the response alone is scored, and the longer one wins
    foresight = [dataclasses.replace(one, outcome=None) for one in group]
    pairs, _ = rlhs.judge_pairs(
        rlhs.RewardJudge(letters, [foresight], 2.0, {"q": {"answer": 7}}), [foresight], 0.0
    )
    assert pairs[0]["chosen"] == "a longer reply" and "chosen_outcome" not in pairs[0]


LENGTH_REWARD = (
    "def score(prompts, completions, **meta):\n    return [float(len(c)) for c in completions]\n"
)


def test_reward_evaluator_from_the_command_line(cfg, tmp_path):
    """A rule reward (characters) judges: hindsight prefers the longer response + outcome,
    foresight the longer response; pairs say which reward judged."""
    (tmp_path / "rule.py").write_text(LENGTH_REWARD)
    for feedback in ("hindsight", "foresight"):
        out = tmp_path / feedback
        code = cli.main(
            [
                "hindsight",
                "--method",
                "rlhs",
                "--model",
                cfg.model.path,
                "--model.device",
                "cpu",
                "--data",
                cfg.data.prompts,
                "--data.eval_fraction",
                "0",
                "--gen.max_new_tokens",
                "4",
                "--simulator.template",
                SIMULATION,
                "--simulator.max_new_tokens",
                "4",
                "--rlhs.evaluator",
                "reward",
                "--reward",
                f"{tmp_path / 'rule.py'}:score",
                "--rlhs.feedback",
                feedback,
                "--train.batch_size",
                "2",
                "--train.max_length",
                "128",
                "--log.tensorboard",
                "false",
                "--log.progress",
                "false",
                "--run.output_dir",
                str(out),
            ]
        )
        assert code == 0
        pairs = rows(out / "pairs.jsonl")
        assert pairs and all(p["judge"] == f"reward:{tmp_path / 'rule.py'}:score" for p in pairs)
        for p in pairs:
            if feedback == "hindsight":
                assert len(p["chosen"] + " " + p["chosen_outcome"]) > len(
                    p["rejected"] + " " + p["rejected_outcome"]
                )
            else:
                assert len(p["chosen"]) > len(p["rejected"]) and "chosen_outcome" not in p
        assert (out / "model" / "config.json").is_file()


def test_builtin_prompt_sets_are_read_as_the_online_commands_read_them(cfg):
    built = dataclasses.replace(cfg, data=rlhs.PromptsCfg(prompts="vader:movies", max_prompts=3))
    assert not config_io.validate(built)
    prompt_rows = rlhs._load_prompts(built)
    assert len(prompt_rows) == 3 and all(isinstance(r["prompt"], str) for r in prompt_rows)
    assert config_io.load(rlhs.Config, ["--data", "vader:movies"]).data.prompts == "vader:movies"


def test_bad_evaluator_and_optimiser_settings_are_named(cfg):
    assert (
        "reward = '': is required with rlhs.evaluator = reward; name the reward that judges"
        in problems(cfg, rlhs__evaluator="reward")
    )
    assert "reward = 'sentiment': judges only with rlhs.evaluator = reward, not judge" in problems(
        dataclasses.replace(cfg, reward="sentiment")
    )
    assert "reward = 'sentimnt': not registered; did you mean 'sentiment'?" in problems(
        dataclasses.replace(cfg, reward="sentimnt", rlhs=rlhs.RlhsCfg(evaluator="reward"))
    )
    assert "rlhs.optimiser = 'adam'" in "\n".join(_load_problems(cfg, "--rlhs.optimiser", "adam"))
    ppo = ppo_cfg(cfg)
    assert not problems(ppo)
    assert (
        "reward_model.rm.objective = 'ratings': needs human ratings, and RLHS's judged pairs "
        "carry none; use pairs" in problems(ppo, reward_model__rm=RewardCfg(objective="ratings"))
    )
    assert "reward_model.rm.use_margin = True: the judged pairs have no margin column" in problems(
        ppo, reward_model__rm=RewardCfg(use_margin=True)
    )
    assert (
        "ppo.algo.prompts_per_step = 3: (one completion each) is not a multiple of the minibatch"
        in (problems(ppo, ppo__algo=PpoAlgoCfg(prompts_per_step=3, micro_batch_size=2)))
    )
    assert "reward_model.model = 'no/such/model'" in problems(
        ppo, reward_model__model="no/such/model"
    )
    # DPO's kto loss is an error only when DPO trains
    assert "algo.loss" not in problems(ppo, algo__loss="kto")


def _load_problems(cfg, *args):
    with pytest.raises(ConfigError) as caught:
        config_io.load(rlhs.Config, ["--data", cfg.data.prompts, *args])
    return caught.value.problems
