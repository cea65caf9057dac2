"""``rlhfkit export``: every format round-trips and passes its check; a corrupted export fails
it and leaves nothing behind.

The runtimes are the ``export`` extra (onnxruntime, torchao) and the ``llama`` extra
(llama-cpp-python): without one the tests that need it skip, unless ``RLHFKIT_REQUIRE_EXPORT=1``
(CI) or ``RLHFKIT_REQUIRE_LLAMA_CPP=1`` turns the skip into a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from rlhfkit.commands import dispatch
from rlhfkit.errors import ConfigError, RlhfkitError

FAST = ["--max_new_tokens", "8"]  # the tiny model's check: 20 prompts x 8 greedy tokens


def need(*modules: str) -> None:
    """Skip unless every module is installed; fail instead where RLHFKIT_REQUIRE_EXPORT=1 (CI)
    for the `export` extra's, and where RLHFKIT_REQUIRE_LLAMA_CPP=1 for llama_cpp (the `llama`
    extra, a 75-minute source build that CI does not make)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    for module in missing:
        extra, flag = ("llama", "LLAMA_CPP") if module == "llama_cpp" else ("export", "EXPORT")
        message = f"{module} not installed: pip install 'rlhfkit[{extra}]'"
        if os.environ.get(f"RLHFKIT_REQUIRE_{flag}") == "1":
            pytest.fail(f"RLHFKIT_REQUIRE_{flag}=1 but {message}")
        pytest.skip(message)


@pytest.fixture
def model_dir(tiny_model_dir, tmp_path) -> Path:
    """A writable copy of the tiny model, with a hindsight model's conditioning.json."""
    path = tmp_path / "policy"
    shutil.copytree(tiny_model_dir, path)
    (path / "conditioning.json").write_text(json.dumps({"method": "coh", "prefix": "Good: "}))
    return path


def export(model_dir: Path, *flags: str) -> Path:
    out = model_dir.parent / "out"
    assert dispatch(["export", str(model_dir), "--out", str(out), *FAST, *flags]) == 0
    return out


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".tmp-")]


def test_hf_round_trip_keeps_tokenizer_template_and_conditioning(model_dir, capsys):
    from rlhfkit.config import ModelCfg
    from rlhfkit.models import load_causal_lm

    (model_dir / "ilql_heads.safetensors").write_bytes(b"heads")  # an ILQL run's steering
    (model_dir / "ilql.json").write_text('{"beta": 1.0}')
    out = export(model_dir, "--format", "hf")
    assert (out / "model.safetensors").is_file()
    for name in ("conditioning.json", "ilql_heads.safetensors", "ilql.json"):
        assert (out / name).read_bytes() == (model_dir / name).read_bytes()
    _, tokenizer = load_causal_lm(ModelCfg(path=str(out), device="cpu"))
    assert tokenizer.chat_template
    printed = capsys.readouterr().out
    assert "logit gap 0.00e+00" in printed and "identical greedy completions 20/20" in printed
    assert not leftovers(out.parent)


def test_a_run_directory_exports_its_model_beside_it(model_dir):
    run = model_dir.parent / "run"
    run.mkdir()
    (run / "config.toml").write_text("# rlhfkit sft\n")
    shutil.move(model_dir, run / "model")
    assert dispatch(["export", str(run), "--format", "hf", *FAST]) == 0
    assert (run / "export-hf" / "model.safetensors").is_file()


@pytest.mark.parametrize("gguf_type", ["f16", "q8_0"])
def test_gguf_loads_in_llama_cpp_and_passes(model_dir, gguf_type, capsys):
    need("llama_cpp")
    out = export(model_dir, "--format", "gguf", "--gguf_type", gguf_type)
    import gguf

    reader = gguf.GGUFReader(out / "model.gguf")
    assert (
        reader.fields["tokenizer.chat_template"].contents()
        == (model_dir / "chat_template.jinja").read_text()
    )
    weights = {t.name: t.tensor_type.name for t in reader.tensors}
    assert weights["blk.0.attn_q.weight"] == gguf_type.upper()
    assert weights["blk.0.attn_norm.weight"] == "F32"
    # f16 was held to the exact bound; a random tiny model's near-tied logits may still flip a
    # greedy token, so completions are compared on SmolLM2 (slow test), not here
    assert f"as gguf {gguf_type} ->" in capsys.readouterr().out


def test_onnx_with_kv_cache_reproduces_the_original(model_dir, capsys):
    need("onnxruntime", "onnx")
    out = export(model_dir, "--format", "onnx")
    assert (out / "model.onnx").is_file() and (out / "tokenizer.json").is_file()
    # the runner decodes step by step through present_keys/values: same completions as torch
    assert "identical greedy completions 20/20" in capsys.readouterr().out


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_int8_passes_its_check_with_int8_weights(model_dir, engine):
    need("torchao" if engine == "torch" else "onnxruntime")
    out = export(model_dir, "--format", "int8", "--int8_engine", engine)
    if engine == "torch":
        config = json.loads((out / "config.json").read_text())
        assert config["quantization_config"]["quant_method"] == "torchao"
        # the tiny model is a third embeddings and LM head, which stay float
        size = (out / "model.safetensors").stat().st_size
        assert size < 0.8 * (model_dir / "model.safetensors").stat().st_size
    else:
        import onnx

        graph = onnx.load(out / "model.onnx").graph
        assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)


def _perturb_after_write(monkeypatch, corrupt) -> None:
    from rlhfkit.models import formats

    real_write = formats.write

    def write_then_corrupt(target, model, tokenizer, source, out_dir):
        real_write(target, model, tokenizer, source, out_dir)
        corrupt(out_dir)

    monkeypatch.setattr(formats, "write", write_then_corrupt)


def test_a_corrupted_hf_export_fails_its_check_and_leaves_nothing(model_dir, monkeypatch):
    from safetensors.torch import load_file, save_file

    def scale_one_weight(out_dir: Path) -> None:
        weights = load_file(out_dir / "model.safetensors")
        weights["model.layers.1.mlp.down_proj.weight"] *= 1.5
        save_file(weights, out_dir / "model.safetensors", metadata={"format": "pt"})

    _perturb_after_write(monkeypatch, scale_one_weight)
    with pytest.raises(RlhfkitError, match="failed its check and was deleted: logits differ"):
        export(model_dir, "--format", "hf")
    assert not (model_dir.parent / "out").exists() and not leftovers(model_dir.parent)


def test_a_corrupted_gguf_fails_its_check_and_leaves_nothing(model_dir, monkeypatch):
    need("llama_cpp")
    import gguf
    import numpy as np

    def flip_a_weight(out_dir: Path) -> None:
        reader = gguf.GGUFReader(out_dir / "model.gguf", "r+")
        weight = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
        weight.data[:] = (weight.data.astype(np.float32) * -1).astype(weight.data.dtype)

    _perturb_after_write(monkeypatch, flip_a_weight)
    with pytest.raises(RlhfkitError, match="logits differ"):
        export(model_dir, "--format", "gguf")
    assert not (model_dir.parent / "out").exists() and not leftovers(model_dir.parent)


def test_help_documents_every_option(capsys):
    from rlhfkit import config_io
    from rlhfkit.commands import export as command

    assert dispatch(["export", "--help"]) == 0
    printed = capsys.readouterr().out
    for path, (owner, name, _) in config_io.option_paths(command.Config).items():
        assert f"--{path} " in printed and config_io.field_docs(owner).get(name)


def test_bad_input_is_a_one_line_error(tmp_path, model_dir):
    with pytest.raises(ConfigError, match="neither an rlhfkit run"):
        dispatch(["export", str(tmp_path), "--format", "hf"])
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        dispatch(["export", str(model_dir), "--out", str(tmp_path / "taken")])
    with pytest.raises(ConfigError, match="gguf_type.*applies to --format gguf only"):
        dispatch(["export", str(model_dir), "--format", "onnx", "--gguf_type", "q8_0"])
    with pytest.raises(ConfigError, match="int8_engine.*applies to --format int8 only"):
        dispatch(["export", str(model_dir), "--format", "hf", "--int8_engine", "onnx"])


@pytest.mark.slow
def test_smollm2_gguf_f16_matches_transformers_in_llama_cpp(tmp_path, capsys):
    """What only the real model shows: its 49k-token vocabulary and chat template read the same
    in llama.cpp, and 9 heads of 64 rotary dimensions (3 KV heads) permuted right."""
    need("llama_cpp")
    from rlhfkit.models import resolve_model_dir

    source = resolve_model_dir("smollm2")
    out = tmp_path / "smollm2-gguf"
    flags = ["--format", "gguf", "--out", str(out), *FAST]
    assert dispatch(["export", str(source), *flags]) == 0
    printed = capsys.readouterr().out
    assert "as gguf f16 ->" in printed and "identical greedy completions" in printed
