"""``rlhfkit serve --engine vllm``: vLLM's async engine behind the API, driven by OpenAI's client
and checked against the hf engine on the same model (greedy text, stop strings, token counts,
chat rendering) and against a forward pass (log-probs).

The engine tests run vLLM's CPU build in the environment `make vllm-env` makes (`make
vllm-test`), on test_vllm.py's tiny Llama (heads of 32, which vLLM's CPU attention needs); one
engine serves the whole module, since vLLM takes tens of seconds to start on a CPU. Without vllm
they skip; ``RLHFKIT_REQUIRE_VLLM=1`` (CI) makes that a failure. The option checks at the end
run everywhere.
"""

from __future__ import annotations

import os
import queue
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from rlhfkit.errors import ConfigError  # noqa: E402
from rlhfkit.serve.engine import Request, join  # noqa: E402
from test_serve import KEY, MODEL_ID, assert_logprobs_are_the_models, serving  # noqa: E402
from test_vllm import _vllm_or_skip, vllm_model_dir  # noqa: E402, F401

PROMPTS = ["The movie was", "Count the legs", "She said", "A", "Please write a short poem"]


@pytest.fixture(scope="module")
def engines(vllm_model_dir):  # noqa: F811
    """(vllm engine, hf engine, hf model, tokenizer) on the same model, float32 on the CPU."""
    _vllm_or_skip()
    from rlhfkit.commands.serve import Config, load_engine
    from rlhfkit.config import ModelCfg
    from rlhfkit.models import load_causal_lm
    from rlhfkit.serve.hf_engine import HFEngine

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; else a share of the RAM
    vllm = load_engine(Config(model=str(vllm_model_dir), engine="vllm", dtype="float32"))
    model, tokenizer = load_causal_lm(ModelCfg(path=str(vllm_model_dir), device="cpu"))
    hf = HFEngine(model, tokenizer)
    yield vllm, hf, model, tokenizer
    hf.close()
    vllm.close()


@pytest.fixture(scope="module")
def client(engines):
    with serving(engines[0]) as url:
        yield openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120)


def hf_reply(engines, prompt, **settings):
    """The hf engine's whole completion of ``prompt``."""
    return join(engines[1].stream(Request(prompt, **settings)))


def drained(engine, timeout: float = 10.0) -> bool:
    """Whether vLLM holds no request any more (an abort reaches it asynchronously)."""
    deadline = time.monotonic() + timeout
    while engine.llm.get_num_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    return engine.llm.get_num_unfinished_requests() == 0


def test_concurrent_greedy_completions_equal_the_hf_engines(client, engines):
    """Eight requests at once, decoded together by vLLM: each is what hf decodes alone."""
    prompts = PROMPTS + [f"Count the legs of {n} cats" for n in range(3)]
    with ThreadPoolExecutor(len(prompts)) as pool:
        replies = list(
            pool.map(
                lambda p: client.completions.create(
                    model=MODEL_ID, prompt=p, max_tokens=12, temperature=0
                ),
                prompts,
            )
        )
    for prompt, reply in zip(prompts, replies, strict=True):
        expected = hf_reply(engines, prompt, max_tokens=12, temperature=0)
        choice = reply.choices[0]
        assert (choice.text, choice.finish_reason) == (expected.text, expected.finish_reason)
        assert reply.usage.prompt_tokens == expected.prompt_tokens
        assert reply.usage.completion_tokens == expected.completion_tokens


def test_stop_strings_end_the_text_as_with_hf_and_abort_the_request(client, engines):
    full = hf_reply(engines, "She said", max_tokens=16, temperature=0).text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = hf_reply(engines, "She said", max_tokens=16, temperature=0, stop=(stop,))
    assert expected.finish_reason == "stop" and expected.text == full[: full.find(stop)]
    reply = client.completions.create(
        model=MODEL_ID, prompt="She said", max_tokens=16, temperature=0, stop=[stop]
    )
    assert (reply.choices[0].text, reply.choices[0].finish_reason) == (expected.text, "stop")
    assert reply.usage.completion_tokens == expected.completion_tokens
    events = list(
        client.completions.create(
            model=MODEL_ID, prompt="She said", max_tokens=16, temperature=0, stop=stop, stream=True
        )
    )
    assert "".join(e.choices[0].text for e in events) == expected.text
    assert events[-1].choices[0].finish_reason == "stop"


def test_a_stream_left_early_is_aborted_in_vllm(engines, monkeypatch):
    """A stream its reader leaves (a stop string found, a client gone) cancels the request in
    vLLM instead of letting it generate the rest of its max_tokens for nobody."""
    vllm = engines[0]
    aborted = []
    abort = vllm.llm.abort

    async def recorded(request_id, internal=False):
        aborted.append(request_id)
        await abort(request_id, internal)

    monkeypatch.setattr(vllm.llm, "abort", recorded)
    stream = vllm.stream(Request("She said", 120, temperature=0))
    assert next(stream).text
    stream.close()  # after one chunk of 120 tokens
    assert drained(vllm) and len(aborted) == 1


def test_sampled_logprobs_are_the_models_and_a_seed_repeats(client, engines):
    _, _, model, tokenizer = engines
    ask = dict(model=MODEL_ID, prompt="Reward models", max_tokens=6, temperature=0.9, top_p=0.95)
    reply = client.completions.create(**ask, seed=1, logprobs=3)
    again = client.completions.create(**ask, seed=1)
    other = client.completions.create(**ask, seed=2)
    assert reply.choices[0].text == again.choices[0].text != other.choices[0].text
    assert reply.usage.completion_tokens == 6
    assert_logprobs_are_the_models(reply, "Reward models", model, tokenizer)


def test_chat_is_rendered_as_hf_renders_it_and_streams_the_same_text(client, engines):
    messages = [{"role": "user", "content": "Write a poem about the sea"}]
    expected = hf_reply(engines, messages, max_tokens=10, temperature=0)
    ask = dict(model=MODEL_ID, messages=messages, max_tokens=10, temperature=0)
    reply = client.chat.completions.create(**ask, logprobs=True, top_logprobs=4)
    assert reply.choices[0].message.content == expected.text
    assert reply.usage.prompt_tokens == expected.prompt_tokens  # the same chat template
    for entry in reply.choices[0].logprobs.content:  # greedy: the chosen token is the top one
        assert len(entry.top_logprobs) == 4
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
    events = list(
        client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    pieces = [e.choices[0].delta.content or "" for e in events if e.choices]
    assert "".join(pieces) == expected.text
    assert len([p for p in pieces if p]) > 1  # sent as decoded, not in one piece at the end
    assert [e.choices[0].finish_reason for e in events if e.choices][-1] == "length"
    assert events[-1].usage.completion_tokens == 10


def test_a_request_past_the_context_is_refused_before_vllm_sees_it(client, engines):
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL_ID, prompt="hi", max_tokens=500)
    assert too_long.value.body["code"] == "context_length_exceeded"
    assert too_long.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as long_prompt:
        client.completions.create(model=MODEL_ID, prompt="the cat " * 200, max_tokens=2)
    assert long_prompt.value.body["code"] == "context_length_exceeded"
    assert drained(engines[0])


def test_options_of_another_engine_are_refused():
    from rlhfkit.commands.serve import run

    with pytest.raises(ConfigError, match="max_model_len.*read only by --engine vllm, not hf"):
        run(["smollm2", "--max-model-len", "512"])
    with pytest.raises(ConfigError, match="gpu_memory_utilization.*--engine vllm"):
        run(["smollm2", "--gpu_memory_utilization", "0.5"])
    with pytest.raises(ConfigError, match="device.*read only by --engine hf, not vllm"):
        run(["smollm2", "--engine", "vllm", "--device", "cpu"])
    with pytest.raises(ConfigError, match="max_batch.*read only by --engine hf or onnx, not vllm"):
        run(["smollm2", "--engine", "vllm", "--max_batch", "4"])


def test_missing_vllm_is_a_one_line_config_error(monkeypatch):
    from rlhfkit.commands.serve import Config, load_engine

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(ConfigError, match="--engine vllm: vllm is not installed.*make vllm-env"):
        load_engine(Config(model="smollm2", engine="vllm"))


def test_vllm_outputs_become_chunks_as_the_hf_engine_cuts_them(tiny_lm):
    """vLLM's output deltas (token ids, their log-prob entries, a finish reason) through the
    engine's own decoding, without vLLM: EOS, stop strings, max_tokens and top alternatives."""
    from rlhfkit.serve.vllm_engine import Delta, VLLMEngine

    _, tokenizer = tiny_lm
    engine = object.__new__(VLLMEngine)  # the decoding side alone
    engine.tokenizer, engine.eos_ids = tokenizer, [tokenizer.eos_token_id]
    ids = tokenizer(" the cat sat on the mat", add_special_tokens=False)["input_ids"]

    def completion(request, deltas, max_tokens=50):
        outputs = queue.Queue()
        for delta in deltas:
            outputs.put(delta)
        return join(engine._chunks(request, 4, max_tokens, outputs))

    eos = Delta([tokenizer.eos_token_id], None, "stop")
    ended = completion(
        Request("x", None), [Delta(ids[:2], None, None), Delta(ids[2:], None, None), eos]
    )
    assert (ended.text, ended.finish_reason) == (tokenizer.decode(ids), "stop")
    assert (ended.prompt_tokens, ended.completion_tokens) == (4, len(ids) + 1)
    stopped = completion(Request("x", None, stop=("sat",)), [Delta(ids, None, None)])
    assert (stopped.text, stopped.finish_reason) == (" the cat ", "stop")
    cut = completion(Request("x", 3), [Delta(ids, None, None)], max_tokens=3)
    assert (cut.text, cut.finish_reason, cut.completion_tokens) == (
        tokenizer.decode(ids[:3]),
        "length",
        3,
    )
    with pytest.raises(RuntimeError, match="vLLM ended a request early \\(abort\\)"):
        completion(Request("x", None), [Delta(ids[:1], None, "abort")])

    # vLLM's entry for a place: the sampled token and the top k, each with its vocabulary rank
    entry = {ids[0]: (-2.5, 3), ids[1]: (-0.5, 1), ids[2]: (-1.5, 2)}
    step = {i: SimpleNamespace(logprob=lp, rank=rank) for i, (lp, rank) in entry.items()}
    scored = completion(Request("x", None, logprobs=2), [Delta([ids[0]], [step], None), eos])
    token = scored.tokens[0]
    assert (token.token, token.logprob) == (tokenizer.decode([ids[0]]), -2.5)
    assert token.top == ((tokenizer.decode([ids[1]]), -0.5), (tokenizer.decode([ids[2]]), -1.5))


def test_a_terminated_server_still_closes_its_engine(monkeypatch):
    """uvicorn raises SIGTERM again after its shutdown; serve must still close the engine (for
    vllm: stop its engine process, which would otherwise outlive the server)."""
    import signal

    import uvicorn

    from rlhfkit.commands import serve

    closed = []

    class Engine:
        def close(self):
            closed.append(True)

    def uvicorn_run(app, **options):
        signal.raise_signal(signal.SIGTERM)  # what uvicorn does once it has shut down

    monkeypatch.setattr(serve, "load_engine", lambda cfg: Engine())
    monkeypatch.setattr(uvicorn, "run", uvicorn_run)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited:
        serve.run(["some-model"])
    assert (exited.value.code, closed) == (128 + signal.SIGTERM, [True])
    assert signal.getsignal(signal.SIGTERM) is before
