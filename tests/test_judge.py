"""LLM judges: order-swap averaging, outcomes in the prompt, a local model, and an
OpenAI-compatible endpoint driven against a local fake server (good, error and malformed replies).
"""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import send_json
from rlhfkit.errors import ConfigError, RewardError
from rlhfkit.rewards import load_reward
from rlhfkit.rewards.judge import EndpointJudge, Judge, LocalJudge, template_problem


def save_judge_capable_tiny(path):
    """The shared tiny model, with a tokenizer that has also seen the judges' answer words (the
    shared one never saw a "B"): saved to ``path``, returned."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from conftest import CHAT_TEMPLATE, SENTENCES, build_tiny_llama

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|im_end|>", "<|im_start|>"], show_progress=False
    )
    core.train_from_iterator([*SENTENCES, "Answer A or B. Yes or No?"], trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE
    )
    build_tiny_llama(len(tokenizer), tokenizer.eos_token_id).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def judge_model_dir(tmp_path_factory):
    return save_judge_capable_tiny(tmp_path_factory.mktemp("tiny-judge"))


@pytest.fixture(scope="module")
def judge_lm(judge_model_dir):
    from rlhfkit.config import ModelCfg
    from rlhfkit.models import load_causal_lm

    return load_causal_lm(ModelCfg(path=str(judge_model_dir), device="cpu"))


class ScriptedJudge(Judge):
    """P(first word) read from a table keyed by (response under A, response under B)."""

    def __init__(self, table: dict[tuple[str, str], float], **templates):
        super().__init__(pair_template="{prompt}|A={response_a}|B={response_b}", **templates)
        self.table, self.seen = table, []

    def choice_probabilities(self, texts, first, second):
        self.seen += texts
        return [
            self.table[tuple(part.split("=", 1)[1] for part in text.split("|")[1:])]
            for text in texts
        ]


def test_prefer_averages_both_orders_by_hand():
    judge = ScriptedJudge({("x", "y"): 0.8, ("y", "x"): 0.4})
    # A=x first: P(x) = 0.8; x second: P(y) = 0.4 so P(x) = 0.6; mean 0.7
    assert judge.prefer("q", "x", "y") == pytest.approx(0.7)
    assert judge.seen == ["q|A=x|B=y", "q|A=y|B=x"]
    assert judge.prefer("q", "y", "x") == pytest.approx(0.3)  # swapping the pair mirrors it


def test_a_judge_that_only_reads_the_position_is_indifferent():
    always_a = ScriptedJudge({("x", "y"): 0.9, ("y", "x"): 0.9})
    assert always_a.prefer("q", "x", "y") == pytest.approx(0.5)


def test_outcomes_reach_the_prompt_only_when_given():
    judge = ScriptedJudge({})
    foresight = judge.pair_prompt("q", "buy it", "wait")
    hindsight = judge.pair_prompt("q", "buy it", "wait", "it broke", "saved money")
    assert "What happened next" not in foresight and "it broke" not in foresight
    assert hindsight == (
        "q|A=buy it\n\nWhat happened next:\nit broke|B=wait\n\nWhat happened next:\nsaved money"
    )
    with pytest.raises(ValueError, match="both outcomes"):
        judge.pair_prompt("q", "a", "b", "only one", None)


def test_templates_are_checked():
    assert (
        template_problem(
            "{prompt} {response_a} {response_b}", ("prompt", "response_a", "response_b")
        )
        is None
    )
    assert "lacks {response_b}" in template_problem(
        "{prompt} {response_a}", ("prompt", "response_a", "response_b")
    )
    assert "unknown {answer}" in template_problem(
        "{prompt}{response}{answer}", ("prompt", "response")
    )
    assert "malformed" in template_problem("{prompt", ("prompt",))
    with pytest.raises(ConfigError, match="judge.template: the template lacks"):
        LocalJudge(None, None, pair_template="{prompt} {response_a}")


# --- a local model -------------------------------------------------------------------------------


def test_local_judge_matches_a_hand_computed_forward(judge_lm):
    import torch

    model, tokenizer = judge_lm
    judge = LocalJudge(model, tokenizer, pair_template="{prompt} {response_a} {response_b}")
    texts = ["The movie was", "She said the food was good, but"]  # different lengths: padding
    probabilities = judge.choice_probabilities(texts, "A", "B")
    for text, p in zip(texts, probabilities, strict=True):
        ids = tokenizer(judge.render(text), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            logprobs = model(**ids).logits[0, -1].float().log_softmax(-1)
        a = logprobs[judge.answer_ids("A", "B")].logsumexp(0)
        b = logprobs[judge.answer_ids("B", "A")].logsumexp(0)
        assert p == pytest.approx(float(torch.sigmoid(a - b)), abs=1e-5)
    assert 0.0 < judge.prefer("q", "x", "y") < 1.0


def test_local_judge_cannot_judge_words_its_tokenizer_cannot_tell_apart(tiny_lm):
    judge = LocalJudge(*tiny_lm)  # the shared tiny tokenizer has no "B": " A", " B" both begin "Ġ"
    with pytest.raises(RewardError, match="begins 'B' and 'A' with the same token"):
        judge.prefer("q", "x", "y")


def test_local_judge_biased_toward_a_letter_cancels_out(judge_model_dir):
    """A model that always says "A" prefers neither response once both orders are averaged."""
    import torch

    judge = LocalJudge.load(
        str(judge_model_dir), device="cpu", pair_template="{prompt} {response_a} {response_b}"
    )
    weight = judge.model.lm_head.weight
    biased = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    with torch.no_grad():
        biased.weight.copy_(weight)
        biased.bias.zero_()
        biased.bias[judge.answer_ids("A", "B")] = 20.0
    judge.model.lm_head = biased
    p_first = judge.choice_probabilities(["q x y", "q y x"], "A", "B")
    assert min(p_first) > 0.99  # it answers A whichever response comes first
    assert judge.prefer("q", "x", "y") == pytest.approx(0.5, abs=0.01)


def test_local_judge_refuses_a_prompt_beyond_its_context(judge_lm):
    judge = LocalJudge(*judge_lm, pair_template="{prompt} {response_a} {response_b}")
    with pytest.raises(RewardError, match="beyond the model's context of 128"):
        judge.prefer("word " * 200, "x", "y")


# --- an OpenAI-compatible endpoint ---------------------------------------------------------------


class FakeServer:
    """A chat-completions server in a thread that answers from a script of (status, body)."""

    def __init__(self, replies, delay: float = 0.0):
        self.replies, self.requests = list(replies), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                time.sleep(delay)
                length = int(self.headers["Content-Length"])
                server.requests.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                status, body = (
                    server.replies.pop(0) if len(server.replies) > 1 else server.replies[0]
                )
                send_json(self, status, body)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                import sys

                if not isinstance(sys.exception(), ConnectionError):  # a client that timed out
                    super().handle_error(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(content, top=None):
    choice = {"index": 0, "message": {"role": "assistant", "content": content}}
    if top is not None:
        choice["logprobs"] = {
            "content": [
                {
                    "token": content,
                    "logprob": 0.0,
                    "top_logprobs": [{"token": token, "logprob": math.log(p)} for token, p in top],
                }
            ]
        }
    return 200, {"choices": [choice]}


def endpoint(server, **options):
    return EndpointJudge(
        server.url, "judge-model", api_key_env="RLHFKIT_TEST_JUDGE_KEY", backoff=0.0, **options
    )


def test_endpoint_reads_the_answer_probability_from_logprobs(monkeypatch):
    monkeypatch.setenv("RLHFKIT_TEST_JUDGE_KEY", "sk-test")
    top = [("A", 0.5), (" A", 0.1), ("B", 0.2), ("The", 0.2)]
    with FakeServer([reply("A", top)]) as server:
        p = endpoint(server).choice_probabilities(["which?"], "A", "B")
    assert p == [pytest.approx(0.6 / 0.8)]
    sent = server.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == "Bearer sk-test"
    assert sent["body"]["model"] == "judge-model" and sent["body"]["temperature"] == 0
    assert sent["body"]["logprobs"] is True
    assert sent["body"]["messages"] == [{"role": "user", "content": "which?"}]


def test_endpoint_reads_the_text_when_there_are_no_logprobs(monkeypatch):
    monkeypatch.delenv("RLHFKIT_TEST_JUDGE_KEY", raising=False)
    with FakeServer([reply("B"), reply("**A** is better.")]) as server:
        judge = endpoint(server, logprobs=False)
        # order 1 (x first) answers B, order 2 (y first) answers A: y wins both times
        assert judge.prefer("q", "x", "y") == 0.0
    assert "Authorization" not in server.requests[0]["headers"]  # no key set, none sent
    assert "logprobs" not in server.requests[0]["body"]


def test_endpoint_retries_a_server_error_then_succeeds():
    with FakeServer(
        [(503, {"error": "busy"}), (429, {"error": "slow down"}), reply("Yes")]
    ) as server:
        assert endpoint(server, retries=2).score(["q"], ["r"]) == [1.0]
    assert len(server.requests) == 3


def test_endpoint_gives_up_naming_the_url():
    with FakeServer([(500, {"error": "boom"})]) as server:
        with pytest.raises(
            RewardError,
            match=rf"{server.url}/chat/completions: no answer after "
            r"3 tries \(HTTP 500",
        ):
            endpoint(server, retries=2).choice_probabilities(["q"], "A", "B")
    assert len(server.requests) == 3


def test_endpoint_client_errors_are_not_retried():
    with FakeServer([(404, {"error": "no such model"})]) as server:
        with pytest.raises(RewardError, match="HTTP 404.*check judge.endpoint_model"):
            endpoint(server).choice_probabilities(["q"], "A", "B")
    assert len(server.requests) == 1
    with FakeServer([(401, {"error": "bad key"})]) as server:
        with pytest.raises(RewardError, match=r"\$RLHFKIT_TEST_JUDGE_KEY"):
            endpoint(server).choice_probabilities(["q"], "A", "B")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"id": "x", "object": "chat.completion"}, "malformed reply.*choices"),
        (b"<html>gateway</html>", "not JSON"),
        (reply("I cannot decide")[1], "names neither of 'A' and 'B'"),
        (reply("Both A and B are fine")[1], "names both"),
    ],
)
def test_endpoint_malformed_replies_are_clear_errors(body, message):
    with FakeServer([(200, body)]) as server:
        with pytest.raises(RewardError, match=f"judge endpoint {server.url}.*{message}"):
            endpoint(server).choice_probabilities(["q"], "A", "B")


def test_endpoint_unreachable_names_the_url():
    with FakeServer([reply("A")]) as server:
        url = server.url
    judge = EndpointJudge(url, "m", retries=1, backoff=0.0, timeout=2.0)
    with pytest.raises(RewardError, match=f"{url}/chat/completions: no answer after 2 tries"):
        judge.choice_probabilities(["q"], "A", "B")


def test_endpoint_times_out():
    with FakeServer([reply("A")], delay=0.5) as server:
        judge = EndpointJudge(server.url, "m", retries=0, backoff=0.0, timeout=0.1)
        with pytest.raises(RewardError, match="no answer after 1 tries.*raise judge.timeout"):
            judge.choice_probabilities(["q"], "A", "B")


def test_bad_endpoint_settings():
    with pytest.raises(ConfigError, match="judge.url = 'localhost:8000'"):
        EndpointJudge("localhost:8000", "m")
    with pytest.raises(ConfigError, match="endpoint_model"):
        EndpointJudge("http://localhost:8000/v1", "")


# --- the judge reward ----------------------------------------------------------------------------


def test_judge_reward_over_an_endpoint_scores_2p_minus_1():
    top = [("Yes", 0.75), ("No", 0.25)]
    with FakeServer([reply("Yes", top), reply("No")]) as server:
        reward = load_reward(f"judge:judge-model@{server.url}")
        assert reward(["q", "q"], ["good", "bad"]) == [pytest.approx(0.5), -1.0]
    assert "Response:\ngood" in server.requests[0]["body"]["messages"][0]["content"]


@pytest.fixture
def long_context_tiny_dir(judge_model_dir, tmp_path):
    """The tiny judge with a 1024-token context: the default judging prompts fit in it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(judge_model_dir)
    model.config.max_position_embeddings = 1024
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(judge_model_dir).save_pretrained(tmp_path)
    return tmp_path


def test_judge_reward_with_a_local_model(long_context_tiny_dir):
    scores = load_reward(f"judge:{long_context_tiny_dir}")(["q", "q"], ["a", "b"])
    assert len(scores) == 2 and all(-1.0 < s < 1.0 for s in scores)


def test_judge_reward_needs_a_judge():
    with pytest.raises(ConfigError, match="name the judge"):
        load_reward("judge")
