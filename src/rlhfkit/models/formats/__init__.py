"""The formats ``rlhfkit export`` writes, each with a runner that loads what was written.

| format       | files                         | runs in                          | kind      |
|--------------|-------------------------------|----------------------------------|-----------|
| hf           | model.safetensors, tokenizer  | transformers                     | exact     |
| gguf f16     | model.gguf                    | llama.cpp, Ollama                | exact     |
| gguf q8_0    | model.gguf                    | llama.cpp, Ollama                | quantised |
| onnx         | model.onnx, tokenizer         | onnxruntime (with KV cache)      | exact     |
| int8 torch   | model.safetensors (torchao)   | transformers + torchao           | quantised |
| int8 onnx    | model.onnx (dynamic int8)     | onnxruntime                      | quantised |

Each writer fills an existing (temporary) directory; the export command checks it and renames it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.conditioning import FILE_NAME as CONDITIONING_FILE
from rlhfkit.models.formats.runner import Loaded, load_torch
from rlhfkit.models.ilql_heads import INFO_FILE as ILQL_INFO
from rlhfkit.models.ilql_heads import WEIGHTS_FILE as ILQL_WEIGHTS

FORMATS = ("hf", "gguf", "onnx", "int8")
GGUF_TYPES = ("f16", "q8_0")
INT8_ENGINES = ("torch", "onnx")


@dataclass(frozen=True)
class Target:
    """One format to write: ``format`` and its variant (gguf type, int8 engine; else empty)."""

    format: str
    variant: str = ""

    @property
    def exact(self) -> bool:
        """Whether it should compute the original's logits (up to float rounding) or only
        approximately (quantised weights)."""
        return self.format in ("hf", "onnx") or (self.format, self.variant) == ("gguf", "f16")

    @property
    def label(self) -> str:
        return f"{self.format} {self.variant}".strip()

    @property
    def slug(self) -> str:
        return "-".join(part for part in (self.format, self.variant) if part)


def write(target: Target, model: Any, tokenizer: Any, source: Path, out_dir: Path) -> None:
    """Write ``model`` (the float32 original, loaded from ``source``) as ``target`` into
    ``out_dir``, with the tokenizer, chat template and ``conditioning.json`` beside it (and
    an ILQL run's heads, for hf)."""
    from rlhfkit.models.export import save_model_files

    if target.format == "hf":
        save_model_files(model, tokenizer, out_dir)
    elif target.format == "gguf":
        from rlhfkit.models.formats.gguf import write_gguf

        write_gguf(model, source, out_dir, target.variant)
    elif "onnx" in (target.format, target.variant):
        from rlhfkit.models.formats.onnx import FILE_NAME, quantize_int8, write_onnx

        if target.format == "onnx":
            write_onnx(model, out_dir)
        else:  # int8 onnx: the float graph, quantised beside it, then only the int8 one kept
            float_dir = out_dir / ".float"
            float_dir.mkdir()
            quantize_int8(write_onnx(model, float_dir), out_dir / FILE_NAME)
            shutil.rmtree(float_dir)
    else:
        _write_torchao_int8(source, out_dir)
    if target.format != "hf":
        tokenizer.save_pretrained(out_dir)  # the tokenizer and chat template, for every runtime
    if "onnx" in (target.format, target.variant):
        model.config.save_pretrained(out_dir)  # the cache's shape: layers, KV heads, head size
        model.generation_config.save_pretrained(out_dir)  # its EOS tokens, for serve --engine onnx
    # how a hindsight model is asked, for every format; ILQL's heads steer a transformers
    # model only (rlhfkit generate --ilql), so they go with hf alone
    carried = [CONDITIONING_FILE, *((ILQL_WEIGHTS, ILQL_INFO) if target.format == "hf" else ())]
    for name in carried:
        if (source / name).is_file():
            shutil.copy2(source / name, out_dir / name)


def _write_torchao_int8(source: Path, out_dir: Path) -> None:
    """torchao's weight-only int8 of every linear layer, saved as transformers reloads it."""
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    from rlhfkit.models import LOCAL_WEIGHTS, quiet_transformers

    with quiet_transformers():
        quantised = AutoModelForCausalLM.from_pretrained(
            source,
            quantization_config=TorchAoConfig(Int8WeightOnlyConfig()),
            dtype="float32",
            **LOCAL_WEIGHTS,
        )
        quantised.save_pretrained(out_dir)


def load(target: Target, out_dir: Path, config: Any, context: int) -> Loaded:
    """A runner for what ``write`` put in ``out_dir``; ``config`` is the original's model config,
    ``context`` the longest sequence the check runs."""
    if target.format == "gguf":
        from rlhfkit.models.formats.gguf import load_gguf

        return load_gguf(out_dir, context)
    if "onnx" in (target.format, target.variant):
        from rlhfkit.models.formats.onnx import load_onnx

        return load_onnx(out_dir, config)
    return load_torch(out_dir)
