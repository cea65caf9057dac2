"""``rlhfkit serve MODEL``: a model behind an OpenAI-compatible HTTP API (docs/serve.md).

    rlhfkit serve runs/dpo/final                        # transformers, http://127.0.0.1:8000/v1
    rlhfkit serve runs/dpo/final --port 8080 --api-key "$KEY"
    rlhfkit serve runs/dpo/export-gguf-q8_0 --engine llama.cpp   # a GGUF in llama.cpp

The served model answers OpenAI's clients, and rlhfkit's own endpoint judge
(``--reward judge:MODEL@http://127.0.0.1:8000/v1``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

from rlhfkit.commands.label.serve import is_loopback
from rlhfkit.config import Bounds, NonNegativeInt, PositiveInt, Problem
from rlhfkit.errors import ConfigError

API_KEY_ENV = "RLHFKIT_API_KEY"
SERVE_INSTALL = "pip install 'rlhfkit[serve]'"


@dataclass(frozen=True)
class Config:
    """Serve a model over an OpenAI-compatible HTTP API (serve MODEL [--port N])."""

    model: str = ""
    """What to serve (also the first argument): a model directory or embedded alias (smollm2)
    for hf; a .gguf file, or the directory export --format gguf wrote, for llama.cpp
    (required)."""
    engine: Literal["hf", "llama.cpp"] = "hf"
    """hf: transformers, concurrent requests decoded together; llama.cpp: a GGUF file in
    llama-cpp-python (pip install 'rlhfkit[llama]'), one request at a time."""
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
    """hf: weights dtype; auto is float32 on CPU and bfloat16 on a GPU that supports it."""
    max_batch: PositiveInt = 16
    """hf: most requests decoded together in one batch."""
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
        yield from engine_only_options(self)
        if not self.allow_remote and not is_loopback(self.host):
            yield Problem(
                "host",
                self.host,
                "opens the API to the network; add --allow_remote to do so on purpose "
                "(with --api_key, behind HTTPS), or use 127.0.0.1",
            )


ENGINE_OPTIONS = {  # option -> the engine that reads it; set with another engine, it is refused
    "device": "hf",
    "dtype": "hf",
    "max_batch": "hf",
    "n_ctx": "llama.cpp",
    "n_threads": "llama.cpp",
}


def engine_only_options(cfg: Config) -> Iterable[Problem]:
    defaults = Config()
    for option, engine in ENGINE_OPTIONS.items():
        value = getattr(cfg, option)
        if cfg.engine != engine and value != getattr(defaults, option):
            yield Problem(
                option,
                value,
                f"is read only by --engine {engine}, not by {cfg.engine}; leave it out",
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
    try:
        uvicorn.run(
            create_app(engine, model_id, api_key),
            host=cfg.host,
            port=cfg.port,
            access_log=cfg.access_log,
        )
    finally:
        engine.close()


def load_engine(cfg: Config):
    """The engine ``cfg`` names, with its model loaded."""
    if cfg.engine == "llama.cpp":
        from rlhfkit.serve import llama_engine

        return llama_engine.load(cfg.model, llama_engine.Options(cfg.n_ctx, cfg.n_threads))
    from rlhfkit.serve import hf_engine

    return hf_engine.load(cfg.model, hf_engine.Options(cfg.device, cfg.dtype, cfg.max_batch))
