"""Model loading and per-token logprobs, on the tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.config import ModelCfg
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.models import (
    autocast_region,
    freeze,
    load_causal_lm,
    load_tokenizer,
    pick_autocast,
    pick_device,
    pick_dtype,
    token_logprobs,
)


def test_pick_device_and_dtype():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    if not torch.cuda.is_available():
        assert pick_device("auto") in (torch.device("cpu"), torch.device("mps"))
        with pytest.raises(ConfigError, match="model.device 'cuda:1'.*no CUDA GPU"):
            pick_device("cuda:1")


def test_load_tokenizer_pads_left_with_eos(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"


def test_load_causal_lm_in_eval_mode_with_dtype(tiny_model_dir):
    model, tokenizer = load_causal_lm(
        ModelCfg(path=str(tiny_model_dir), dtype="bfloat16", device="cpu")
    )
    assert not model.training
    assert model.dtype == torch.bfloat16
    assert tokenizer.pad_token_id is not None


def test_models_load_from_local_files_without_hub_kernels(tiny_model_dir, monkeypatch):
    """transformers >= 5.25 fetches kernels from the Hub for a loaded model unless told not to."""
    import transformers

    from rlhfkit.models.reward_model import load_backbone

    seen = []
    for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
        load = auto.from_pretrained.__func__

        def spy(cls, path, *args, _load=load, **kwargs):
            seen.append(kwargs)
            return _load(cls, path, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(spy))
    model, _ = load_causal_lm(ModelCfg(path=str(tiny_model_dir), device="cpu"))
    load_backbone(tiny_model_dir, "cpu", "float32")
    assert len(seen) == 2
    assert all(kw["use_kernels"] is False and kw["local_files_only"] for kw in seen)
    assert not getattr(model, "use_kernels", False)


def test_pick_autocast_asks_for_amx_and_float32_weights(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not pick_autocast("off", cpu, torch.float32)
    assert pick_autocast("bfloat16", cpu, torch.float32) and pick_autocast(
        "bfloat16", cuda, torch.float32
    )
    for amx in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        assert pick_autocast("auto", cpu, torch.float32) is amx
        assert not pick_autocast("auto", cpu, torch.bfloat16)  # nothing left to speed up
        assert not pick_autocast("auto", cuda, torch.float32)  # a GPU picks bf16 weights instead


def _dtypes_seen(model):
    """Output dtypes of the first MLP projection and the LM head, recorded on every call."""
    seen = {"mlp": set(), "head": set()}
    model.get_decoder().layers[0].mlp.up_proj.register_forward_hook(
        lambda m, args, out: seen["mlp"].add(out.dtype)
    )
    model.get_output_embeddings().register_forward_hook(
        lambda m, args, out: seen["head"].add(out.dtype)
    )
    return seen


def _against_float32(model, tokenizer, float32_model):
    """``model``'s log-probs of a small batch (with gradients), the float32 model's, the batch."""
    input_ids, mask, start = _left_padded_batch(tokenizer, ["The movie", "A"], response_len=6)
    with torch.no_grad():
        exact = token_logprobs(float32_model, input_ids, mask, start)
    return token_logprobs(model, input_ids, mask, start), exact, (input_ids, mask)


def test_autocast_runs_the_decoder_in_bfloat16_and_the_lm_head_in_float32(
    tiny_model_dir, tiny_lm, monkeypatch
):
    import copy

    import rlhfkit.packing

    attention = []  # what packed attention computes in (float32: its bf16 backward is slow)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        rlhfkit.packing.F,
        "scaled_dot_product_attention",
        lambda q, *args, **kwargs: attention.append(q.dtype) or sdpa(q, *args, **kwargs),
    )
    model, tokenizer = load_causal_lm(
        ModelCfg(path=str(tiny_model_dir), device="cpu", autocast="bfloat16")
    )
    assert model.dtype == torch.float32  # the weights stay float32: only the matmuls change
    seen = _dtypes_seen(model)
    mixed, exact, (input_ids, mask) = _against_float32(model, tokenizer, tiny_lm[0])
    assert seen == {"mlp": {torch.bfloat16}, "head": {torch.float32}}
    assert attention and set(attention) == {torch.float32}
    assert mixed.dtype == torch.float32
    assert not torch.equal(mixed, exact)  # bfloat16 did round
    torch.testing.assert_close(mixed.detach(), exact, rtol=0, atol=0.05)
    mixed.sum().backward()  # gradients reach the float32 weights, in float32
    grad = model.get_decoder().layers[0].mlp.up_proj.weight.grad
    assert grad is not None and grad.dtype == torch.float32
    with autocast_region(model):  # an outer scope (decoding): the head still computes float32
        seen["head"].clear()
        model(input_ids=input_ids, attention_mask=mask)
    assert seen["head"] == {torch.float32}
    twin = copy.deepcopy(model)  # the copy's wrapped forward runs the copy, not the original
    assert twin.get_decoder().forward.__self__ is twin.get_decoder()
    assert autocast_region(tiny_lm[0]).__class__.__name__ == "nullcontext"  # autocast off


def test_a_bfloat16_head_under_autocast_computes_logits_in_bfloat16(tiny_model_dir, tiny_lm):
    model, tokenizer = load_causal_lm(
        ModelCfg(path=str(tiny_model_dir), device="cpu", autocast="bfloat16", head_dtype="bfloat16")
    )
    seen = _dtypes_seen(model)
    mixed, exact, _ = _against_float32(model, tokenizer, tiny_lm[0])
    assert seen == {"mlp": {torch.bfloat16}, "head": {torch.bfloat16}}
    assert mixed.dtype == torch.float32  # log-softmax of the bfloat16 logits runs in float32
    torch.testing.assert_close(mixed.detach(), exact, rtol=0, atol=0.1)
    mixed.sum().backward()
    grad = model.get_output_embeddings().weight.grad
    assert grad is not None and grad.dtype == torch.float32 and bool(grad.abs().sum() > 0)


def test_head_dtype_without_autocast_is_an_error_naming_the_fix():
    from rlhfkit.config_io import validate

    [problem] = validate(ModelCfg(head_dtype="bfloat16"), "model.")
    assert problem.startswith("model.head_dtype = 'bfloat16': applies under model.autocast")
    assert "--model.autocast bfloat16" in problem
    assert validate(ModelCfg(head_dtype="bfloat16", autocast="auto")) == []


@pytest.mark.parametrize("autocast", ["off", "bfloat16"])
def test_a_frozen_reference_computes_the_same_logprobs_in_less_memory(tiny_model_dir, autocast):
    """Under autocast a reference's decoder linears are stored as the bfloat16 copies autocast
    makes at every call: the same numbers, half those weights' bytes; the tied head float32."""
    model, tokenizer = load_causal_lm(
        ModelCfg(path=str(tiny_model_dir), device="cpu", autocast=autocast)
    )
    input_ids, mask, start = _left_padded_batch(tokenizer, ["The movie", "A"], response_len=6)
    with torch.no_grad():
        before = token_logprobs(model, input_ids, mask, start)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    pointers = {p.data_ptr() for p in model.parameters()}
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert freeze(model) is model
    with torch.no_grad():
        after = token_logprobs(model, input_ids, mask, start)
    assert torch.equal(before, after)
    assert not any(p.requires_grad for p in model.parameters())
    linears = [m for m in model.get_decoder().modules() if isinstance(m, torch.nn.Linear)]
    linear_floats = sum(p.numel() for m in linears for p in m.parameters())
    frozen_size = sum(p.numel() * p.element_size() for p in model.parameters())
    head = model.get_output_embeddings().weight
    assert (head is model.get_input_embeddings().weight) == tied and head.dtype == torch.float32
    if autocast == "bfloat16":
        assert frozen_size == size - 2 * linear_floats
        assert {p.dtype for m in linears for p in m.parameters()} == {torch.bfloat16}
        # every weight copied: none still points into the loaded file's memory map
        assert pointers.isdisjoint(p.data_ptr() for p in model.parameters())
    else:
        assert frozen_size == size


def test_missing_model_directory_is_an_error_naming_it(tmp_path):
    with pytest.raises(RlhfkitError, match="nowhere"):
        load_causal_lm(ModelCfg(path=str(tmp_path / "nowhere"), device="cpu"))
    with pytest.raises(RlhfkitError, match="no config.json"):
        load_causal_lm(ModelCfg(path=str(tmp_path), device="cpu"))


def _left_padded_batch(tokenizer, prompts, response_len, seed=0):
    """Left-padded prompts followed by random response tokens: (B, P + R) ids and mask."""
    prompt = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    generator = torch.Generator().manual_seed(seed)
    response = torch.randint(0, len(tokenizer), (len(prompts), response_len), generator=generator)
    input_ids = torch.cat([prompt["input_ids"], response], dim=1)
    attention_mask = torch.cat([prompt["attention_mask"], torch.ones_like(response)], dim=1)
    return input_ids, attention_mask, prompt["input_ids"].shape[1]


def _naive_logprobs(model, input_ids, attention_mask, response_start, temperature):
    """Reference: full (B, T, V) logits, then log-softmax and pick each next token."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).logits.float()  # (B, T, V)
    if temperature > 0:
        logits = logits / temperature
    logprobs = logits[:, response_start - 1 : -1].log_softmax(-1)  # (B, R, V)
    return logprobs.gather(-1, input_ids[:, response_start:, None]).squeeze(-1)  # (B, R)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_token_logprobs_equal_full_logits(tiny_lm, temperature):
    model, tokenizer = tiny_lm
    input_ids, mask, start = _left_padded_batch(  # a prompt twice, as GRPO's groups have it
        tokenizer,
        ["The movie", "What is two plus three? The answer", "A", "The movie"],
        response_len=9,
    )
    with torch.no_grad():
        expected = _naive_logprobs(model, input_ids, mask, start, temperature)
        for chunk_size in (1, 4, 64):
            got = token_logprobs(model, input_ids, mask, start, temperature, chunk_size=chunk_size)
            assert got.shape == (4, 9) and got.dtype == torch.float32
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_token_logprobs_chunks_by_a_byte_budget(tiny_lm, monkeypatch):
    """Unless told a chunk size, the LM head sees as many predictions at once as keep their
    logits within LOGITS_CHUNK_BYTES."""
    model, tokenizer = tiny_lm
    input_ids, mask, start = _left_padded_batch(
        tokenizer, ["The movie", "What is two plus three? The answer", "A"], response_len=9
    )
    import rlhfkit.models

    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(rlhfkit.models, "LOGITS_CHUNK_BYTES", vocab * 4 * 6)  # 6 predictions
    widths = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: widths.append(args[0].shape[0])
    )
    try:
        with torch.no_grad():
            got = token_logprobs(model, input_ids, mask, start)
    finally:
        hook.remove()
    assert widths == [6, 6, 6, 6, 3]  # 3 rows x 9 response positions, 6 at a time
    with torch.no_grad():
        torch.testing.assert_close(
            got, _naive_logprobs(model, input_ids, mask, start, 1.0), rtol=0, atol=1e-5
        )


@pytest.mark.parametrize("packed", [True, False])
def test_token_logprobs_of_right_padded_rows_packed_or_not(tiny_lm, monkeypatch, packed):
    """Rows of different lengths padded on the right, as SFT and DPO batch them: every real
    prediction equals the full-logits one, each padded position is 0, packed or padded."""
    import rlhfkit.models

    if not packed:
        monkeypatch.setattr(rlhfkit.models, "packed_forward", lambda *args, **kwargs: None)
    model, tokenizer = tiny_lm
    batch = tokenizer(
        ["The movie was long", "A", "What is two plus three? The answer is"],
        padding=True,
        padding_side="right",
        return_tensors="pt",
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any()
    with torch.no_grad():
        got = token_logprobs(model, ids, mask, 1, 0.9, chunk_size=2)
        expected = _naive_logprobs(model, ids, mask, 1, 0.9)
    real = mask[:, 1:].bool() & mask[:, :-1].bool()
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=1e-5)
    assert (got[~real] == 0).all()


def test_completion_logprobs_of_pairs_sharing_a_prompt(tiny_lm):
    """DPO's batches: a pair's chosen and rejected share their prompt, computed once, and give
    the full-logits log-probs of every completion token."""
    from rlhfkit.data.sequences import collate, completion_logprobs, encode

    model, tokenizer = tiny_lm
    pairs = [("The sea", " was calm", " roared loudly at night"), ("Count", " two", " three")]
    encoded = [
        encode(tokenizer, prompt, text, False, 64) for prompt, *texts in pairs for text in texts
    ]
    batch = collate(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        got, mask = completion_logprobs(model, batch)
        expected = _naive_logprobs(model, batch.input_ids, batch.attention_mask, 1, 1.0)
    torch.testing.assert_close(got[mask], expected[mask], rtol=0, atol=1e-5)
    assert mask.sum() == sum(len(e.ids) - e.completion_start for e in encoded)


@pytest.mark.parametrize("recompute", [True, False])
def test_token_logprobs_gradients_match_full_logits(tiny_model_dir, monkeypatch, recompute):
    """Chunked logprobs, with the head recomputed in backward or not, give the naive gradients."""
    import rlhfkit.models

    monkeypatch.setattr(rlhfkit.models, "RECOMPUTE_LOGITS_ABOVE_BYTES", 0 if recompute else 2**62)
    model, tokenizer = load_causal_lm(ModelCfg(path=str(tiny_model_dir), device="cpu"))
    input_ids, mask, start = _left_padded_batch(
        tokenizer, ["The sea", "Count the legs", "The sea"], 7
    )
    weights = torch.linspace(-1.0, 1.0, 3 * 7).reshape(3, 7)  # like advantages, mixed signs

    def grads(compute):
        model.zero_grad()
        (compute() * weights).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    expected = grads(lambda: _naive_logprobs(model, input_ids, mask, start, 0.8))
    got = grads(lambda: token_logprobs(model, input_ids, mask, start, 0.8, chunk_size=3))
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
