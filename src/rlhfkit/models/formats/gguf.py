"""A Llama-family model as one GGUF file for llama.cpp and Ollama, and a llama.cpp runner for it.

Written with the ``gguf`` package (llama.cpp's own Python writer, its tensor-name map, its Q8_0
quantiser and its tokenizer readers), so names, layouts and metadata are llama.cpp's. Two things
llama.cpp's converter does that a plain tensor copy would miss are done here too:

- Q and K projections are stored with each head's rotary halves interleaved: Hugging Face's
  Llama rotates the two halves of a head (``rotate_half``), llama.cpp rotates adjacent pairs, so
  the rows of each head are reordered from (2, D/2) to (D/2, 2).
- The pre-tokenizer is named (``tokenizer.ggml.pre``): llama.cpp picks its split regex by that
  name, and a wrong one tokenises text differently from Hugging Face (the check compares them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhfkit.errors import ConfigError
from rlhfkit.models.formats.runner import Loaded

FILE_NAME = "model.gguf"


def write_gguf(model: Any, source: Path, out_dir: Path, gguf_type: str) -> Path:
    """Write ``model`` (a loaded Hugging Face Llama) with the tokenizer files of ``source`` as
    ``out_dir/model.gguf``; 2-D weights in ``gguf_type`` (f16 or q8_0), norms in f32."""
    import gguf

    config = model.config
    _check_supported(config)
    path = out_dir / FILE_NAME
    writer = gguf.GGUFWriter(path, "llama")
    _write_hyperparameters(writer, config, gguf_type)
    _write_tokenizer(writer, source)
    qtype = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight",))
        if name is None:
            raise ConfigError(
                f"export --format gguf: weight {hf_name!r} has no llama.cpp name; only plain "
                "Llama-architecture models (LlamaForCausalLM) can be written as GGUF"
            )
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = _interleave_rotary(data, config.num_attention_heads, head_dim)
        elif hf_name.endswith("k_proj.weight"):
            data = _interleave_rotary(data, config.num_key_value_heads, head_dim)
        _add_tensor(writer, name, data, qtype[gguf_type])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _check_supported(config: Any) -> None:
    problems = []
    if config.model_type != "llama":
        problems.append(f"model_type {config.model_type!r} (only 'llama' is written)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("attention or MLP biases")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_type {rope.get('rope_type')!r} (only plain RoPE)")
    if problems:
        raise ConfigError(
            "export --format gguf: this model has " + "; ".join(problems) + ", which this writer "
            "does not convert; export --format hf and use llama.cpp's convert_hf_to_gguf.py"
        )


def _write_hyperparameters(writer: Any, config: Any, gguf_type: str) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(str(getattr(config, "_name_or_path", "") or "rlhfkit export"))
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_type[gguf_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _interleave_rotary(weight: np.ndarray, heads: int, head_dim: int) -> np.ndarray:
    """(heads * D, H) rows of Hugging Face's half-split rotary layout -> llama.cpp's pairs."""
    rest = weight.shape[1:]
    halves = weight.reshape(heads, 2, head_dim // 2, *rest)  # (heads, 2, D/2, H)
    return halves.swapaxes(1, 2).reshape(weight.shape)  # (heads, D/2, 2, H) flattened back


def _add_tensor(writer: Any, name: str, data: np.ndarray, qtype: Any) -> None:
    import gguf

    # norms stay f32 (as llama.cpp's converter keeps them); a row llama.cpp cannot block-quantise
    # (its length not a multiple of the block size) is written in f16 instead
    if data.ndim == 1:
        writer.add_tensor(name, data)
        return
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32 != 0:
        qtype = gguf.GGMLQuantizationType.F16
    writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)


def _vocab_of(source: Path) -> dict[str, Any]:
    tokenizer = _tokenizer_json(source)
    model = tokenizer["model"]
    if (
        model.get("type") != "BPE"
        or model.get("byte_fallback")
        or ((tokenizer.get("decoder") or {}).get("type") != "ByteLevel")
    ):
        raise ConfigError(
            f"export --format gguf: {source}/tokenizer.json is not a byte-level BPE tokenizer "
            "(GPT-2 style, as SmolLM2's); this writer converts only those"
        )
    return tokenizer


def _tokenizer_json(source: Path) -> dict[str, Any]:
    file = source / "tokenizer.json"
    if not file.is_file():
        raise ConfigError(
            f"export --format gguf: {source} has no tokenizer.json; save a fast tokenizer "
            "there with tokenizer.save_pretrained"
        )
    return json.loads(file.read_text(encoding="utf-8"))


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's name for a tokenizer.json ``pre_tokenizer`` it splits text the same way as.

    ``gpt-2``: byte-level with GPT-2's regex alone; ``smollm``: single digits split first, then
    GPT-2's regex (SmolLM's and StarCoder's tokenizers).
    """

    def is_gpt2_bytes(step: dict[str, Any]) -> bool:
        return step.get("type") == "ByteLevel" and step.get("use_regex", True)

    if pre and is_gpt2_bytes(pre):
        return "gpt-2"
    steps = (pre or {}).get("pretokenizers") or []
    if (
        len(steps) == 2
        and steps[0].get("type") == "Digits"
        and steps[0].get("individual_digits")
        and is_gpt2_bytes(steps[1])
    ):
        return "smollm"
    raise ConfigError(
        f"export --format gguf: pre_tokenizer {json.dumps(pre)[:120]} has no known llama.cpp "
        "equivalent here (byte-level GPT-2 or SmolLM splits are); export --format hf and use "
        "llama.cpp's convert_hf_to_gguf.py"
    )


def _write_tokenizer(writer: Any, source: Path) -> None:
    import gguf

    tokenizer = _vocab_of(source)
    by_id = {index: text for text, index in tokenizer["model"]["vocab"].items()}
    types = dict.fromkeys(by_id, gguf.TokenType.NORMAL)
    for added in tokenizer.get("added_tokens") or []:
        by_id[added["id"]] = added["content"]
        special = added.get("special")
        types[added["id"]] = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
    size = max(by_id) + 1
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]  # holes padded, as llama.cpp does
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types([types.get(i, gguf.TokenType.UNUSED) for i in range(size)])
    special = gguf.SpecialVocab(source, load_merges=True, n_vocab=size)
    # Hugging Face's tokenizer decides whether a BOS is prepended; say so rather than let
    # llama.cpp guess from the vocabulary type
    special.add_special_token["bos"] = _adds_bos(source)
    special.add_to_gguf(writer, quiet=True)


def _adds_bos(source: Path) -> bool:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    plain = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x")["input_ids"]
    return tokenizer.bos_token_id is not None and full[: len(full) - len(plain)] == [
        tokenizer.bos_token_id
    ]


class GgufRunner:
    """A GGUF file in llama.cpp (llama-cpp-python): logits at every position and greedy decoding."""

    def __init__(self, path: Path, context: int):
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=str(path), n_ctx=context, logits_all=True, verbose=False, seed=0
        )
        self.chat_template = self.llm.metadata.get("tokenizer.chat_template", "")

    def tokenize(self, text: str) -> list[int]:
        """llama.cpp's own tokenisation (special tokens parsed, no BOS added here)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def logits(self, ids: list[int]) -> np.ndarray:
        """(T, V) float32 logits of every position of ``ids``."""
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)

    def greedy(self, ids: list[int], max_new_tokens: int, eos: int) -> list[int]:
        """Greedy completion of ``ids`` with llama.cpp's KV cache, up to EOS (excluded)."""
        self.llm.reset()
        out: list[int] = []
        for token in self.llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            if token == eos or len(out) == max_new_tokens:
                break
            out.append(token)
        return out


def load_gguf(out_dir: Path, context: int) -> Loaded:
    started = time.perf_counter()
    runner = GgufRunner(out_dir / FILE_NAME, context)
    return Loaded(runner, time.perf_counter() - started)
