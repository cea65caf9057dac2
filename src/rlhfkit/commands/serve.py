"""``rlhfkit serve MODEL``: a model behind an OpenAI-compatible HTTP API (docs/serve.md).

    rlhfkit serve runs/dpo/final                        # transformers, http://127.0.0.1:8000/v1
    rlhfkit serve runs/dpo/final --port 8080 --api-key "$KEY"
    rlhfkit serve runs/dpo/final-onnx --engine onnx     # what `rlhfkit export --format onnx` wrote
    rlhfkit serve runs/dpo/export-gguf-q8_0 --engine llama.cpp   # a GGUF in llama.cpp

The served model answers OpenAI's clients, and rlhfkit's own endpoint judge
(``--reward judge:MODEL@http://127.0.0.1:8000/v1``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

from rlhfkit.commands.label.serve import is_loopback
from rlhfkit.config import Bounds, NonNegativeInt, PositiveInt, Problem
from rlhfkit.errors import ConfigError

API_KEY_ENV = "RLHFKIT_API_KEY"
SERVE_INSTALL = "pip install 'rlhfkit[serve]'"
ENGINE_OPTIONS = {
    "device": ("hf",),
    "dtype": ("hf", "vllm"),  # onnx and llama.cpp run in the export's own precision
    "max_batch": ("hf", "onnx"),
    "max_model_len": ("vllm",),
    "gpu_memory_utilization": ("vllm",),
    "n_ctx": ("llama.cpp",),
    "n_threads": ("llama.cpp",),
}
"""The options that only some engines read: set with another engine, they are refused."""


@dataclass(frozen=True)
class Config:
    """Serve a model over an OpenAI-compatible HTTP API (serve MODEL [--port N])."""

    model: str = ""
    """What to serve (also the first argument): a model directory or embedded alias (smollm2)
    for hf; a .gguf file, or the directory export --format gguf wrote, for llama.cpp
    (required)."""
    engine: Literal["hf", "onnx", "llama.cpp", "vllm"] = "hf"
    """hf: transformers, concurrent requests decoded together (always installed); onnx:
    onnxruntime on what `rlhfkit export --format onnx` (or int8 --int8_engine onnx) wrote,
    batched the same way; llama.cpp: a GGUF file in llama-cpp-python (pip install
    'rlhfkit[llama]'), one request at a time; vllm: vLLM's async engine, continuous batching
    (on a GPU; needs vllm installed, docs/serve.md)."""
    name: str = ""
    """The model's id in the API (what clients pass as "model"); empty = MODEL as given."""
    host: str = "127.0.0.1"
    """Address to listen on; only this machine can connect unless you open it up."""
    port: Annotated[int, Bounds(ge=1, le=65535)] = 8000
    """Port to listen on."""
    allow_remote: bool = False
    """Allow a --host other than a loopback address, so others on the network can connect."""
    api_key: str = ""
    """Bearer token every request must carry (401 otherwise); empty = $RLHFKIT_API_KEY, and
    with neither the API is open. The variable keeps the key out of the process list."""
    device: str = "auto"
    """hf: auto (a GPU when present, else CPU), cpu, cuda, cuda:N or mps."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """hf and vllm: weights dtype; auto is, with hf, float32 on CPU and bfloat16 on a GPU that
    supports it, and with vllm vLLM's own choice (bfloat16 on most CPUs)."""
    max_batch: PositiveInt = 16
    """hf, onnx: most requests decoded together in one batch (vllm schedules its own)."""
    max_model_len: Annotated[int, Bounds(ge=0)] = 0
    """vllm: the longest prompt + completion in tokens, which sizes its KV cache; 0 = the
    model's context."""
    gpu_memory_utilization: Annotated[float, Bounds(gt=0, le=1)] = 0.9
    """vllm: share of the GPU's memory vLLM takes for weights and KV cache (on a CPU: of the
    machine's memory, unless $VLLM_CPU_KVCACHE_SPACE sets the cache in GiB)."""
    n_ctx: NonNegativeInt = 0
    """llama.cpp: context in tokens (prompt and completion); 0 = the model's own."""
    n_threads: NonNegativeInt = 0
    """llama.cpp: CPU threads; 0 = llama.cpp's default, half the cores."""
    access_log: bool = True
    """Log every request to the console."""

    def check(self) -> Iterable[Problem]:
        if not self.model:
            yield Problem("model", "", "is required: rlhfkit serve MODEL (a model directory)")
        elif self.engine == "llama.cpp":
            from rlhfkit.serve.llama_engine import gguf_file

            found = gguf_file(self.model)
            if isinstance(found, str):
                yield Problem("model", self.model, found)
        elif self.model.endswith(".gguf"):
            yield Problem(
                "model",
                self.model,
                "is a GGUF file, which the hf engine does not run; add --engine llama.cpp, or "
                "serve the model directory it was exported from",
            )
        yield from self._engine_options()
        if not self.allow_remote and not is_loopback(self.host):
            yield Problem(
                "host",
                self.host,
                "opens the API to the network; add --allow_remote to do so on purpose "
                "(with --api_key, behind HTTPS), or use 127.0.0.1",
            )

    def _engine_options(self) -> Iterable[Problem]:
        """Options that only some engines read, refused when set with another one."""
        for name, engines in ENGINE_OPTIONS.items():
            value = getattr(self, name)
            if self.engine not in engines and value != getattr(Config, name):
                yield Problem(
                    name,
                    value,
                    f"is read only by --engine {' or '.join(engines)}, not {self.engine}; "
                    "leave it out",
                )


def run(argv: list[str]) -> int:
    """``rlhfkit serve [MODEL] [--KEY VALUE ...]``: MODEL first stands for --model MODEL, and
    --api-key style flags are taken as --api_key."""
    from rlhfkit import config_io

    if "-h" in argv or "--help" in argv:
        print(config_io.render_help(Config, "serve"), end="")
        return 0
    args = ["--" + arg[2:].replace("-", "_") if arg.startswith("--") else arg for arg in argv]
    if args and not args[0].startswith("--"):
        args = ["--model", *args]
    main(config_io.load(Config, args, command="serve"))
    return 0


def main(cfg: Config) -> None:
    try:
        import uvicorn

        from rlhfkit.serve.app import create_app
    except ModuleNotFoundError as missing:
        if (missing.name or "").startswith("rlhfkit"):
            raise
        raise ConfigError(
            f"serve needs the web packages of the optional extra 'serve' ({missing.name} is "
            f"not installed): {SERVE_INSTALL}"
        ) from None
    engine = load_engine(cfg)
    model_id = cfg.name or cfg.model
    api_key = cfg.api_key or os.environ.get(API_KEY_ENV) or None
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(
        f"serving {model_id!r} ({cfg.engine}) at http://{host}:{cfg.port}/v1"
        + ("" if api_key else "  (no API key: anyone who can connect may use it)")
    )
    # uvicorn raises SIGTERM again once it has shut down; exit through the finally below
    # then, or vLLM's engine process would outlive the server
    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        uvicorn.run(
            create_app(engine, model_id, api_key),
            host=cfg.host,
            port=cfg.port,
            access_log=cfg.access_log,
        )
    finally:
        engine.close()
        signal.signal(signal.SIGTERM, previous)


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def load_engine(cfg: Config):
    """The engine ``cfg`` names, with its model loaded."""
    if cfg.engine == "llama.cpp":
        from rlhfkit.serve import llama_engine

        return llama_engine.load(cfg.model, llama_engine.Options(cfg.n_ctx, cfg.n_threads))
    if cfg.engine == "vllm":
        from rlhfkit.serve import vllm_engine

        options = vllm_engine.Options(
            cfg.dtype, cfg.max_model_len or None, cfg.gpu_memory_utilization
        )
        return vllm_engine.load(cfg.model, options)
    if cfg.engine == "onnx":
        from rlhfkit.serve import onnx_engine

        return onnx_engine.load(cfg.model, onnx_engine.Options(cfg.max_batch))
    from rlhfkit.serve import hf_engine

    return hf_engine.load(cfg.model, hf_engine.Options(cfg.device, cfg.dtype, cfg.max_batch))
