"""Held-out evaluation: diversity and intervals by hand, `rlhfkit eval` end to end on two tiny
models with a scripted judge server, and the held-out evaluation inside the training loops."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import LETTER_O_REWARD, build_tiny_llama, build_tiny_tokenizer, send_json
from rlhfkit import cli
from rlhfkit.config import GenCfg, LogCfg, ModelCfg, OptimCfg, PromptDataCfg, RunCfg
from rlhfkit.eval import heldout
from rlhfkit.eval.diversity import (
    distinct_n,
    distinct_n_pseudo_values,
    self_bleu,
    sentence_bleu,
)
from rlhfkit.rewards.judge import Judge

# --- diversity and intervals, by hand ------------------------------------------------------------


def test_distinct_n_and_its_jackknife_by_hand():
    texts = ["a b a b", "a c"]
    assert distinct_n(texts, 1) == 3 / 6  # a, b, c among a b a b a c
    assert distinct_n(texts, 2) == 3 / 4  # (a b), (b a), (a c) among 4 bigrams
    # leave "a b a b" out: a c -> 2/2; leave "a c" out: a b a b -> 2/4; pseudo = 2·0.5 - 1·left
    assert distinct_n_pseudo_values(texts, 1) == [0.0, 0.5]
    assert distinct_n(["x"], 2) == 0.0  # no bigram at all


def test_sentence_bleu_by_hand():
    hypothesis, reference = "the cat sat on the mat".split(), "the cat sat on a mat".split()
    # precisions 5/6, 3/5, 2/4, 1/3 (the clipped to one), equal lengths: no brevity penalty
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert sentence_bleu(hypothesis, [reference]) == pytest.approx(expected)
    # shorter than the closest reference: penalty exp(1 - 6/3); 3-word hypothesis has orders 1-3
    short = "the cat sat".split()
    assert sentence_bleu(short, [reference]) == pytest.approx(math.exp(1 - 6 / 3))
    # no 4-gram matches: the zero counts as 0.1
    assert sentence_bleu("a b c d".split(), ["a b c x".split()]) == pytest.approx(
        (3 / 4 * 2 / 3 * 1 / 2 * 0.1) ** 0.25
    )


def test_self_bleu_is_each_text_against_the_others():
    texts = ["the cat sat on the mat", "the cat sat on a mat", "a dog ran far away now"]
    tokens = [t.split() for t in texts]
    expected = [sentence_bleu(tokens[i], tokens[:i] + tokens[i + 1 :]) for i in range(3)]
    assert self_bleu(texts) == pytest.approx(expected)
    assert self_bleu(["same words here", "same words here"]) == [1.0, 1.0]  # a collapsed set


def test_intervals_and_paired_differences_by_hand():
    values = [1.0, 2.0, 3.0, 4.0]
    # t_{0.975, 3} = 3.182446; sd = 1.290994; half = 3.182446 * 1.290994 / 2
    got = heldout.describe(heldout.mean_measure(values))
    assert got["mean"] == 2.5 and got["n"] == 4
    assert got["high"] - 2.5 == pytest.approx(3.182446 * statistics.stdev(values) / 2, rel=1e-6)
    base = heldout.mean_measure([0.5, 1.0, 2.5, 3.0])  # differences 0.5, 1, 0.5, 1
    diff = heldout.paired(heldout.mean_measure(values), base)
    assert diff["mean"] == pytest.approx(0.75)
    assert diff["high"] - 0.75 == pytest.approx(3.182446 * statistics.stdev([0.5, 1, 0.5, 1]) / 2)
    assert heldout.score_wins([1, 2, 3], [2, 2, 1]) == [0.0, 0.5, 1.0]


class PositionBiased(Judge):
    """Prefers the response with more o's; on a tie answers A, whatever A holds."""

    def __init__(self):
        super().__init__(pair_template="{prompt}|{response_a}|{response_b}")

    def choice_probabilities(self, texts, first, second):
        pairs = [text.split("|")[1:] for text in texts]
        return [1.0 if a.count("o") >= b.count("o") else 0.0 for a, b in pairs]


def test_win_rate_averages_both_orders():
    wins = PositionBiased().prefer_all(["p"] * 3, ["oo", "o", "x"], ["o", "oo", "y"])
    assert wins == [1.0, 0.0, 0.5]  # the tie's bias toward A cancels to 1/2


# --- `rlhfkit eval` end to end -------------------------------------------------------------------


class RuleJudgeServer:
    """An OpenAI-compatible judge: the response with more o's wins (A on a tie: a position
    bias); a response is good when it holds an o. Answers in text, without log-probs."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][0]["content"]
                if "Response A:" in text:
                    a = text.split("Response A:\n", 1)[1].split("\n\nResponse B:\n", 1)
                    b = a[1].split("\n\nWhich response", 1)[0]
                    answer = "A" if a[0].count("o") >= b.count("o") else "B"
                else:
                    response = text.split("Response:\n", 1)[1].split("\n\nDoes this", 1)[0]
                    answer = "Yes" if "o" in response else "No"
                send_json(self, 200, {"choices": [{"message": {"content": answer}}]})

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    tokenizer = build_tiny_tokenizer()
    paths = []
    for seed in (0, 1):
        path = tmp_path_factory.mktemp(f"tiny-{seed}")
        build_tiny_llama(len(tokenizer), tokenizer.eos_token_id, seed=seed).save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths.append(path)
    return paths


def test_eval_command_against_a_baseline(tmp_path, two_models, prompts_file, capsys):
    reward = tmp_path / "reward_o.py"
    reward.write_text(LETTER_O_REWARD)
    out = tmp_path / "eval.json"
    with RuleJudgeServer() as server:
        code = cli.main(
            [
                "eval",
                "--model", str(two_models[0]),
                "--model.device", "cpu",
                "--baseline", str(two_models[1]),
                "--prompts", str(prompts_file),
                "--reward", f"{reward}:letter_o",
                "--reward", "length:4",
                "--judge", f"judge-model@{server.url}",
                "--gen.max_new_tokens", "8",
                "--output", str(out),
            ]
        )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["format"] == heldout.FORMAT and len(report["samples"]) == 4
    judge = f"judge:judge-model@{server.url}"
    for sample in report["samples"]:
        mine, theirs = sample["completion"], sample["baseline"]
        o_mine, o_theirs = mine.count("o") / max(len(mine), 1), theirs.count("o") / len(theirs)
        assert sample["scores"][f"{reward}:letter_o"] == pytest.approx(o_mine)
        assert sample["wins"][f"{reward}:letter_o"] == (
            1.0 if o_mine > o_theirs else 0.5 if o_mine == o_theirs else 0.0
        )
        count, base_count = mine.count("o"), theirs.count("o")
        assert sample["wins"][judge] == (
            1.0 if count > base_count else 0.5 if count == base_count else 0.0
        )
        assert sample["scores"][judge] == (1.0 if "o" in mine else -1.0)
    wins = [s["wins"][judge] for s in report["samples"]]
    assert report["win_rate"][judge]["mean"] == pytest.approx(statistics.fmean(wins))
    texts = [s["completion"] for s in report["samples"]]
    assert report["figures"]["distinct_1"]["mean"] == pytest.approx(distinct_n(texts, 1))
    assert report["figures"]["self_bleu"]["mean"] == pytest.approx(
        statistics.fmean(self_bleu(texts))
    )
    lengths = report["figures"]["length"]["mean"] - report["baseline_figures"]["length"]["mean"]
    assert report["difference"]["length"]["mean"] == pytest.approx(lengths)
    assert report["figures"]["kl"]["n"] == 4  # one vocabulary: the KL to the baseline is there
    assert "win rate" in capsys.readouterr().out
    # a second run refuses to overwrite the JSON, naming the fix
    assert cli.main(["eval", "--model", str(two_models[0]), "--output", str(out)]) != 0
    assert "--overwrite" in capsys.readouterr().err


# --- held-out evaluation inside the training loops -----------------------------------------------


def online_settings(tmp_path, model_dir, prompts_file, reward_spec) -> dict:
    held_out = tmp_path / "held_out.txt"
    held_out.write_text("The food was\nA cat has\nThe sea and\nCount the legs\n")
    return {
        "reward": reward_spec,
        "steps": 4,
        "model": ModelCfg(path=str(model_dir), device="cpu"),
        "data": PromptDataCfg(prompts=str(prompts_file), eval_prompts=str(held_out), eval_size=4),
        "gen": GenCfg(max_new_tokens=6, batch_size=16, chat_template="off"),
        "optim": OptimCfg(lr=1e-2),
        "log": LogCfg(tensorboard=False, progress=False),
        "run": RunCfg(output_dir=str(tmp_path / "run"), checkpoint_every=0),
    }


def check_held_out(result, steps_evaluated, judged=False):
    held_out = json.loads((result.run.path / "heldout.json").read_text())
    assert [e["step"] for e in held_out["evaluations"]] == steps_evaluated
    summary = json.loads((result.run.path / "summary.json").read_text())["eval"]
    assert summary["prompts"] == 4 and summary["steps"] == [0, steps_evaluated[-1]]
    names = {"reward", "length", "distinct_1", "distinct_2", "self_bleu"} | (
        {"judge"} if judged else set()
    )
    assert names <= summary["before"].keys() and names <= summary["change"].keys()
    for name in names:
        before, after, change = (summary[k][name] for k in ("before", "after", "change"))
        assert before["low"] <= before["mean"] <= before["high"]
        assert change["mean"] == pytest.approx(after["mean"] - before["mean"])
    logged = {row["step"]: row for row in result.run.metrics() if "eval/reward" in row}
    assert sorted(logged) == steps_evaluated
    assert logged[0]["eval/reward"] == pytest.approx(summary["before"]["reward"]["mean"])


def test_grpo_evaluates_held_out_before_during_and_after(
    tmp_path, tiny_model_dir, prompts_file, reward_spec
):
    from rlhfkit.train import grpo, kit

    cfg = grpo.Config(
        **online_settings(tmp_path, tiny_model_dir, prompts_file, reward_spec),
        algo=grpo.AlgoCfg(group_size=2, prompts_per_step=4, micro_batch_size=8, kl_coef=0.01),
        eval=kit.EvalCfg(every=2, judge="length:3"),
    )
    result = grpo.train(cfg)
    check_held_out(result, [0, 2, 4], judged=True)
    assert result.summary["eval"]["after"]["kl"]["n"] == 4  # KL to the starting model
    assert result.summary["reward_first"] is not None  # step 0's row is held-out figures only


def test_ppo_and_its_resume_keep_one_evaluation_per_step(
    tmp_path, tiny_model_dir, prompts_file, reward_spec
):
    from dataclasses import replace

    from rlhfkit.train import kit, ppo

    settings = online_settings(tmp_path, tiny_model_dir, prompts_file, reward_spec)
    cfg = ppo.Config(
        **{**settings, "run": replace(settings["run"], checkpoint_every=2)},
        algo=ppo.AlgoCfg(prompts_per_step=4, micro_batch_size=4, epochs=1, kl_coef=0.01),
        eval=kit.EvalCfg(every=3),
    )
    whole = ppo.train(cfg)
    check_held_out(whole, [0, 3, 4])  # every 3 steps, and the end
    # cut the run back to its step-2 checkpoint, as a crash after step 3 would leave it: its
    # held-out file already holds later evaluations, which the resumed run replaces, once each
    checkpoints = whole.run.path / "checkpoints"
    shutil.rmtree(checkpoints / "step-000004")
    (checkpoints / "latest").write_text("step-000002\n")
    resumed = ppo.train(replace(cfg, run=replace(cfg.run, resume=True)))
    check_held_out(resumed, [0, 3, 4])


def test_hindsight_rounds_evaluate_held_out(tmp_path, tiny_model_dir, prompts_file, reward_spec):
    from rlhfkit.train import kit
    from rlhfkit.train.hindsight import hir
    from rlhfkit.train.hindsight.rounds import RoundsCfg

    settings = online_settings(tmp_path, tiny_model_dir, prompts_file, reward_spec)
    del settings["steps"]
    cfg = hir.Config(
        **settings,
        rounds=RoundsCfg(rounds=2, prompts_per_round=4, steps_per_round=1, batch_size=4),
        hir=hir.HIRCfg(threshold=0.1),
        eval=kit.EvalCfg(every=0),
    )
    check_held_out(hir.train(cfg), [0, 2])
