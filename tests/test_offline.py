"""The offline trainers (sft, dpo/ipo/kto, reward) on a tiny random model: learning, resume, errors."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from conftest import LETTER_O_REWARD
from rlhfkit import cli, config_io
from rlhfkit.config import FeedbackDataCfg, GenCfg, LogCfg, ModelCfg, OptimCfg, RunCfg
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.train import dpo, offline, reward, sft

# A preference that depends on the prompt, so a model that ignores the prompt scores 50%.
PROMPTS = {
    "movie": ["The movie was", "I think the movie was", "Honestly, the movie was"],
    "service": ["She said the service was", "The service was", "He said the service was"],
}
LIKED = {"movie": " a delight", "service": " slow"}
DISLIKED = {"movie": " slow", "service": " a delight"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def pairs_file(tmp_path):
    return write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": p, "chosen": LIKED[kind], "rejected": DISLIKED[kind]}
            for kind, prompts in PROMPTS.items()
            for p in prompts
        ],
    )


def labeled_file(tmp_path):
    return write_jsonl(
        tmp_path / "labeled.jsonl",
        [
            {"prompt": p, "completion": text, "label": good}
            for kind, prompts in PROMPTS.items()
            for p in prompts
            for text, good in ((LIKED[kind], True), (DISLIKED[kind], False))
        ],
    )


def common(tmp_path, model_dir, data: str, steps: int, **train) -> dict:
    return dict(
        model=ModelCfg(path=str(model_dir), device="cpu"),
        data=FeedbackDataCfg(path=data, eval_path=data),
        train=offline.TrainCfg(**{"max_steps": steps, "batch_size": 6, "max_length": 64, **train}),
        optim=OptimCfg(lr=1e-2),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(tmp_path / "run"), checkpoint_every=0),
    )


def test_sft_learns_the_demonstrations(tmp_path, tiny_model_dir):
    data = write_jsonl(
        tmp_path / "demos.jsonl",
        [
            {"prompt": p, "completion": LIKED[kind]}
            for kind, prompts in PROMPTS.items()
            for p in prompts
        ]
        + [
            {
                "messages": [
                    {"role": "user", "content": "The movie was"},
                    {"role": "assistant", "content": " a delight"},
                ]
            }
        ],
    )
    result = sft.train(sft.Config(**common(tmp_path, tiny_model_dir, data, steps=30)))
    assert result.summary["eval_nll_after"] < 0.5 * result.summary["eval_nll_before"]
    assert (result.run.path / "model" / "config.json").is_file()
    losses = [row["loss"] for row in result.run.metrics() if "loss" in row]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("trainer", ["sft", "kto"])
def test_the_policy_answers_held_out_prompts_at_each_evaluation(tmp_path, tiny_model_dir, trainer):
    """With eval.reward, sft and dpo (KTO here) have the policy answer the held-out split's
    distinct prompts before training, every train.eval_every steps and at the end; the
    answers, their scores and the before/after figures land in heldout.json, the metrics and
    the summary."""
    reward = tmp_path / "reward_o.py"
    reward.write_text(LETTER_O_REWARD)
    answers = offline.SampledEvalCfg(
        reward=f"{reward}:letter_o",
        judge="length:8",
        size=3,
        gen=GenCfg(max_new_tokens=4, chat_template="off"),
    )
    if trainer == "sft":
        demos = [{"prompt": p, "completion": LIKED[k]} for k, ps in PROMPTS.items() for p in ps]
        data = write_jsonl(tmp_path / "demos.jsonl", demos)
        settings = common(tmp_path, tiny_model_dir, data, steps=4, eval_every=2)
        result = sft.train(sft.Config(**settings, eval=answers))
    else:
        settings = common(tmp_path, tiny_model_dir, labeled_file(tmp_path), steps=4, eval_every=2)
        result = dpo.train(dpo.Config(**settings, algo=dpo.AlgoCfg(loss="kto"), eval=answers))
    held_out = json.loads((result.run.path / "heldout.json").read_text())
    assert held_out["prompts"] == [p for ps in PROMPTS.values() for p in ps][:3]  # distinct
    assert [e["step"] for e in held_out["evaluations"]] == [0, 2, 4]
    assert all(len(e["completions"]) == 3 for e in held_out["evaluations"])
    logged = [row for row in result.run.metrics() if "eval/reward" in row]
    assert [row["step"] for row in logged] == [0, 2, 4]
    assert all("eval/judge" in row for row in logged)
    summary = result.summary["eval"]
    assert summary["steps"] == [0, 4] and {"reward", "judge"} <= set(summary["before"])
    assert summary["before"]["reward"]["mean"] == pytest.approx(logged[0]["eval/reward"])


@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_pair_losses_learn_a_prompt_dependent_preference(tmp_path, tiny_model_dir, loss):
    cfg = dpo.Config(
        **common(tmp_path, tiny_model_dir, pairs_file(tmp_path), steps=25),
        algo=dpo.AlgoCfg(loss=loss, beta=0.5),
    )
    summary = dpo.train(cfg).summary
    # the starting model is its own reference: every implicit reward starts at exactly 0
    assert summary["eval/margin_before"] == pytest.approx(0.0, abs=1e-5)
    assert summary["eval/accuracy_after"] == 1.0
    assert summary["eval/margin_after"] > 0.5


def test_kto_separates_desirable_from_undesirable(tmp_path, tiny_model_dir):
    cfg = dpo.Config(
        **common(tmp_path, tiny_model_dir, labeled_file(tmp_path), steps=25),
        algo=dpo.AlgoCfg(loss="kto", beta=0.5),
    )
    summary = dpo.train(cfg).summary
    gap_before = summary["eval/desirable_reward_before"] - summary["eval/undesirable_reward_before"]
    gap_after = summary["eval/desirable_reward_after"] - summary["eval/undesirable_reward_after"]
    assert gap_before == pytest.approx(0.0, abs=1e-5)
    assert gap_after > 0.5


def test_reward_model_learns_pairs_and_plugs_in_as_a_reward(tmp_path, tiny_model_dir):
    from rlhfkit.rewards import compute_rewards, load_reward

    words = ["delight", "fine", "good", "joy"]
    rows = [
        {
            "prompt": f"Review {i}:",
            "chosen": f" a {words[i % 4]} of a movie",
            "rejected": f" a {['boring', 'slow', 'bad', 'dull'][i % 4]} movie",
        }
        for i in range(24)
    ]
    data = write_jsonl(tmp_path / "rm.jsonl", rows)
    cfg = reward.Config(
        **common(tmp_path, tiny_model_dir, data, steps=30), rm=reward.RewardCfg(max_length=32)
    )
    result = reward.train(cfg)
    assert result.summary["validation_accuracy"] >= 0.9
    spec = f"rm:{result.run.path / 'model'}"
    scores = compute_rewards(
        load_reward(spec), ["Review 1:", "Review 1:"], [" a joy of a movie", " a dull movie"]
    )
    assert scores[0] > scores[1]


def test_rating_objective_regresses_ratings(tmp_path, tiny_model_dir):
    rows = [
        {"prompt": "", "completion": text, "rating": rating}
        for text, rating in [
            ("a delight", 3.0),
            ("good movie", 2.0),
            ("slow", -2.0),
            ("boring second half", -3.0),
        ]
        * 3
    ]
    data = write_jsonl(tmp_path / "ratings.jsonl", rows)
    cfg = reward.Config(
        **common(tmp_path, tiny_model_dir, data, steps=40),
        rm=reward.RewardCfg(objective="ratings", max_length=32),
    )
    result = reward.train(cfg)
    losses = [row["loss"] for row in result.run.metrics() if "loss" in row]
    assert losses[-1] < 0.2 * losses[0]
    assert result.summary["validation_accuracy"] == 1.0


def test_resume_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, monkeypatch):
    from rlhfkit.losses import preference

    data = pairs_file(tmp_path)
    base = dpo.Config(
        **common(tmp_path, tiny_model_dir, data, steps=6, batch_size=2), algo=dpo.AlgoCfg(beta=0.5)
    )
    base = replace(base, run=replace(base.run, checkpoint_every=3))
    whole = dpo.train(replace(base, run=replace(base.run, output_dir=str(tmp_path / "whole"))))

    calls, real = [], preference.dpo_loss

    def interrupted_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5 + 1:  # eval before training, then 4 training steps: Ctrl-C in step 5
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    parts = replace(base, run=replace(base.run, output_dir=str(tmp_path / "parts")))
    monkeypatch.setattr(preference, "dpo_loss", interrupted_loss)
    with pytest.raises(KeyboardInterrupt):
        dpo.train(parts)
    monkeypatch.setattr(preference, "dpo_loss", real)
    assert (tmp_path / "parts" / "checkpoints" / "latest").read_text().strip() == "step-000003"
    resumed = dpo.train(replace(parts, run=replace(parts.run, resume=True))).run
    assert _comparable(resumed.metrics()) == _comparable(whole.run.metrics())


def _comparable(rows):
    return [{k: round(v, 5) for k, v in row.items() if k != "time"} for row in rows]


def test_batch_order_is_seeded_grouped_and_resumable():
    lengths = list(range(100))
    order = offline.BatchOrder(lengths, batch_size=4, seed=1, group_by_length=True)
    first_epoch = [order.next() for _ in range(25)]
    assert sorted(i for batch in first_epoch for i in batch) == lengths  # each example once
    assert all(max(b) - min(b) < 40 for b in first_epoch)  # grouped: similar lengths together
    state = order.state_dict()
    after = [order.next() for _ in range(3)]
    again = offline.BatchOrder(lengths, batch_size=4, seed=1, group_by_length=True)
    again.load_state_dict(state)
    assert [again.next() for _ in range(3)] == after
    other = offline.BatchOrder(lengths, batch_size=4, seed=2, group_by_length=True)
    assert [other.next() for _ in range(25)] != first_epoch


def test_cli_runs_dpo_and_reports_bad_settings(tmp_path, tiny_model_dir, capsys):
    data = pairs_file(tmp_path)
    args = [
        "--model",
        str(tiny_model_dir),
        "--model.device",
        "cpu",
        "--data",
        data,
        "--train.max_steps",
        "2",
        "--train.batch_size",
        "4",
        "--run.output_dir",
        str(tmp_path / "cli"),
        "--log.progress",
        "false",
    ]
    assert cli.main(["dpo", *args]) == 0
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["steps"] == 2
    assert cli.main(["dpo", *args[:-4], "--algo.label_smoothing", "0.7"]) == 2
    assert "algo.label_smoothing = 0.7: must be below 0.5" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="applies to the dpo loss only"):
        config_io.load(
            dpo.Config, ["--algo.loss", "ipo", "--algo.label_smoothing", "0.1", "--data", data]
        )


def test_dpo_with_lora_trains_adapters_and_exports_a_plain_model(tmp_path, tiny_model_dir):
    from rlhfkit.config import LoraCfg

    cfg = dpo.Config(
        **common(tmp_path, tiny_model_dir, pairs_file(tmp_path), steps=15),
        lora=LoraCfg(rank=4, alpha=8.0),
        algo=dpo.AlgoCfg(beta=0.5),
    )
    result = dpo.train(cfg)
    assert result.summary["eval/accuracy_after"] == 1.0
    exported = json.loads((result.run.path / "model" / "config.json").read_text())
    assert exported["model_type"] == "llama"  # merged: a plain model, no adapter files
    assert not (result.run.path / "model" / "adapter_config.json").exists()


def test_missing_column_is_a_clear_error(tmp_path, tiny_model_dir):
    from rlhfkit.errors import DataError

    data = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"prompt": "The movie was", "answer_a": " fine", "rejected": " slow"}] * 4,
    )
    cfg = dpo.Config(**common(tmp_path, tiny_model_dir, data, steps=2))
    with pytest.raises(DataError, match="chosen_field"):
        dpo.train(cfg)
    mapped = replace(cfg, data=replace(cfg.data, chosen_field="answer_a"))
    summary = dpo.train(replace(mapped, run=replace(mapped.run, overwrite=True))).summary
    assert summary["steps"] == 2


@pytest.mark.slow
def test_reward_model_on_a_few_hundred_human_rated_pairs(tmp_path):
    """MiniLM + head on 400 pairs of real movie snippets, judged on the fixed test split."""
    cfg = reward.Config(
        data=FeedbackDataCfg(path="vader:movies", max_rows=400),
        train=offline.TrainCfg(max_steps=50, batch_size=16, eval_batch_size=64, max_eval=200),
        optim=OptimCfg(lr=5e-5, warmup_steps=5, schedule="linear"),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(tmp_path / "rm"), checkpoint_every=0),
    )
    summary = reward.train(cfg).summary
    assert summary["train_examples"] == 400
    assert summary["test_accuracy"] > 0.70, summary
    assert 0.9 < summary["test_human_single_rater"] < 1.0  # the human ceiling is reported too


@pytest.mark.parametrize("module", [sft, dpo, reward], ids=["sft", "dpo", "reward"])
def test_balance_on_data_without_classes_is_refused(tmp_path, module):
    data = pairs_file(tmp_path)
    with pytest.raises(ConfigError, match="data.balance = 'inverse-frequency': weighs ratings"):
        config_io.load(module.Config, ["--data", data, "--data.balance", "inverse-frequency"])
    kto = config_io.load(
        dpo.Config,
        [
            "--data",
            labeled_file(tmp_path),
            "--algo.loss",
            "kto",
            "--data.balance",
            "inverse-frequency",
        ],
    )
    assert kto.data.balance == "inverse-frequency"  # labels have classes: accepted


def test_a_cut_off_sample_gets_no_eos_to_learn():
    from conftest import build_tiny_tokenizer
    from rlhfkit.data import sequences

    tokenizer = build_tiny_tokenizer()
    ended = sequences.encode(tokenizer, "The film", " was good", chat=False, max_length=64)
    cut = sequences.encode(
        tokenizer, "The film", " was good", chat=False, max_length=64, ends=False
    )
    assert ended.ids[-1] == tokenizer.eos_token_id and ended.ids[:-1] == cut.ids
    assert cut.ids[-1] != tokenizer.eos_token_id and cut.completion_start == ended.completion_start


def test_sft_learns_no_eos_after_a_cut_off_demonstration(tmp_path):
    from rlhfkit.data.feedback import load_demonstrations

    data = tmp_path / "demos.jsonl"
    data.write_text(
        '{"prompt": "a", "completion": "b", "finished": false}\n'
        '{"prompt": "a", "completion": "c"}\n'
    )
    rows = load_demonstrations(FeedbackDataCfg(path=str(data), eval_fraction=0), "train")
    assert [row.finished for row in rows] == [False, True]
    data.write_text('{"prompt": "a", "completion": "b", "finished": "no"}\n')
    with pytest.raises(DataError, match="non-boolean 'finished'.*give true, or false"):
        load_demonstrations(FeedbackDataCfg(path=str(data), eval_fraction=0), "train")


def test_pairs_carry_whether_each_completion_was_cut_off(tmp_path):
    from rlhfkit.data.feedback import load_pairs

    data = tmp_path / "pairs.jsonl"
    data.write_text(
        '{"prompt": "a", "chosen": "b", "rejected": "c", "rejected_finished": false}\n'
        '{"prompt": "a", "chosen": "d", "rejected": "e"}\n'
    )
    pairs = load_pairs(FeedbackDataCfg(path=str(data), eval_fraction=0), "train")
    assert [(p.chosen_finished, p.rejected_finished) for p in pairs] == [
        (True, False),
        (True, True),
    ]


@pytest.mark.parametrize(("loss", "beta"), [("orpo", 0.5), ("simpo", 2.0), ("cpo", 0.5)])
def test_reference_free_losses_learn_without_a_reference_pass(
    tmp_path, tiny_model_dir, monkeypatch, loss, beta
):
    import rlhfkit.progress

    tasks, real_progress = [], rlhfkit.progress.progress

    def recorded(description, *args, **kwargs):
        tasks.append(description)
        return real_progress(description, *args, **kwargs)

    monkeypatch.setattr(rlhfkit.progress, "progress", recorded)
    cfg = dpo.Config(
        **common(tmp_path, tiny_model_dir, pairs_file(tmp_path), steps=25),
        algo=dpo.AlgoCfg(loss=loss, beta=beta),
    )
    result = dpo.train(cfg)
    summary = result.summary
    assert "reference log-probs" not in tasks  # the starting model never scored the data
    assert result.reference is None
    assert summary["eval/accuracy_after"] == 1.0, summary
    assert summary["eval/margin_after"] > summary["eval/margin_before"] + 0.5, summary


def test_simpos_margin_with_another_loss_is_refused(tmp_path):
    data = pairs_file(tmp_path)
    with pytest.raises(ConfigError, match="algo.gamma = 1.0: is simpo's target margin"):
        config_io.load(dpo.Config, ["--data", data, "--algo.gamma", "1.0"])
    simpo = config_io.load(
        dpo.Config, ["--data", data, "--algo.loss", "simpo", "--algo.gamma", "1.0"]
    )
    assert simpo.algo.gamma == 1.0
