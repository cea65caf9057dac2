"""Drawing tokens (``rlhfkit.generation.sampling.draw``) and its use in the hf backend."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.config import GenCfg
from rlhfkit.errors import RlhfkitError
from rlhfkit.generation import get_backend, sampling
from rlhfkit.generation.sampling import draw


def test_draw_frequencies_match_the_probabilities():
    """200k draws of a fixed distribution: every frequency within 4 standard errors, and a
    chi-square statistic that a sampler off by a token's share would fail by far."""
    probs = torch.tensor([0.4, 0.0, 0.25, 0.2, 0.1, 0.05, 0.0])
    rows = 200_000
    torch.manual_seed(0)
    drawn = draw(probs.expand(rows, -1))
    counts = torch.bincount(drawn, minlength=len(probs)).double()
    expected = probs.double() * rows
    assert counts[probs == 0].sum() == 0
    kept = probs > 0
    standard_error = (rows * probs[kept] * (1 - probs[kept])).double().sqrt()
    assert ((counts[kept] - expected[kept]).abs() < 4 * standard_error).all(), counts.tolist()
    chi_square = float(((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum())
    assert chi_square < 20.5  # 4 degrees of freedom: p = 0.0004 for a correct sampler


def test_draw_across_blocks_edges_and_the_short_last_block():
    """Mass on both sides of block edges (255 | 256), in empty blocks' neighbours and in the
    last, shorter block of a 1000-token vocabulary (3 x 256 + 232)."""
    assert sampling.BLOCK == 256
    tokens = torch.tensor([3, 255, 256, 511, 770, 999])
    mass = torch.tensor([0.1, 0.3, 0.05, 0.15, 0.25, 0.15])
    probs = torch.zeros(1000).index_put((tokens,), mass)
    rows = 200_000
    torch.manual_seed(2)
    counts = torch.bincount(draw(probs.expand(rows, -1)), minlength=1000).double()
    assert counts.sum() == counts[tokens].sum() == rows
    expected = mass.double() * rows
    chi_square = float(((counts[tokens] - expected) ** 2 / expected).sum())
    assert chi_square < 22.5  # 5 degrees of freedom: p = 0.0004 for a correct sampler


def test_draw_takes_unnormalised_rows_and_never_draws_a_zero():
    probs = torch.tensor(
        [
            [0.0, 0.0, 3.0, 0.0, 1.0, 0.0],  # zeros first, between and last
            [2.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0, 5.0],
        ]
    )
    torch.manual_seed(1)
    drawn = draw(probs.repeat(2000, 1)).view(2000, 3)
    assert set(drawn[:, 0].tolist()) == {2, 4}
    assert (drawn[:, 1] == 0).all() and (drawn[:, 2] == 5).all()
    share = float((drawn[:, 0] == 2).double().mean())
    assert abs(share - 0.75) < 0.04  # 3 : 1


@pytest.mark.parametrize("uniform", [torch.zeros, torch.ones])
def test_uniforms_at_either_end_of_their_range_land_on_real_tokens(monkeypatch, uniform):
    """u = 0 must skip leading zeros; u = total (a product rounded up) would fall past the last
    token of nonzero mass."""
    monkeypatch.setattr(sampling.torch, "rand", lambda shape, **kw: uniform(shape, **kw))
    end = 1 if uniform is torch.zeros else 2  # the first or the last token of nonzero mass
    assert draw(torch.tensor([[0.0, 0.3, 0.7, 0.0]])).tolist() == [end]
    assert draw(torch.tensor([[0.0, 0.6, 0.4]])).tolist() == [end]
    assert draw(torch.tensor([[0.0, 1.0, 0.0]])).tolist() == [1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_draw_refuses_a_distribution_that_is_not_finite(bad):
    with pytest.raises(RlhfkitError, match="NaN, inf"):
        draw(torch.tensor([[0.5, 0.5], [bad, 0.5]]))
    with pytest.raises(RlhfkitError, match="no mass"):
        draw(torch.zeros(1, 4))


def test_off_the_cpu_draw_is_torch_multinomial(monkeypatch):
    calls = []
    monkeypatch.setattr(
        sampling.torch,
        "multinomial",
        lambda probs, num_samples: (
            calls.append(probs.device.type)
            or torch.zeros(len(probs), 1, dtype=torch.long, device=probs.device)
        ),
    )
    assert draw(torch.ones(3, 5, device="meta")).shape == (3,)
    assert calls == ["meta"]
    draw(torch.ones(3, 5))
    assert calls == ["meta"]  # the CPU inverts the distribution itself


def _teacher_forced_logits(model, rollout, row):
    """(R_row, V) logits that predicted each generated token of ``row``."""
    prompt = rollout.prompt_ids[row][rollout.prompt_mask[row] == 1]
    response = rollout.response_ids[row, : rollout.response_lengths[row]]
    ids = torch.cat([prompt, response])[None]
    with torch.no_grad():
        logits = model(ids).logits[0]
    return logits[len(prompt) - 1 : -1], response


def test_sampled_tokens_lie_inside_top_k_and_top_p(tiny_lm):
    model, tokenizer = tiny_lm
    backend = get_backend("hf", model, tokenizer)
    prompts = ["The movie", "A", "Please write a short poem", "What is"]
    for gen in (
        GenCfg(max_new_tokens=12, top_k=3, temperature=1.5),
        GenCfg(max_new_tokens=12, top_p=0.3, temperature=1.0),
    ):
        rollout = backend.generate(prompts, gen, seed=3)
        for row in range(len(prompts)):
            logits, response = _teacher_forced_logits(model, rollout, row)
            for step_logits, token in zip(logits, response.tolist(), strict=True):
                if gen.top_k:
                    allowed = step_logits.topk(gen.top_k).indices.tolist()
                else:  # the smallest set of most likely tokens holding top_p of the mass
                    probs, order = (step_logits / gen.temperature).softmax(-1).sort(descending=True)
                    before = probs.cumsum(0) - probs  # mass of the tokens ranked above each one
                    allowed = order[before < gen.top_p].tolist()
                assert token in allowed


def test_top_k_of_one_is_greedy_decoding(tiny_lm):
    model, tokenizer = tiny_lm
    backend = get_backend("hf", model, tokenizer)
    prompts = ["The movie", "What is two plus three? The answer is"]
    greedy = backend.generate(prompts, GenCfg(max_new_tokens=10, temperature=0.0), seed=0)
    top1 = backend.generate(prompts, GenCfg(max_new_tokens=10, top_k=1), seed=5)
    assert top1.response_ids.equal(greedy.response_ids)
