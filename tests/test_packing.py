"""Packed forwards: the same hidden states, scores and gradients as the padded batch."""

from __future__ import annotations

import pytest
import torch

from conftest import SENTENCES, build_tiny_llama, build_tiny_tokenizer
from rlhfkit.models.reward_model import RewardModel
from rlhfkit.packing import pack, packed_forward, supports_packing


def padded_batch(tokenizer, texts, side):
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, side
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def test_pack_lays_out_the_real_tokens_with_restarting_positions():
    ids = torch.tensor([[5, 6, 7, 0], [0, 0, 8, 9], [1, 2, 3, 4]])
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    packed = pack(ids, mask)
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert packed.place.tolist() == [[0, 1, 2, -1], [-1, -1, 3, 4], [5, 6, 7, 8]]
    assert packed.last.tolist() == [2, 4, 8]
    n = 9  # the grid's empty cell
    assert packed.grid_source.view(3, 4).tolist() == [[0, 1, 2, n], [3, 4, n, n], [5, 6, 7, 8]]
    assert packed.token_cell.tolist() == [0, 1, 2, 4, 5, 8, 9, 10, 11]


def test_rows_with_the_same_prompt_pack_it_once():
    # three samples: two of prompt [5 6], one of prompt [7] (left-padded), responses after col 2
    ids = torch.tensor([[5, 6, 1, 2], [5, 6, 3, 0], [0, 7, 4, 4]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [0, 1, 1, 1]])
    packed = pack(ids, mask, shared_prefix=2)
    assert packed.input_ids.tolist() == [[5, 6, 1, 2, 3, 7, 4, 4]]  # [5 6] once
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1, 2]]
    assert packed.place.tolist() == [[0, 1, 2, 3], [0, 1, 4, -1], [-1, 5, 6, 7]]
    assert packed.last.tolist() == [3, 4, 7]
    n = 8
    assert packed.grid_source.view(3, 4).tolist() == [[0, 1, 2, 3], [0, 1, 4, n], [5, 6, 7, n]]
    assert packed.token_cell.tolist() == [0, 1, 2, 3, 6, 8, 9, 10]  # the packing row's cells


def test_pack_declines_what_it_cannot_hold():
    ids = torch.ones(2, 3, dtype=torch.long)
    assert pack(ids, torch.tensor([[1, 1, 0], [0, 0, 0]])) is None  # an empty row
    assert pack(ids, torch.tensor([[1, 0, 1], [1, 1, 1]])) is None  # a gap inside a row


@pytest.mark.parametrize("side", ["right", "left"])
def test_packed_hidden_states_and_gradients_equal_the_padded_ones(side):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(len(tokenizer), tokenizer.eos_token_id).model.train()  # GQA: 4 q, 2 kv
    ids, mask = padded_batch(tokenizer, [SENTENCES[0], "no", SENTENCES[3], "the sea"], side)
    assert (mask == 0).any()  # the batch has padding to leave out

    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    padded = model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
    padded_real = padded[mask.bool()]  # (N, H), row by row
    padded_real.square().sum().backward()
    padded_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    hidden, packing = packed_forward(model, ids, mask)  # (N, H)
    assert packing.input_ids.shape[1] == mask.sum() < mask.numel()
    assert (packing.place[mask.bool()] == torch.arange(int(mask.sum()))).all()
    torch.testing.assert_close(hidden, padded_real, rtol=1e-5, atol=1e-5)
    hidden.square().sum().backward()
    # The two layouts sum in other orders, so each parameter's gradient is compared as a whole:
    # element by element, on a 2-core AMD EPYC 2 of 7,136 differed by up to 9e-5 (1.4e-4
    # relative), past the 1e-5 that held on an Intel Xeon. Whole gradients there: at most 3e-7
    # relative error with right padding, 3.9e-5 with left (the q/k projections, whose gradient
    # passes through softmax's backward). A packing fault (attention across sequences, a
    # wrong position) is off by orders of magnitude more.
    errors = {
        name: float((param.grad - want).norm() / want.norm().clamp(min=1e-12))
        for (name, param), want in zip(model.named_parameters(), padded_grads, strict=True)
    }
    assert max(errors.values()) < 1e-3, errors
    assert model.config._attn_implementation == "sdpa"  # restored for every other forward


def test_prompts_ending_in_different_columns_are_shared_row_by_row():
    # DPO's batches: chosen and rejected of two pairs, right-padded, prompts of 2 and 1 tokens
    ids = torch.tensor([[5, 6, 1, 2], [7, 3, 0, 0], [5, 6, 4, 0], [7, 8, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]])
    packed = pack(ids, mask, shared_prefix=torch.tensor([2, 1, 2, 1]))
    assert packed.input_ids.tolist() == [[5, 6, 1, 2, 7, 3, 4, 8, 9]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 1, 2]]
    assert packed.place.tolist() == [[0, 1, 2, 3], [4, 5, -1, -1], [0, 1, 6, -1], [4, 7, 8, -1]]
    # the same tokens but a prompt one column longer: not the same prompt, nothing shared
    assert pack(ids, mask, shared_prefix=torch.tensor([2, 1, 2, 2])).input_ids.shape[1] == 10


def test_a_shared_prompt_gives_the_same_hidden_states_and_gradients():
    """GRPO's batches: G samples of each prompt, the prompt left-padded, computed once."""
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(len(tokenizer), tokenizer.eos_token_id).model.train()
    tokenizer.pad_token = tokenizer.eos_token
    prompts = tokenizer(
        ["The sea", "What is two plus three?"],
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    width = prompts["input_ids"].shape[1]
    generator = torch.Generator().manual_seed(0)
    responses = torch.randint(0, len(tokenizer), (4, 5), generator=generator)
    ids = torch.cat([prompts["input_ids"].repeat_interleave(2, 0), responses], dim=1)
    mask = torch.cat(
        [
            prompts["attention_mask"].repeat_interleave(2, 0),
            torch.tensor([[1] * 5, [1, 1, 0, 0, 0], [1] * 5, [1, 1, 1, 0, 0]]),
        ],
        dim=1,
    )

    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    padded = model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
    weights = torch.linspace(0.5, 2.0, padded.shape[-1])  # a loss on every real state
    (padded[mask.bool()] * weights).sum().backward()
    padded_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    hidden, packing = packed_forward(model, ids, mask, shared_prefix=width)
    assert packing.input_ids.shape[1] == mask.sum() - mask[1::2, :width].sum()  # prompts once
    real = mask.bool()
    torch.testing.assert_close(hidden[packing.place[real]], padded[real], rtol=1e-5, atol=1e-5)
    # each shared prompt state counts once per row that reads it, as in the padded batch
    (hidden[packing.place[real]] * weights).sum().backward()
    for got, want in zip((p.grad for p in model.parameters()), padded_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_reward_model_scores_are_the_same_packed_or_padded(tiny_model_dir):
    torch.manual_seed(0)
    model = RewardModel.from_backbone(str(tiny_model_dir), max_length=64, device="cpu")
    assert model.packed
    batch = model.encode(["Hi.", SENTENCES[0], "no", SENTENCES[3] + " " + SENTENCES[4]])
    packed_scores = model(**batch)
    model.packed = False
    torch.testing.assert_close(packed_scores, model(**batch), rtol=1e-5, atol=1e-5)


def test_a_lora_backbone_runs_packed(tiny_model_dir):
    from rlhfkit.config import LoraCfg
    from rlhfkit.models.lora import attach_lora

    torch.manual_seed(0)
    model = RewardModel.from_backbone(str(tiny_model_dir), max_length=64, device="cpu")
    model.backbone = attach_lora(model.backbone, LoraCfg(rank=4), task_type=None)
    assert supports_packing(model.backbone)
    batch = model.encode(["Hi.", SENTENCES[0], SENTENCES[2]])
    packed_scores = model(**batch)
    packed_scores.sum().backward()  # gradients reach the adapters through the packed attention
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0
        for name, p in model.backbone.named_parameters()
        if "lora_" in name
    )
    model.packed = False
    torch.testing.assert_close(packed_scores, model(**batch), rtol=1e-5, atol=1e-5)


def test_batches_packing_cannot_hold_run_padded():
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(len(tokenizer), tokenizer.eos_token_id).model
    assert (
        packed_forward(
            model, torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [0, 0, 0]])
        )
        is None
    )
    model.set_attn_implementation("eager")
    assert not supports_packing(model)  # the user's choice of attention is left alone


def test_only_causal_full_attention_decoders_are_packed(tiny_model_dir):
    from transformers import BertConfig, BertModel, MistralConfig, MistralModel

    tokenizer = build_tiny_tokenizer()
    assert supports_packing(build_tiny_llama(len(tokenizer), tokenizer.eos_token_id))
    bert = BertModel(
        BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
        )
    )
    assert not supports_packing(bert)  # bidirectional
    mistral = MistralModel(
        MistralConfig(
            vocab_size=50,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=16,
        )
    )
    assert not supports_packing(mistral)  # a sliding window the packed grid would not apply
    mean_pooled = RewardModel.from_backbone(
        str(tiny_model_dir), pooling="mean", max_length=64, device="cpu"
    )
    assert not mean_pooled.packed  # mean pooling reads every position: it keeps the padded batch


def test_critic_values_are_the_same_packed_or_padded(tiny_model_dir, monkeypatch):
    import rlhfkit.models.critic
    from rlhfkit.models import load_tokenizer
    from rlhfkit.models.critic import ValueModel

    tokenizer = load_tokenizer(tiny_model_dir)
    critic = ValueModel(build_tiny_llama(len(tokenizer), tokenizer.eos_token_id).model, 32)
    torch.nn.init.normal_(critic.head.weight)  # a zero head would give 0 either way
    prompts = tokenizer(
        ["The sea", "What is two plus three?", "The sea"], padding=True, return_tensors="pt"
    )  # left-padded; a prompt twice, as in a group
    start = prompts["input_ids"].shape[1]
    ids = torch.cat([prompts["input_ids"], torch.randint(0, len(tokenizer), (3, 4))], dim=1)
    mask = torch.cat(
        [prompts["attention_mask"], torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])], dim=1
    )
    packed = critic(ids, mask, start)
    monkeypatch.setattr(rlhfkit.models.critic, "packed_forward", lambda *args, **kwargs: None)
    padded = critic(ids, mask, start)
    real = mask[:, start:].bool()  # the states whose values are used
    torch.testing.assert_close(packed[real], padded[real], rtol=1e-5, atol=1e-5)
