"""``rlhfkit serve``: the OpenAI-compatible API, driven by OpenAI's own Python client.

Each engine (hf; onnx on the same model exported to ONNX, which needs the ``export`` extra;
llama.cpp on it written as an f16 GGUF, skipped without llama-cpp-python as in test_export.py)
serves a tiny random Llama from a uvicorn server in a thread of the test process, on a free
port, and the same tests run on each. What it returns is checked against the project's own generation
(greedy text) and a forward pass (log-probs); the served model is then used as an endpoint judge
and compared with the same model judging locally.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from conftest import build_tiny_llama, build_tiny_tokenizer  # noqa: E402
from rlhfkit.errors import ConfigError  # noqa: E402
from test_export import need  # noqa: E402

KEY = "test-key"
MODEL_ID = "tiny"
ENGINES = ["hf", "onnx", "llama.cpp"]
LOGPROB_TOLERANCE = {  # against transformers in float32
    "hf": 1e-4,
    "onnx": 1e-4,  # float32 too: onnxruntime only fuses and reorders sums
    "llama.cpp": 2e-2,  # the f16 GGUF: export's f16 tolerance (docs/export.md); measured 1.4e-4
}


@contextmanager
def serving(engine, model_id: str = MODEL_ID, api_key: str | None = KEY):
    """``engine`` behind the API on a free local port, in a thread; yields the base URL."""
    from rlhfkit.serve.app import create_app

    with serving_app(create_app(engine, model_id, api_key)) as url:
        yield url


@contextmanager
def serving_app(app):
    """``app`` on a free local port, served by uvicorn in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture(scope="module")
def onnx_dir(tiny_model_dir, tiny_lm, tmp_path_factory) -> Path:
    """The tiny model as `rlhfkit export --format onnx` writes it (without its check)."""
    need("onnxruntime", "onnx")
    from rlhfkit.models.formats import Target, write

    out = tmp_path_factory.mktemp("tiny-onnx")
    write(Target("onnx"), *tiny_lm, tiny_model_dir, out)
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tiny_lm, tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model as an f16 GGUF, in a directory as export --format gguf writes it."""
    need("llama_cpp")
    from rlhfkit.models.formats.gguf import write_gguf

    out = tmp_path_factory.mktemp("tiny-gguf")
    write_gguf(tiny_lm[0], tiny_model_dir, out, "f16")
    return out


def start_engine(name: str, request: pytest.FixtureRequest):
    """Engine ``name`` on the tiny model; ``request`` gives the fixtures it needs."""
    if name == "llama.cpp":
        from rlhfkit.serve import llama_engine

        return llama_engine.load(str(request.getfixturevalue("tiny_gguf")), llama_engine.Options())
    if name == "onnx":
        from rlhfkit.serve import onnx_engine

        return onnx_engine.load(str(request.getfixturevalue("onnx_dir")), onnx_engine.Options())
    from rlhfkit.serve.hf_engine import HFEngine

    return HFEngine(*request.getfixturevalue("tiny_lm"), max_batch=16)


@pytest.fixture(scope="module", params=ENGINES)
def engine_name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def engine(engine_name, request):
    engine = start_engine(engine_name, request)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def url(engine):
    with serving(engine) as url:
        yield url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)


def greedy(tiny_lm, prompts: list[str], max_new_tokens: int, stop: tuple[str, ...] = ()):
    """The project's own greedy generation (chat template off), for reference."""
    from rlhfkit.config import GenCfg
    from rlhfkit.generation.hf import HFBackend

    cfg = GenCfg(max_new_tokens=max_new_tokens, temperature=0, chat_template="off", stop=stop)
    return HFBackend(*tiny_lm).generate(prompts, cfg, seed=0)


def test_models_lists_the_served_model(client):
    assert [model.id for model in client.models.list()] == [MODEL_ID]


def test_completion_is_the_projects_greedy_generation(client, tiny_lm):
    reply = client.completions.create(
        model=MODEL_ID, prompt="The movie was", max_tokens=10, temperature=0
    )
    rollout = greedy(tiny_lm, ["The movie was"], 10)
    choice = reply.choices[0]
    assert choice.text == rollout.completions[0]
    assert choice.finish_reason == ("stop" if rollout.finished[0] else "length")
    assert reply.usage.prompt_tokens == int(rollout.prompt_mask.sum())
    assert reply.usage.completion_tokens == int(rollout.response_lengths[0])


def test_a_list_of_prompts_gets_a_choice_each(client, tiny_lm):
    prompts = ["The movie was", "Count the legs"]
    reply = client.completions.create(model=MODEL_ID, prompt=prompts, max_tokens=6, temperature=0)
    assert [c.text for c in reply.choices] == greedy(tiny_lm, prompts, 6).completions
    assert [c.index for c in reply.choices] == [0, 1]


def test_stop_strings_end_the_text_before_them_streamed_or_not(client):
    full = (
        client.completions.create(model=MODEL_ID, prompt="She said", max_tokens=16, temperature=0)
        .choices[0]
        .text
    )
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.find(stop)]
    reply = client.completions.create(
        model=MODEL_ID, prompt="She said", max_tokens=16, temperature=0, stop=[stop]
    )
    assert (reply.choices[0].text, reply.choices[0].finish_reason) == (expected, "stop")
    streamed = client.completions.create(
        model=MODEL_ID, prompt="She said", max_tokens=16, temperature=0, stop=stop, stream=True
    )
    events = list(streamed)
    assert "".join(e.choices[0].text for e in events) == expected
    assert events[-1].choices[0].finish_reason == "stop"


def test_completion_logprobs_are_the_models(client, tiny_lm, engine_name):
    reply = client.completions.create(
        model=MODEL_ID, prompt="Reward models", max_tokens=6, temperature=0.9, seed=1, logprobs=3
    )
    tolerance = LOGPROB_TOLERANCE[engine_name]
    assert_logprobs_are_the_models(reply, "Reward models", *tiny_lm, tolerance=tolerance)


def assert_logprobs_are_the_models(
    reply, prompt: str, model, tokenizer, top: int = 3, tolerance: float = 1e-4
) -> None:
    """``reply``'s log-probs (a completion of ``prompt``) are the model's at temperature 1: the
    same tokens scored by one forward pass, with their ``top`` alternatives."""
    logprobs, generated = reply.choices[0].logprobs, reply.usage.completion_tokens
    assert len(logprobs.tokens) == generated
    assert "".join(logprobs.tokens) == reply.choices[0].text
    ids = tokenizer(prompt)["input_ids"]
    ids += tokenizer(reply.choices[0].text, add_special_tokens=False)["input_ids"]
    assert len(ids) == reply.usage.prompt_tokens + generated  # the text re-encodes the same
    with torch.no_grad():
        forward = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)  # (T, V)
    start = reply.usage.prompt_tokens
    expected = [float(forward[start - 1 + k, ids[start + k]]) for k in range(generated)]
    assert logprobs.token_logprobs == pytest.approx(expected, abs=tolerance)
    for position, alternatives in enumerate(logprobs.top_logprobs):
        assert len(alternatives) == top
        best = forward[start - 1 + position].topk(top).values.tolist()
        assert sorted(alternatives.values(), reverse=True) == pytest.approx(best, abs=tolerance)


def test_seeded_chat_repeats_and_streams_the_same_text(client):
    ask = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": "Write a poem about the sea"}],
        "max_tokens": 12,
        "temperature": 1.0,
        "seed": 7,
    }
    first = client.chat.completions.create(**ask)
    again = client.chat.completions.create(**ask)
    other = client.chat.completions.create(**{**ask, "seed": 8})
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    assert first.choices[0].message.role == "assistant"
    events = list(
        client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    pieces = [e.choices[0].delta.content or "" for e in events if e.choices]
    assert "".join(pieces) == first.choices[0].message.content
    assert len([p for p in pieces if p]) > 1  # sent as decoded, not in one piece at the end
    assert [e.choices[0].finish_reason for e in events if e.choices][-1] == first.choices[
        0
    ].finish_reason
    assert events[-1].usage.completion_tokens == first.usage.completion_tokens


def test_chat_logprobs_give_the_top_alternatives(client):
    reply = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "What is two plus three?"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    content = reply.choices[0].logprobs.content
    assert "".join(entry.token for entry in content) == reply.choices[0].message.content
    for entry in content:  # greedy: the chosen token is the most likely one
        assert len(entry.top_logprobs) == 5
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)


def test_a_wrong_or_missing_api_key_is_refused_on_every_route(url):
    wrong = openai.OpenAI(base_url=url, api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong.completions.create(model=MODEL_ID, prompt="hi", max_tokens=2)
    assert refused.value.status_code == 401
    assert refused.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    for path in ("/models", "/no-such-route"):
        with pytest.raises(urllib.error.HTTPError) as unsigned:
            urllib.request.urlopen(url + path)
        assert unsigned.value.code == 401
        assert json.load(unsigned.value)["error"]["code"] == "invalid_api_key"


def test_bad_requests_get_openai_errors(client, url):
    with pytest.raises(openai.BadRequestError) as bad_role:
        client.chat.completions.create(
            model=MODEL_ID,
            messages=[{"role": "wizard", "content": "hi"}],  # type: ignore[list-item]
        )
    assert bad_role.value.status_code == 400
    assert bad_role.value.body["param"] == "messages.0.role"
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=MODEL_ID, prompt="hi", max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="bogus"):
        client.completions.create(model=MODEL_ID, prompt="hi", extra_body={"bogus": 1})
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model=MODEL_ID, prompt="hi", max_tokens=500)
    assert too_long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    garbled = urllib.request.Request(
        url + "/chat/completions",
        b"{not json",
        {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as malformed:
        urllib.request.urlopen(garbled)
    assert malformed.value.code == 400
    error = json.load(malformed.value)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


class FailingEngine:
    """An engine that breaks on every request, as one out of memory would."""

    def stream(self, request):
        raise RuntimeError("out of memory")
        yield

    def close(self):
        pass


def test_an_engine_failure_is_a_500_with_openai_error():
    with serving(FailingEngine(), api_key=None) as url:
        client = openai.OpenAI(base_url=url, api_key="-", max_retries=0)
        with pytest.raises(openai.InternalServerError, match="out of memory") as failed:
            client.completions.create(model=MODEL_ID, prompt="hi", max_tokens=2)
    assert failed.value.status_code == 500
    assert failed.value.body["type"] == "server_error"


def test_twenty_concurrent_requests_are_each_answered_and_batched(
    client, engine, engine_name, tiny_lm
):
    prompts = [f"Count the legs of {n} cats" for n in range(20)]
    batches: list[int] = []
    generate = engine._generate
    batched = engine_name != "llama.cpp"  # llama.cpp takes requests in turn

    def counted(jobs):
        batches.append(len(jobs))
        generate(jobs)

    if batched:
        engine._generate = counted
    try:
        with ThreadPoolExecutor(20) as pool:
            replies = list(
                pool.map(
                    lambda p: client.completions.create(
                        model=MODEL_ID, prompt=p, max_tokens=8, temperature=0
                    ),
                    prompts,
                )
            )
    finally:
        if batched:
            del engine._generate
    assert [r.choices[0].text for r in replies] == greedy(tiny_lm, prompts, 8).completions
    if batched:
        assert sum(batches) == 20 and max(batches) > 1  # waiting requests shared a generate


def test_served_model_judges_as_the_same_model_does_locally(tmp_path, monkeypatch):
    """judge:MODEL@URL against `serve` gives the scores the local judge gives: its top
    log-probs for Yes and No are the model's own."""
    from rlhfkit.rewards import load_reward
    from rlhfkit.rewards.judge import LocalJudge
    from rlhfkit.serve.hf_engine import HFEngine

    tokenizer = build_tiny_tokenizer()
    tokenizer.add_tokens(["Yes", "No"])
    tokenizer.pad_token = tokenizer.eos_token  # as load_tokenizer sets it
    model = build_tiny_llama(len(tokenizer), tokenizer.eos_token_id, seed=3)
    with torch.no_grad():  # Yes and No made likely answers (logits ~3 and ~2.5, in the top 10)
        ids = torch.randint(0, len(tokenizer), (8, 32), generator=torch.Generator().manual_seed(0))
        mean = model.model(ids).last_hidden_state.flatten(0, 1).mean(0)
        for word, logit in (("Yes", 3.0), ("No", 2.5)):
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(word)] = (
                logit * mean / mean.norm() ** 2
            )
    prompts = ["Please write a short poem", "What is two plus three?"]
    responses = ["The sea and the sky.", "The answer is five."]
    local = LocalJudge(model, tokenizer).score(prompts, responses)
    engine = HFEngine(model, tokenizer)
    monkeypatch.setenv("OPENAI_API_KEY", "judge-key")
    try:
        with serving(engine, "judge", api_key="judge-key") as url:
            served = load_reward(f"judge:judge@{url}")(prompts, responses)
    finally:
        engine.close()
    assert served == pytest.approx([2 * p - 1 for p in local], abs=1e-4)
    assert len({round(s, 3) for s in served}) == 2  # the two responses are told apart


def test_serve_command_checks_its_arguments():
    from rlhfkit.commands.serve import run

    with pytest.raises(ConfigError, match="model"):
        run([])
    with pytest.raises(ConfigError, match="the hf engine does not run; add --engine llama.cpp"):
        run(["model.gguf"])
    with pytest.raises(ConfigError, match="model = 'smollm2': is not a .gguf file"):
        run(["smollm2", "--engine", "llama.cpp"])
    with pytest.raises(ConfigError, match="model = 'missing.gguf': does not exist"):
        run(["missing.gguf", "--engine", "llama.cpp"])
    with pytest.raises(ConfigError, match="engine"):
        run(["smollm2", "--engine", "vllm-nope"])
    with pytest.raises(ConfigError, match="n_ctx = 64: is read only by --engine llama.cpp"):
        run(["smollm2", "--n_ctx", "64"])
    with pytest.raises(ConfigError, match="max_batch = 4: is read only by --engine hf or onnx"):
        run(["x.gguf", "--engine", "llama.cpp", "--max_batch", "4"])
    with pytest.raises(ConfigError, match="allow_remote"):
        run(["smollm2", "--host", "0.0.0.0", "--api-key", "k"])


ENGINE_FLAGS = {  # the directory each engine serves, and its own flags
    "hf": ("tiny_model_dir", ["--max-batch", "4", "--device", "cpu"]),
    "onnx": ("onnx_dir", ["--engine", "onnx", "--max-batch", "4"]),
    "llama.cpp": ("tiny_gguf", ["--engine", "llama.cpp", "--n_ctx", "128", "--n_threads", "1"]),
}


@pytest.mark.parametrize("engine_name", ENGINES)
def test_serve_command_serves_the_model_with_the_key_from_the_environment(
    engine_name, request, monkeypatch
):
    """`rlhfkit serve DIR --port N`: the app uvicorn is handed answers a chat, with the key;
    DIR is what the engine serves (for llama.cpp, the directory export --format gguf writes)."""
    import uvicorn

    from rlhfkit.commands.serve import run

    fixture, flags = ENGINE_FLAGS[engine_name]
    model_dir = request.getfixturevalue(fixture)

    answered = {}

    def uvicorn_run(app, host, port, **options):  # serve the app in a thread, ask, return
        answered.update(host=host, port=port)
        with serving_app(app) as url:
            client = openai.OpenAI(base_url=url, api_key="env-key", max_retries=0)
            answered["models"] = [m.id for m in client.models.list()]
            answered["reply"] = client.chat.completions.create(
                model=str(model_dir),
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=3,
            )
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=url, api_key="other", max_retries=0).models.list()

    monkeypatch.setattr(uvicorn, "run", uvicorn_run)
    monkeypatch.setenv("RLHFKIT_API_KEY", "env-key")
    assert run([str(model_dir), "--port", "8123", *flags]) == 0
    assert (answered["host"], answered["port"]) == ("127.0.0.1", 8123)
    assert answered["models"] == [str(model_dir)]
    assert answered["reply"].usage.completion_tokens >= 1


def test_serve_onnx_refuses_what_it_cannot_serve(tiny_model_dir):
    from rlhfkit.commands.serve import run

    with pytest.raises(ConfigError, match="is not an ONNX export .* --format onnx"):
        run([str(tiny_model_dir), "--engine", "onnx"])
    with pytest.raises(ConfigError, match="device.*read only by --engine hf, not onnx"):
        run([str(tiny_model_dir), "--engine", "onnx", "--device", "cpu"])


@pytest.mark.parametrize(
    "ask",
    [
        {"prompt": "The movie was", "max_tokens": 12, "temperature": 0, "logprobs": 5},
        {
            "prompt": [{"role": "user", "content": "Write a poem about the sea"}],
            "max_tokens": 12,
            "temperature": 1.0,
            "top_p": 0.9,
            "seed": 3,
            "logprobs": 2,
        },
    ],
    ids=["greedy", "seeded-chat"],
)
def test_onnx_engine_decodes_as_the_hf_engine(ask, request):
    """The same model on both engines gives the same completion and log-probs within 1e-5:
    onnxruntime computes in float32 too, only fusing and reordering sums (export measured
    3e-7 of the logits' scale). Sampling is the same code with the same seeded generator."""
    from rlhfkit.serve.engine import Request, join

    engines = [start_engine(name, request) for name in ("hf", "onnx")]
    try:
        hf, onnx = (join(engine.stream(Request(**ask))) for engine in engines)
    finally:
        for engine in engines:
            engine.close()
    assert (onnx.text, onnx.finish_reason) == (hf.text, hf.finish_reason)
    assert (onnx.prompt_tokens, onnx.completion_tokens) == (hf.prompt_tokens, hf.completion_tokens)
    assert [t.token for t in onnx.tokens] == [t.token for t in hf.tokens]
    assert [t.logprob for t in onnx.tokens] == pytest.approx(
        [t.logprob for t in hf.tokens], abs=1e-5
    )
    for ours, theirs in zip(onnx.tokens, hf.tokens, strict=True):
        assert [v for _, v in ours.top] == pytest.approx([v for _, v in theirs.top], abs=1e-5)


def test_llama_cpp_gives_the_hf_engines_greedy_completions_with_margin(tiny_lm, request):
    """The f16 GGUF in llama.cpp and the float32 model in transformers, served side by side,
    give the same greedy completions and the same chat prompts. Not by luck: along every
    completion the two most likely tokens are further apart than twice the largest gap between
    the engines' log-probabilities, so no argmax could have flipped (measured: a margin of 6.7e-4
    against a gap of 1.4e-4; a random tiny model's distribution is nearly flat)."""
    from rlhfkit.serve.engine import Request, encode_prompt, join

    engines = {name: start_engine(name, request) for name in ("hf", "llama.cpp")}
    prompts = [
        "The movie was",
        "She said",
        "Reward models",
        [{"role": "user", "content": "Write a poem about the sea"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    ]
    try:
        replies = {
            name: [
                join(engine.stream(Request(prompt, 12, temperature=0, logprobs=2)))
                for prompt in prompts
            ]
            for name, engine in engines.items()
        }
        chats = [p for p in prompts if not isinstance(p, str)]
        hf, llama = engines["hf"], engines["llama.cpp"]
        assert [llama._encode(c) for c in chats] == [
            encode_prompt(hf.tokenizer, c, hf.chat) for c in chats
        ]
    finally:
        for engine in engines.values():
            engine.close()
    gap, margin = 0.0, float("inf")
    for hf_reply, llama_reply in zip(replies["hf"], replies["llama.cpp"], strict=True):
        assert llama_reply.text == hf_reply.text
        assert (llama_reply.finish_reason, llama_reply.completion_tokens) == (
            hf_reply.finish_reason,
            hf_reply.completion_tokens,
        )
        for ours, theirs in zip(hf_reply.tokens, llama_reply.tokens, strict=True):
            pairs = zip(ours.top, theirs.top, strict=True)
            gap = max(
                gap, abs(ours.logprob - theirs.logprob), *(abs(a[1] - b[1]) for a, b in pairs)
            )
            margin = min(margin, ours.top[0][1] - ours.top[1][1])
    assert gap < LOGPROB_TOLERANCE["llama.cpp"]
    assert margin > 2 * gap, f"a near-tie (margin {margin:.1e}, gap {gap:.1e}): pick other prompts"
