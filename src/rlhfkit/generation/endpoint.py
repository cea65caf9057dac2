"""Sampling from a model an OpenAI-compatible server runs: ``NAME@http://HOST/v1`` (``rlhfkit
serve``, vLLM, llama.cpp's server, OpenAI itself).

Each (prompt, sample) is one request, sent with OpenAI's own client (the ``endpoint`` extra)
from ``gen.batch_size`` threads at once: the server batches what arrives together. Prompts go to
``/chat/completions`` as one user message, which the server renders with the model's own chat
template, unless ``gen.chat_template`` is off: then to ``/completions`` as they are. Settings the
API cannot carry (``top_k``, another backend) are refused by ``gen_problems`` before anything
is sent, not dropped.

Every request carries its own seed, ``seed + sample * len(prompts) + prompt_index``, so a rerun
(same prompts, settings and seed) asks for the same texts; how exactly a server keeps a seed is
its own affair (``rlhfkit serve`` samples each request with a generator seeded by it). The API
key is read from ``$OPENAI_API_KEY``, as the endpoint judge reads it (``rewards/judge.py``), and
goes nowhere but the request's header.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rlhfkit.config import GenCfg, Problem
from rlhfkit.errors import RlhfkitError

API_KEY_ENV = "OPENAI_API_KEY"
RETRIES = 3
"""Tries after the first on a refused connection, a timeout, 408, 409, 429 or 5xx (the client's
exponential backoff from 0.5 s)."""
MAX_STOPS = 4  # what OpenAI's API takes
MAX_TEMPERATURE = 2.0
SENT_SETTINGS = ("max_new_tokens", "temperature", "top_p", "stop", "chat_template")
"""The ``GenCfg`` fields a request carries: the provenance of a served sample."""


class EndpointError(RlhfkitError):
    """A server that cannot be reached or refuses the requests: names it and the fix."""


@dataclass(frozen=True)
class ServedSample:
    """One text a server returned, with what it said about itself."""

    text: str
    seed: int
    """The request's seed."""
    served_model: str
    """The model id in the reply (a server may resolve an alias to a version)."""
    fingerprint: str | None
    """The reply's ``system_fingerprint``: the server's configuration, when it gives one."""


def gen_problems(gen: GenCfg) -> Iterator[Problem]:
    """The settings of ``gen`` a request to an OpenAI-compatible server cannot carry; fields
    relative to ``gen``."""
    if gen.backend != "hf":
        yield Problem(
            "backend",
            gen.backend,
            "samples from a local model; a served model samples on its server: drop --gen.backend",
        )
    if gen.server_url:
        yield Problem("server_url", gen.server_url, "is for gen.backend vllm-server; drop it")
    if gen.top_k:
        yield Problem(
            "top_k",
            gen.top_k,
            "is not in the OpenAI API, so a served model cannot be asked for it; drop "
            "--gen.top_k (gen.top_p is in it)",
        )
    if gen.compile == "on":
        yield Problem("compile", gen.compile, "compiles a local model's decoding; drop it")
    if gen.temperature > MAX_TEMPERATURE:
        yield Problem(
            "temperature", gen.temperature, f"is above the OpenAI API's {MAX_TEMPERATURE:g}"
        )
    if len(gen.stop) > MAX_STOPS:
        yield Problem("stop", list(gen.stop), f"the OpenAI API takes at most {MAX_STOPS}")


def request_seed(seed: int, sample: int, prompt_index: int, prompts: int) -> int:
    """The seed of sample ``sample`` of prompt ``prompt_index``: one of its own per request."""
    return seed + sample * prompts + prompt_index


def sample_endpoint(
    model: str, url: str, gen: GenCfg, prompts: list[str], samples: int, seed: int
) -> list[list[ServedSample]]:
    """``samples`` texts of ``model`` at ``url`` for each prompt: ``result[i]`` answers
    ``prompts[i]``. The first request that fails for good stops the rest."""
    client = _client(url, gen.server_timeout_s)
    where = f"{model}@{url}"
    jobs = [(i, s) for s in range(samples) for i in range(len(prompts))]
    pool = ThreadPoolExecutor(max_workers=max(1, min(gen.batch_size, len(jobs))))
    try:
        futures = {
            (i, s): pool.submit(
                _ask, client, where, model, gen, prompts[i], request_seed(seed, s, i, len(prompts))
            )
            for i, s in jobs
        }
        return [[futures[i, s].result() for s in range(samples)] for i in range(len(prompts))]
    finally:
        pool.shutdown(cancel_futures=True)


def _client(url: str, timeout_s: float) -> Any:
    try:
        import openai
    except ImportError:
        raise EndpointError(
            f"sampling from {url} needs OpenAI's client: pip install 'rlhfkit[endpoint]'"
        ) from None
    # a server without a key ignores the header; the client refuses to start without one
    key = os.environ.get(API_KEY_ENV) or "none"
    return openai.OpenAI(base_url=url, api_key=key, timeout=timeout_s, max_retries=RETRIES)


def _ask(client: Any, where: str, model: str, gen: GenCfg, prompt: str, seed: int) -> ServedSample:
    import openai

    chat = gen.chat_template != "off"
    settings: dict[str, Any] = {
        "model": model,
        "max_tokens": gen.max_new_tokens,
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "seed": seed,
    }
    if gen.stop:
        settings["stop"] = list(gen.stop)
    try:
        if chat:
            reply = client.chat.completions.create(
                messages=[{"role": "user", "content": prompt}], **settings
            )
            text = reply.choices[0].message.content or ""
        else:
            reply = client.completions.create(prompt=prompt, **settings)
            text = reply.choices[0].text
    except openai.APIConnectionError as e:  # a timeout too, after every retry
        raise EndpointError(
            f"endpoint {where}: no answer after {RETRIES + 1} tries ({e.__cause__ or e}); check "
            "that the server runs there, or raise --gen.server_timeout_s if it is slow"
        ) from None
    except openai.APIStatusError as e:
        raise EndpointError(f"endpoint {where}: {_refusal(e, chat)}") from None
    except (IndexError, AttributeError):
        raise EndpointError(
            f"endpoint {where}: a reply without choices; is it OpenAI's API?"
        ) from None
    return ServedSample(text, seed, reply.model, getattr(reply, "system_fingerprint", None))


def _refusal(e: Any, chat: bool) -> str:
    """Why a server refused a request, and what to do about it."""
    body = e.body if isinstance(e.body, dict) else {}
    message = str(body.get("message") or e.message)
    said = f"HTTP {e.status_code} ({message})"
    if e.status_code in (401, 403):
        if os.environ.get(API_KEY_ENV):
            return f"{said}; the server refused the key in ${API_KEY_ENV}: set it to the server's"
        return f"{said}; the server wants an API key: set ${API_KEY_ENV} to it"
    if e.status_code == 429 or e.status_code >= 500:  # the client retried these
        return f"{said} after {RETRIES + 1} tries; is the server overloaded or failing?"
    if e.status_code == 404:
        return (
            f"{said}; check the model's name (GET /models on the server lists them) and that "
            "the URL is the API's base, such as http://127.0.0.1:8000/v1"
        )
    if body.get("code") == "context_length_exceeded":
        return f"{said}; lower --gen.max_new_tokens or shorten the prompts"
    if chat and "template" in message.lower():
        return f"{said}; to sample with /completions instead, pass --gen.chat_template off"
    return said
