"""MT-Bench: the loader (real files and a fixture), two-turn generation, the judge's verdicts,
pairwise comparison in both orders, an OpenAI-compatible judge on a fake server, and
``rlhfkit mt-bench`` end to end on a tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rlhfkit import assets
from rlhfkit.commands import dispatch
from rlhfkit.config import GenCfg
from rlhfkit.data import mtbench as data
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.eval import mtbench as bench
from rlhfkit.generation import get_backend
from rlhfkit.rewards.judge import EndpointJudge
from test_judge import FakeServer

RECIPE = Path(__file__).parent.parent / "recipes" / "mt-bench.toml"

# the fixture: the real files' layout and judge prompt names, short texts (a tiny model's context)
QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Make it shorter."]},
    {"question_id": 82, "category": "writing", "turns": ["Say hi.", "Say bye."]},
    {"question_id": 111, "category": "math", "turns": ["What is 2+3?", "And 2*3?"]},
]
REFERENCES = [
    {"question_id": 111, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["5", "6"]}]}
]
SINGLE = "Q: {question}\nA: {answer}"
SINGLE_2 = "Q: {question_1}\nA: {answer_1}\nQ: {question_2}\nA: {answer_2}"
PAIR = "Q: {question}\nA: {answer_a}\nB: {answer_b}"
PAIR_2 = "Q: {question_1} {question_2}\nA: {answer_a_1} {answer_a_2}\nB: {answer_b_1} {answer_b_2}"
TEMPLATES = {
    "pair-v2": PAIR,
    "pair-v2-multi-turn": PAIR_2,
    "pair-math-v1": "Ref: {ref_answer_1}\n" + PAIR,
    "pair-math-v1-multi-turn": "Ref: {ref_answer_1} {ref_answer_2}\n" + PAIR_2,
    "single-v1": SINGLE,
    "single-math-v1": "Ref: {ref_answer_1}\n" + SINGLE,
    "single-v1-multi-turn": SINGLE_2,
    "single-math-v1-multi-turn": "Ref: {ref_answer_1} {ref_answer_2}\n" + SINGLE_2,
}


def write_fixture(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    prompts = [
        {
            "name": name,
            "type": "pairwise" if name.startswith("pair") else "single",
            "system_prompt": "Judge.",
            "prompt_template": template,
            "description": "",
            "category": "math" if "math" in name else "general",
            "output_format": "[[A]]" if name.startswith("pair") else "[[rating]]",
        }
        for name, template in TEMPLATES.items()
    ]
    for name, rows in (
        (data.QUESTIONS, QUESTIONS),
        (data.REFERENCES, REFERENCES),
        (data.JUDGE_PROMPTS, prompts),
    ):
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


@pytest.fixture
def fixture_asset():
    """The fixture as the ready ``mt-bench`` cache entry (fast tests have their own cache)."""
    entry = write_fixture(assets.path("mt-bench"))
    manifest = {"format": assets.MANIFEST_FORMAT, "source": assets.get("mt-bench").source}
    (entry / assets.MANIFEST).write_text(json.dumps(manifest))
    return entry


@pytest.fixture(scope="module")
def long_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with room for judge prompts: rotary positions have no hard limit, so a
    longer declared context changes nothing else."""
    path = tmp_path_factory.mktemp("tiny-long")
    shutil.copytree(tiny_model_dir, path, dirs_exist_ok=True)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    return path


# --- the loader ----------------------------------------------------------------------------------


def test_loader_reads_the_fixture(tmp_path):
    directory = write_fixture(tmp_path)
    questions = data.load_questions(directory)
    assert [q.question_id for q in questions] == [81, 82, 111]
    assert questions[2].reference == ("5", "6") and questions[0].reference == ()
    assert set(data.load_judge_prompts(directory)) == set(TEMPLATES)


def test_loader_names_the_file_and_row_of_a_malformed_question(tmp_path):
    directory = write_fixture(tmp_path)
    rows = (directory / data.QUESTIONS).read_text().splitlines()
    rows[1] = json.dumps({"question_id": 82, "category": "writing", "turns": ["only one"]})
    (directory / data.QUESTIONS).write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"question.jsonl: row 2: turns must be a list of two"):
        data.load_questions(directory)
    (directory / data.QUESTIONS).write_text(rows[0] + "\nnot json\n")
    with pytest.raises(DataError, match=r"question.jsonl: row 2 is not JSON"):
        data.load_questions(directory)


def test_loader_refuses_a_math_question_without_its_reference(tmp_path):
    directory = write_fixture(tmp_path)
    (directory / data.REFERENCES).write_text("")
    with pytest.raises(DataError, match="question 111 .math. has no reference answer"):
        data.load_questions(directory)


@pytest.mark.slow
def test_loader_reads_the_real_files():
    questions = data.load_questions()
    assert len(questions) == 80
    for category in data.CATEGORIES:
        assert sum(q.category == category for q in questions) == 10
    assert sum(bool(q.reference) for q in questions) == 30
    assert all(bool(q.reference) == (q.category in data.NEEDS_REFERENCE) for q in questions)
    prompts = data.load_judge_prompts()
    assert set(prompts) == set(TEMPLATES)
    assert "[[rating]]" in prompts["single-v1"].prompt_template
    assert assets.manifest("mt-bench")["files"][data.REFERENCES] == data.SOURCES[data.REFERENCES][1]


# --- two turns -----------------------------------------------------------------------------------


class Recording:
    """A backend that remembers every prompt it was asked (and asks the real one)."""

    def __init__(self, backend):
        self.backend, self.asked = backend, []

    def generate(self, prompts, cfg, seed, **kwargs):
        self.asked += [(prompt, cfg.temperature) for prompt in prompts]
        return self.backend.generate(prompts, cfg, seed, **kwargs)


def test_the_second_turn_is_asked_after_the_models_own_first_answer(tiny_lm, tmp_path):
    questions = data.load_questions(write_fixture(tmp_path))
    backend = Recording(get_backend("hf", *tiny_lm))
    gen = GenCfg(max_new_tokens=6, chat_template="on")
    answers = bench.generate_answers(backend, questions, gen, seed=0)
    asked = dict(((json.dumps(p), t) for p, t in backend.asked))
    for question, answer in zip(questions, answers, strict=True):
        assert answer.question_id == question.question_id and all(answer.turns)
        second = [
            {"role": "user", "content": question.turns[0]},
            {"role": "assistant", "content": answer.turns[0]},
            {"role": "user", "content": question.turns[1]},
        ]
        assert asked[json.dumps(second)] == bench.TEMPERATURES[question.category]
    assert len(backend.asked) == 2 * len(questions)


# --- verdicts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("Good answer. Rating: [[7]]", 7.0),
        ("[[8.5]] and later [[2]]", 8.5),  # FastChat reads the first
        ("I give it [6].", 6.0),  # FastChat's fallback
        ("Rating: [[10]]", 10.0),
        ("Rating: [[11]]", None),  # off the 1-10 scale
        ("Rating: [[0]]", None),
        ('"[[rating]]"', None),
        ("Rating: 7", None),
        ("", None),
    ],
)
def test_parse_rating(reply, rating):
    assert bench.parse_rating(reply) == rating


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("A is better. [[A]]", "A"),
        ("[[B]]", "B"),
        ("a tie: [[C]]", "C"),
        ("[[A]] ... no, [[B]]", None),  # two verdicts
        ("A", None),
        ("[A]", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert bench.parse_verdict(reply) == verdict


def test_pair_score_by_hand():
    # (s(v1) + 1 - s(v2)) / 2 with s(A) = 1, s(C) = 1/2, s(B) = 0
    assert bench.pair_score("A", "B") == 1.0  # won in both orders
    assert bench.pair_score("B", "A") == 0.0
    assert bench.pair_score("A", "A") == 0.5  # the judge read only the position
    assert bench.pair_score("A", "C") == 0.75
    assert bench.pair_score("C", "C") == 0.5
    assert bench.pair_score(None, "A") is None
    assert bench.consistent("A", "B") and bench.consistent("C", "C")
    assert not bench.consistent("A", "A") and not bench.consistent("A", "C")


def scripted(judge_reply):
    """A replier that answers each judge chat with ``judge_reply(user message, kind)``."""
    return lambda chats, kind: [judge_reply(chat[1]["content"], kind) for chat in chats]


def test_pairwise_asks_both_orders_and_cancels_a_position_bias(tmp_path):
    directory = write_fixture(tmp_path)
    questions, prompts = data.load_questions(directory), data.load_judge_prompts(directory)
    good = [bench.Answer(q.question_id, q.category, ("good", "good")) for q in questions]
    bad = [bench.Answer(q.question_id, q.category, ("bad", "bad")) for q in questions]

    def fair(text, kind):  # prefers whichever position shows "good"
        return "[[A]]" if text.split("\nA: ")[1].startswith("good") else "[[B]]"

    fair_records = bench.compare(scripted(fair), prompts, questions, good, bad)
    assert [r["verdicts"] for r in fair_records] == [["A", "B"]] * 6
    assert bench.summarise(fair_records, "score")["overall"]["mean"] == 1.0
    assert bench.position_consistency(fair_records)["mean"] == 1.0
    assert [r["prompt"] for r in fair_records[4:]] == ["pair-math-v1", "pair-math-v1-multi-turn"]

    biased = bench.compare(scripted(lambda text, kind: "[[A]]"), prompts, questions, good, bad)
    win_rate = bench.summarise(biased, "score")
    assert win_rate["overall"]["mean"] == 0.5 and win_rate["unparseable"] == 0
    assert bench.position_consistency(biased)["mean"] == 0.0


def test_grading_counts_unparseable_verdicts_apart(tmp_path):
    directory = write_fixture(tmp_path)
    questions, prompts = data.load_questions(directory), data.load_judge_prompts(directory)
    answers = [bench.Answer(q.question_id, q.category, ("x", "y")) for q in questions]

    def judge(text, kind):  # rates turn 1 with 4, turn 2 with 8; cannot grade the math one
        return "no idea" if "Ref:" in text else ("[[8]]" if "A: y" in text else "[[4]]")

    records = bench.grade(scripted(judge), prompts, questions, answers)
    assert [r["prompt"] for r in records[:2]] == ["single-v1", "single-v1-multi-turn"]
    assert [r["prompt"] for r in records[4:]] == ["single-math-v1", "single-math-v1-multi-turn"]
    score = bench.summarise(records, "rating")
    assert (score["judged"], score["unparseable"]) == (6, 2)
    assert score["overall"]["mean"] == 6.0 and score["overall"]["n"] == 4
    assert score["turns"]["1"]["mean"] == 4.0 and score["turns"]["2"]["mean"] == 8.0
    assert score["categories"]["math"] is None
    assert score["overall"]["low"] < 6.0 < score["overall"]["high"]


# --- an OpenAI-compatible judge ------------------------------------------------------------------


def test_an_endpoint_judge_gets_mt_benchs_prompts_and_explains_first(tmp_path):
    directory = write_fixture(tmp_path)
    questions, prompts = data.load_questions(directory), data.load_judge_prompts(directory)
    answers = [bench.Answer(q.question_id, q.category, ("x", "y")) for q in questions[:1]]
    replies = [
        (200, {"choices": [{"message": {"content": "Fine, but short. Rating: [[6]]"}}]}),
        (200, {"choices": [{"message": {"content": "I cannot decide."}}]}),
    ]
    with FakeServer(replies) as server:
        judge = EndpointJudge(server.url, "judge-model", backoff=0.0)
        records = bench.grade(bench.judge_replier(judge, 512), prompts, questions[:1], answers)
    assert [r["rating"] for r in records] == [6.0, None]
    assert records[1]["reply"] == "I cannot decide."
    body = server.requests[0]["body"]
    assert body["max_tokens"] == 512 and body["temperature"] == 0
    assert body["messages"] == bench.single_chat(prompts, questions[0], answers[0], 1)
    assert body["messages"][0] == {"role": "system", "content": "Judge."}


# --- the command ---------------------------------------------------------------------------------


def test_mt_bench_end_to_end_with_an_endpoint_judge(fixture_asset, long_model_dir, tmp_path):
    single = (200, {"choices": [{"message": {"content": "Rating: [[5]]"}}]})
    pair = (200, {"choices": [{"message": {"content": "[[A]]"}}]})
    out = tmp_path / "out"
    # 3 questions x 2 turns: the model's grades, the baseline's, then both orders of each pair
    with FakeServer([single] * 12 + [pair] * 12) as server:
        argv = ["mt-bench", "--config", str(RECIPE), "--model.path", str(long_model_dir)]
        argv += ["--judge", f"judge-model@{server.url}", "--baseline", str(long_model_dir)]
        argv += ["--gen.max_new_tokens", "6", "--output", str(out)]
        assert dispatch(argv) == 0
    report = json.loads((out / "mt_bench.json").read_text())
    assert report["score"]["overall"]["mean"] == 5.0 and report["score"]["judged"] == 6
    assert report["baseline_score"]["turns"]["2"]["mean"] == 5.0
    assert report["win_rate"]["overall"]["mean"] == 0.5  # "[[A]]" whatever the order
    assert report["position_consistency"]["mean"] == 0.0
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [81, 82, 111]
    assert len((out / "judgments.jsonl").read_text().splitlines()) == 6 + 6 + 6
    with pytest.raises(ConfigError, match="output.*pass --overwrite"):
        dispatch(argv)


def test_mt_bench_end_to_end_with_a_local_judge_against_gpt4(
    fixture_asset, long_model_dir, tmp_path
):
    out = tmp_path / "out"
    argv = ["mt-bench", "--model.path", str(long_model_dir), "--judge", str(long_model_dir)]
    argv += ["--baseline", "gpt-4", "--gen.max_new_tokens", "4", "--output", str(out)]
    assert dispatch(argv) == 0
    report = json.loads((out / "mt_bench.json").read_text())
    assert report["questions"] == [111]  # the only question with GPT-4's answers
    baseline = json.loads((out / "baseline_answers.jsonl").read_text())
    assert baseline["turns"] == ["5", "6"]
    judgments = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert all(j["reply"].startswith("Rating: [[") for j in judgments if j["model"] == "model")
    assert all(r.startswith("[[") for j in judgments if j["model"] == "pair" for r in j["replies"])
    for key in ("score", "baseline_score", "win_rate"):  # a random judge: whatever it managed
        assert report[key]["judged"] == 2
        assert 0 <= report[key]["unparseable"] <= 2


def test_mt_bench_refuses_a_category_it_does_not_know(fixture_asset):
    with pytest.raises(ConfigError, match="categories = 'poetry': is none of writing"):
        dispatch(["mt-bench", "--categories", "poetry"])


def test_mt_bench_grades_an_earlier_runs_answers_without_generating(fixture_asset, tmp_path):
    answers = tmp_path / "answers.jsonl"
    rows = [{"question_id": 82, "category": "writing", "turns": ["hi", "bye"]}]
    rows += [{"question_id": 111, "category": "math", "turns": ["5", "7"]}]
    answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
    single = (200, {"choices": [{"message": {"content": "Rating: [[9]]"}}]})
    pair = (200, {"choices": [{"message": {"content": "[[C]]"}}]})
    with FakeServer([single] * 4 + [pair] * 4) as server:
        argv = ["mt-bench", "--answers", str(answers), "--baseline", "gpt-4"]
        argv += ["--judge", f"judge-model@{server.url}", "--output", str(tmp_path / "out")]
        assert dispatch(argv) == 0  # no model loads: the default smollm2 is not even prepared
    report = json.loads((tmp_path / "out" / "mt_bench.json").read_text())
    assert report["questions"] == [111] and report["win_rate"]["overall"]["mean"] == 0.5
    assert report["position_consistency"]["mean"] == 1.0  # a tie both ways agrees
    answers.write_text(json.dumps({"question_id": 111, "turns": ["5"]}) + "\n")
    with pytest.raises(DataError, match=r"answers.jsonl: row 1 is not an answer"):
        dispatch([*argv[:-1], str(tmp_path / "out2")])
