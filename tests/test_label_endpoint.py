"""``rlhfkit label init / next-round --model NAME@URL``: a campaign sampled from a served model.

``rlhfkit serve``'s app runs a tiny random Llama in a thread of the test process (as in
``test_serve.py``); the campaign's stored outputs are checked against what OpenAI's own client
gets from the same server for the same seeds.
"""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from rlhfkit.feedback.campaign import UNKNOWN_HASH, output_round  # noqa: E402
from rlhfkit.generation import endpoint  # noqa: E402
from test_label_cli import PROMPTS, all_tasks, db, label  # noqa: E402
from test_serve import KEY, serving  # noqa: E402

NAME = "tiny"
GEN = ["--gen.max_new_tokens", "6"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Each test in its own folder (campaigns/NAME/feedback.db), with the server's key set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(endpoint.API_KEY_ENV, KEY)


@pytest.fixture(scope="module")
def engine(tiny_lm):
    from rlhfkit.serve.hf_engine import HFEngine

    engine = HFEngine(*tiny_lm, max_batch=8)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def url(engine):
    with serving(engine, NAME) as url:
        yield url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return str(path)


def chat(client, prompt: str, seed: int, max_tokens: int = 6) -> str:
    reply = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=1.0,
        top_p=1.0,
        seed=seed,
    )
    return reply.choices[0].message.content


def test_init_stores_what_the_server_samples_with_provenance(url, engine, client, prompts, capsys):
    spec = f"{NAME}@{url}"
    args = ["--prompts", prompts, "--model", spec, "--kinds", "pairwise,rating", "--seed", "3"]
    batches: list[int] = []
    generate = engine._generate

    def counted(jobs):
        batches.append(len(jobs))
        generate(jobs)

    engine._generate = counted
    try:
        assert label("init", "--campaign", "c", *args, *GEN) == 0
    finally:
        del engine._generate
    assert sum(batches) == 6 and max(batches) > 1  # requests sent at once, batched by the server
    out = capsys.readouterr().out
    assert f"3 prompts, 6 outputs (sampled: 2 per prompt from {spec})" in out
    assert KEY not in out

    with db() as store:
        stored = store.campaign_outputs("c")
        assert Counter(task.kind for task in all_tasks(store, "c")) == {"pairwise": 3, "rating": 6}
    assert [text for _, text, _ in stored] == PROMPTS
    seeds = []
    for i, (_, text, outputs) in enumerate(stored):
        assert [o.seed for o in outputs] == [3 + i, 3 + len(PROMPTS) + i]  # one seed a request
        seeds += [o.seed for o in outputs]
        for output in outputs:
            assert (output.model, output.model_hash) == (spec, UNKNOWN_HASH)
            assert output.text == chat(client, text, output.seed)  # the server's text, as is
            assert output.generation == {
                "max_new_tokens": 6,
                "temperature": 1.0,
                "top_p": 1.0,
                "stop": [],
                "chat_template": "auto",
                "round": 1,
                "endpoint": url,
                "api": "chat.completions",
                "served_model": NAME,
            }
            assert KEY not in str(output)
    assert len(set(seeds)) == 6 and len({o.text for _, _, outs in stored for o in outs}) > 1

    # a rerun with the same seed stores the same texts
    assert label("init", "--campaign", "again", *args, *GEN) == 0
    with db("again") as store:
        rerun = store.campaign_outputs("again")
    assert [[o.text for o in outs] for _, _, outs in rerun] == [
        [o.text for o in outs] for _, _, outs in stored
    ]


def test_next_round_samples_the_server_and_refuses_to_resample_it(
    url, client, tiny_model_dir, prompts, tmp_path, capsys
):
    """A local round 1, then a served round 2 (through /completions), then new prompts, which
    need a fresh sample of round 2's model: a server's weights cannot be checked, so refused."""
    local = ["--model.device", "cpu"]
    args = ["--prompts", prompts, "--model", tiny_model_dir, *local, *GEN]
    assert label("init", "--campaign", "c", *args) == 0
    spec = f"{NAME}@{url}"
    off = ["--gen.chat_template", "off", "--seed", "5"]
    assert label("next-round", "--campaign", "c", "--model", spec, *off, *GEN) == 0
    assert f"each a new output of {spec} against round 1" in capsys.readouterr().out
    with db() as store:
        stored = store.campaign_outputs("c")
    for i, (_, text, outputs) in enumerate(stored):
        served = outputs[-1]
        assert (output_round(served), served.model, served.seed) == (2, spec, 5 + i)
        assert served.generation["api"] == "completions"
        reply = client.completions.create(
            model=NAME, prompt=text, max_tokens=6, temperature=1.0, seed=served.seed
        )
        assert served.text == reply.choices[0].text

    new = tmp_path / "new.txt"
    new.write_text("Please write a\n")
    assert label("next-round", "--campaign", "c", "--model", spec, "--prompts", new, *GEN) == 2
    err = capsys.readouterr().err
    assert "round 2's model" in err and "which a server ran" in err and "drop --prompts" in err


def test_an_unreachable_server_fails_fast_and_leaves_no_campaign(prompts, capsys, monkeypatch):
    monkeypatch.setattr(endpoint, "RETRIES", 1)
    closed = socket.socket()  # a port nobody listens on: the connection is refused
    closed.bind(("127.0.0.1", 0))
    gone = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"
    closed.close()
    silent = socket.socket()  # a server that accepts and never answers: the timeout ends it
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    mute = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
    try:
        for where in (gone, mute):
            args = ["--prompts", prompts, "--model", f"{NAME}@{where}"]
            wait = ["--gen.server_timeout_s", "0.3"]
            assert label("init", "--campaign", "c", *args, *wait, *GEN) == 1
            err = capsys.readouterr().err
            assert f"endpoint {NAME}@{where}: no answer after 2 tries" in err
            assert "check that the server runs there" in err
    finally:
        silent.close()
    assert not Path("campaigns/c").exists()


def test_a_wrong_or_missing_api_key_is_named_not_shown(url, prompts, capsys, monkeypatch):
    args = ["--prompts", prompts, "--model", f"{NAME}@{url}", *GEN]
    monkeypatch.setenv(endpoint.API_KEY_ENV, "not-the-key")
    assert label("init", "--campaign", "c", *args) == 1
    err = capsys.readouterr().err
    assert f"endpoint {NAME}@{url}: HTTP 401" in err
    assert "refused the key in $OPENAI_API_KEY" in err and "not-the-key" not in err
    monkeypatch.delenv(endpoint.API_KEY_ENV)
    assert label("init", "--campaign", "c", *args) == 1
    assert "wants an API key: set $OPENAI_API_KEY" in capsys.readouterr().err
    assert not Path("campaigns/c").exists()


def test_an_unknown_model_name_is_a_404_with_the_fix(url, prompts, capsys):
    args = ["--prompts", prompts, "--model", f"other@{url}", *GEN]
    assert label("init", "--campaign", "c", *args) == 1
    err = capsys.readouterr().err
    assert f"endpoint other@{url}: HTTP 404" in err and "check the model's name" in err


@pytest.mark.parametrize(
    ("flags", "refused"),
    [
        (["--gen.top_k", "5"], "gen.top_k = 5: is not in the OpenAI API"),
        (["--model.device", "cpu"], "model.device = 'cpu': applies to a local model"),
        (["--gen.backend", "vllm"], "gen.backend = 'vllm': samples from a local model"),
        (["--gen.temperature", "2.5"], "gen.temperature = 2.5: is above the OpenAI API's 2"),
        (["--model2", "tiny@http//host/v1"], "model2 = 'tiny@http//host/v1': names no server"),
    ],
)
def test_what_a_server_cannot_be_asked_is_refused_up_front(flags, refused, prompts, capsys):
    served = ["--model", f"{NAME}@http://127.0.0.1:9/v1"]  # never contacted: refused first
    assert label("init", "--campaign", "c", "--prompts", prompts, *served, *flags) == 2
    assert refused in capsys.readouterr().err
