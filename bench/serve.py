"""``rlhfkit serve`` under load: tokens/s and latency at several concurrencies, side by side.

Each side is a server in its own process, started, warmed up with one request, then sent
``--requests`` greedy chat requests at each concurrency by OpenAI's client; the sides take
turns (A B B A ...) over ``--rounds``. Sides:

- ``hf``: ``rlhfkit serve MODEL --engine hf`` (requests batched, ``--max_batch 16``);
- ``hf-unbatched``: the same with ``--max_batch 1``, what batching buys;
- ``llama.cpp``: ``rlhfkit serve GGUF --engine llama.cpp`` on ``--gguf``;
- ``llama.cpp-own``: llama-cpp-python's own server (``python -m llama_cpp.server``, the
  ``llama`` extra's server packages) on the same file, with ``--logits_all false`` so that both
  llama.cpp sides compute the same thing (rlhfkit's engine reads log-probs without it);
- ``onnx``: ``rlhfkit serve ONNX_DIR --engine onnx`` on ``--onnx`` (an ``rlhfkit export
  --format onnx`` directory of the same model), batched as hf is;
- ``vllm``: ``rlhfkit serve MODEL --engine vllm`` (only with ``--vllm``, run where vllm is
  installed; on a CPU set ``VLLM_CPU_KVCACHE_SPACE``, GiB, or vLLM reserves 90% of the RAM).

The llama.cpp sides run only with ``--gguf``; both get ``--n_ctx 2048`` (the own server's
default) and llama.cpp's default thread count.

    rlhfkit export ~/.cache/rlhfkit/smollm2 --format gguf --out smollm2-gguf  # `rlhfkit assets` path
    python bench/serve.py --model smollm2 --gguf smollm2-gguf/model.gguf --concurrency 1 8

tokens/s is completion tokens over wall time at that concurrency; latency is per request.
"""

from __future__ import annotations

import argparse
import itertools
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai

SIDES = ["hf", "hf-unbatched", "llama.cpp", "llama.cpp-own", "onnx", "vllm"]
N_CTX = 2048
PROMPTS = [
    "Write a short poem about the sea.",
    "Explain why the sky is blue in two sentences.",
    "Give three tips for learning to cook.",
    "What is the capital of France, and why is it famous?",
    "Describe a cat to someone who has never seen one.",
    "Summarise the plot of a detective story in one paragraph.",
    "How do plants make food from sunlight?",
    "List four things to pack for a day of hiking.",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(side: str, args: argparse.Namespace, port: int) -> list[str]:
    if side == "llama.cpp-own":
        return [
            *[sys.executable, "-m", "llama_cpp.server", "--model", args.gguf],
            *["--port", str(port), "--model_alias", "bench", "--verbose", "false"],
            *["--n_ctx", str(N_CTX), "--logits_all", "false"],
        ]
    if side == "llama.cpp":
        return [
            *[sys.executable, "-m", "rlhfkit", "serve", args.gguf, "--engine", "llama.cpp"],
            *["--name", "bench", "--port", str(port), "--access_log", "false"],
            *["--n_ctx", str(N_CTX)],
        ]
    if side == "onnx":
        engine = [args.onnx, "--engine", "onnx", "--max_batch", "16"]  # its own precision
    elif side == "vllm":
        engine = [args.model, "--engine", "vllm", "--dtype", args.dtype]
    else:
        batch = "1" if side == "hf-unbatched" else "16"
        engine = [args.model, "--max_batch", batch, "--dtype", args.dtype]
    return [
        *[sys.executable, "-m", "rlhfkit", "serve", *engine, "--name", "bench"],
        *["--port", str(port), "--access_log", "false"],
    ]


def start(side: str, args: argparse.Namespace) -> tuple[subprocess.Popen, openai.OpenAI]:
    port = free_port()
    server = subprocess.Popen(
        server_command(side, args, port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0)
    deadline = time.monotonic() + 600
    while True:
        try:
            client.models.list()
            return server, client
        except openai.APIConnectionError:
            if server.poll() is not None or time.monotonic() > deadline:
                problem = server.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
                raise SystemExit(f"{side} did not start: {problem}") from None
            time.sleep(0.5)


def ask(client: openai.OpenAI, prompt: str, max_tokens: int) -> tuple[float, int]:
    started = time.perf_counter()
    reply = client.chat.completions.create(
        model="bench",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
    )
    return time.perf_counter() - started, reply.usage.completion_tokens


def load(client: openai.OpenAI, concurrency: int, requests: int, max_tokens: int) -> dict:
    prompts = list(itertools.islice(itertools.cycle(PROMPTS), requests))
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: ask(client, p, max_tokens), prompts))
    wall = time.perf_counter() - started
    latencies = [seconds for seconds, _ in results]
    return {
        "tokens_per_s": sum(tokens for _, tokens in results) / wall,
        "latency_s": statistics.median(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="what rlhfkit serve --engine hf serves")
    parser.add_argument("--gguf", default="", help="a GGUF of the same model, for llama.cpp")
    parser.add_argument("--onnx", default="", help="an ONNX export of the same model")
    parser.add_argument("--vllm", action="store_true", help="add the side --engine vllm")
    parser.add_argument("--dtype", default="auto", help="rlhfkit serve's --dtype, every engine")
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency")
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=SIDES)
    args = parser.parse_args()

    sides = [side for side in args.sides if args.gguf or not side.startswith("llama.cpp")]
    sides = [side for side in sides if side != "onnx" or args.onnx]
    sides = [side for side in sides if side != "vllm" or args.vllm]
    results: dict[tuple[str, int], list[dict]] = {}
    for round_index in range(args.rounds):
        for side in sides if round_index % 2 == 0 else sides[::-1]:
            server, client = start(side, args)
            try:
                for prompt in PROMPTS[:3]:  # warm-up: a CPU's first decodes run slow
                    ask(client, prompt, args.max_tokens)
                for concurrency in args.concurrency:
                    result = load(client, concurrency, args.requests, args.max_tokens)
                    results.setdefault((side, concurrency), []).append(result)
                    print(f"round {round_index} {side} c={concurrency}: {result}", flush=True)
            finally:
                server.terminate()
                server.wait(timeout=60)

    print(f"\n| side | concurrency | tokens/s | median latency (s) |  ({args.rounds} rounds)")
    print("|---|---|---|---|")
    for (side, concurrency), runs in results.items():
        rate = statistics.median(run["tokens_per_s"] for run in runs)
        latency = statistics.median(run["latency_s"] for run in runs)
        print(f"| {side} | {concurrency} | {rate:.1f} | {latency:.2f} |")


if __name__ == "__main__":
    main()
