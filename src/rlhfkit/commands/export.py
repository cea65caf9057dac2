"""``rlhfkit export RUN_OR_MODEL_DIR --format hf|gguf|onnx|int8``: write a trained model where
people run it, and check the written files still compute what was trained.

The export is written into a temporary directory beside ``--out``, loaded back in its own
runtime (transformers, llama.cpp, onnxruntime, torchao) and compared with the original on 20 fixed
prompts (``rlhfkit.eval.export_check``). Only an export that passes is renamed to ``--out``; one
that fails is deleted, and the command exits non-zero with the measured gap.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rlhfkit.atomic import replace_dir
from rlhfkit.config import NonNegativeFloat, PositiveInt, Problem, is_run_dir
from rlhfkit.errors import ConfigError, RlhfkitError

if TYPE_CHECKING:
    from rlhfkit.eval.export_check import Report
    from rlhfkit.models.formats import Target

TOLERANCES = {  # why each: docs/export.md "Tolerances"
    "hf": 1e-5,
    "onnx": 1e-4,
    "gguf f16": 2e-2,
}
QUANTISED_AGREEMENT = 0.9
"""Quantised formats: the share of positions where the top-1 token must be the original's."""


@dataclass(frozen=True)
class Config:
    """Export a model as Hugging Face, GGUF, ONNX or int8 files, checked against the original."""

    model: str = ""
    """The run directory (its model/ is exported) or Hugging Face model directory to export; also
    the first argument: `rlhfkit export runs/ppo-1 --format gguf` (required)."""
    format: Literal["hf", "gguf", "onnx", "int8"] = "hf"
    """hf: safetensors + tokenizer; gguf: one file for llama.cpp / Ollama; onnx: a graph with KV
    cache for onnxruntime; int8: weight-only int8 (see --int8_engine)."""
    gguf_type: Literal["f16", "q8_0"] = "f16"
    """GGUF weight type: f16 (checked as exact) or q8_0 (8-bit blocks, about half the size)."""
    int8_engine: Literal["torch", "onnx"] = "torch"
    """int8 for PyTorch (torchao weight-only, loads with transformers) or for onnxruntime
    (dynamic int8 ONNX)."""
    out: str = ""
    """Directory to write; empty: beside the model, named after it and the format (e.g.
    runs/ppo-1/export-gguf-q8_0)."""
    overwrite: bool = False
    """Replace --out if it exists (only once the new export has passed its check)."""
    reward: str = "vader"
    """Reward that scores the greedy completions of a quantised export against the original's
    (a spec as for --reward elsewhere: vader, sentiment, rm:PATH, ...)."""
    reward_margin: NonNegativeFloat = 0.1
    """Quantised formats: largest allowed gap between the export's mean reward and the original's
    on the 20 check prompts."""
    max_new_tokens: PositiveInt = 32
    """Greedy tokens per check prompt (the timing and the completions the check compares)."""

    def check(self) -> Iterable[Problem]:
        if not self.model:
            yield Problem("model", "", "is required; give a run or model directory")
        elif not _model_dir(Path(os.path.expanduser(self.model))):
            yield Problem(
                "model",
                self.model,
                "is neither an rlhfkit run with a model/ directory nor a Hugging Face model "
                "directory (config.json); give one of those",
            )
        # each format's own option, refused with another format rather than ignored
        if self.gguf_type != "f16" and self.format != "gguf":
            yield Problem("gguf_type", self.gguf_type, "applies to --format gguf only; drop it")
        if self.int8_engine != "torch" and self.format != "int8":
            yield Problem("int8_engine", self.int8_engine, "applies to --format int8 only; drop it")
        if self.out and Path(os.path.expanduser(self.out)).exists() and not self.overwrite:
            yield Problem("out", self.out, "exists; pass --overwrite or choose another --out")
        from rlhfkit.rewards import spec_problems

        for message in spec_problems(self.reward):
            yield Problem("reward", self.reward, message)


def _model_dir(path: Path) -> Path | None:
    """The model directory of a run, or ``path`` itself when it is a model directory."""
    if is_run_dir(path) and (path / "model" / "config.json").is_file():
        return path / "model"
    if (path / "config.json").is_file():
        return path
    return None


def run(args: list[str]) -> int:
    """``export [RUN_OR_MODEL_DIR] [--flags]``: the leading directory is ``--model``."""
    import sys

    from rlhfkit.commands import run_module

    if args and not args[0].startswith("-"):
        args = ["--model", args[0], *args[1:]]
    return run_module(sys.modules[__name__], "export", args)


def main(cfg: Config) -> None:
    from rlhfkit.eval.export_check import render_table
    from rlhfkit.models.formats import Target

    target = Target(
        cfg.format,
        {"gguf": cfg.gguf_type, "int8": cfg.int8_engine}.get(cfg.format, ""),
    )
    source = _model_dir(Path(os.path.expanduser(cfg.model)))
    assert source is not None  # Config.check made sure
    out = _out_dir(cfg, source, target.slug)
    _require_engine(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".tmp-{out.name}-"))
    try:
        report = _write_and_check(cfg, target, source, tmp)
        print(render_table(report))
        if not report.passed:
            raise RlhfkitError(
                f"export --format {target.label}: the written model failed its check and was "
                f"deleted: {'; '.join(report.failures)}"
            )
        replace_dir(tmp, out)  # --overwrite (checked up front): only by a passing export
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"exported {source} as {target.label} -> {out} (passed its check)")


def _out_dir(cfg: Config, source: Path, slug: str) -> Path:
    if cfg.out:
        return Path(os.path.expanduser(cfg.out))
    run = source.parent if source.name == "model" and is_run_dir(source.parent) else None
    out = run / f"export-{slug}" if run else source.with_name(f"{source.name}-{slug}")
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"out {str(out)!r}: exists; pass --overwrite or choose another --out")
    return out


def _require_engine(target: Target) -> None:
    """The runtime a format needs, installed, before anything is written."""
    needs = {
        "gguf": ("llama_cpp", "llama-cpp-python"),
        "onnx": ("onnxruntime", "onnxruntime"),
    }.get(target.format) or {
        "torch": ("torchao", "torchao"),
        "onnx": ("onnxruntime", "onnxruntime"),
    }.get(target.variant)
    if needs is None:
        return
    import importlib.util

    module, package = needs
    if importlib.util.find_spec(module) is None or (
        "onnx" in (target.format, target.variant) and importlib.util.find_spec("onnx") is None
    ):
        extra = "llama" if module == "llama_cpp" else "export"
        raise ConfigError(
            f"format {target.label!r}: needs {package}, which is not installed; "
            f"pip install 'rlhfkit[{extra}]' (docs/export.md)"
        )


def _write_and_check(cfg: Config, target: Target, source: Path, out_dir: Path) -> Report:
    from rlhfkit.eval import export_check
    from rlhfkit.models import load_tokenizer
    from rlhfkit.models.formats import load, write
    from rlhfkit.models.formats.runner import import_model_class, load_torch
    from rlhfkit.rewards import load_reward

    # 1. the original in float32 on the CPU, where every runtime here runs; its model class is
    # imported first, as every export's runtime is, so load times compare loading alone
    tokenizer = load_tokenizer(source)
    import_model_class(source)
    loaded = load_torch(source)
    model, load_seconds = loaded.runner.model, loaded.seconds
    eos = tokenizer.eos_token_id
    prompts = export_check.fixed_prompts(tokenizer)
    original = loaded.runner
    original_side = export_check.greedy_side(
        original,
        prompts,
        cfg.max_new_tokens,
        eos,
        load_seconds,
        export_check.directory_bytes(source),
    )
    # 2. write it, then load it back in its own runtime
    write(target, model, tokenizer, source, out_dir)
    context = max(len(p.ids) for p in prompts) + cfg.max_new_tokens + 1
    loaded = load(target, out_dir, model.config, context)
    export_side = export_check.greedy_side(
        loaded.runner,
        prompts,
        cfg.max_new_tokens,
        eos,
        loaded.seconds,
        export_check.directory_bytes(out_dir),
    )
    # 3. compare them on the same token ids
    tolerance = export_check.Tolerance(
        logits=TOLERANCES.get(target.label, 0.0),
        agreement=QUANTISED_AGREEMENT,
        reward=cfg.reward_margin,
    )
    return export_check.compare(
        target.label,
        target.exact,
        tolerance,
        prompts,
        original,
        original_side,
        loaded.runner,
        export_side,
        load_reward(cfg.reward),
        tokenizer,
    )
