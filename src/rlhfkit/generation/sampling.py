"""Drawing the next token: exact categorical sampling by inverting the cumulative distribution.

``torch.multinomial``, which ``model.generate`` samples with, draws one token per row by racing
an exponential variate for every entry of the vocabulary. On a CPU that costs 26-33 ms for 16
rows of SmolLM2's 49k-token vocabulary, a sixth of one decoding step of the model. Inverting the
cumulative distribution draws from the same distribution with one uniform variate per row, about
1 ms (``bench/draw_vs_multinomial.py``). On a GPU, where ``torch.multinomial`` is fast, it stays.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhfkit.errors import RlhfkitError

BLOCK = 256
"""Tokens per block of the two-stage search: a block by its mass, then a token inside it."""

NOT_A_DISTRIBUTION = (
    "the model's next-token distribution holds NaN, inf or no mass at all (its "
    "weights or inputs are not finite); check the model, or lower optim.lr if "
    "training made it so"
)


def draw(probs: Tensor) -> Tensor:
    """(B,) token ids, row b's drawn with probability ``probs[b, v] / sum_v probs[b, v]``.

        i_b = min { v : C_bv > u_b },   C_bv = sum_{w <= v} p_bw,   u_b ~ U[0, C_b,V-1)

    Each token owns the interval [C_b,v-1, C_bv) of width p_bv, so a token of probability 0 (one
    top-k or top-p removed) is never drawn. The search runs in two stages, so that no (B, V)
    cumulative sum is written: the block of ``BLOCK`` tokens whose cumulative mass passes u, then
    the token inside it whose cumulative mass passes what is left of u. The running sums are
    float64: in float32 their rounding near 1 (6e-8) would move each of 49k tokens'
    probabilities by up to that. Uses torch's global random generator, like
    ``torch.multinomial``, which draws on any device but the CPU, where it is fast.
    """
    if probs.device.type != "cpu":
        # a GPU runs torch.multinomial as a few fast kernels; this search would launch two dozen
        # small ones per token, and decoding a small model there is bound by launches
        return torch.multinomial(probs, num_samples=1).squeeze(-1)
    rows, vocab = probs.shape
    whole = vocab - vocab % BLOCK
    block_mass = probs[:, :whole].reshape(rows, -1, BLOCK).sum(dim=-1)  # (B, V/BLOCK)
    if whole < vocab:  # the last, shorter block
        block_mass = torch.cat([block_mass, probs[:, whole:].sum(-1, True)], dim=1)
    # each block's mass summed in the input's precision (its error is relative to that block
    # alone), the running total over blocks in float64
    block_cdf = block_mass.double().cumsum(dim=-1)  # (B, blocks)
    total = block_cdf[:, -1:]  # (B, 1)
    if not bool(torch.isfinite(total).all() and (total > 0).all()):
        raise RlhfkitError(NOT_A_DISTRIBUTION)

    u = _below(torch.rand(total.shape, dtype=torch.float64) * total, total)  # (B, 1)
    block = torch.searchsorted(block_cdf, u, right=True)  # (B, 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), 0.0)  # (B, 1)
    columns = block * BLOCK + torch.arange(BLOCK)  # (B, BLOCK)
    inside = torch.where(columns < vocab, probs.gather(1, columns.clamp(max=vocab - 1)), 0.0)
    inside_cdf = inside.double().cumsum(dim=-1)  # (B, BLOCK)
    # u - before lies in [0, the block's mass); summed the other way, the block may come out a
    # rounding error lighter, and a u past it would leave the block
    offset = torch.searchsorted(inside_cdf, _below(u - before, inside_cdf[:, -1:]), right=True)
    return (block * BLOCK + offset).squeeze(-1)  # (B,)


def _below(value: Tensor, bound: Tensor) -> Tensor:
    """``value``, or the largest float under ``bound`` where it reaches ``bound``: a u equal to a
    cumulative total would fall past the last token of nonzero probability."""
    return torch.minimum(value, torch.nextafter(bound, torch.zeros_like(bound)))
