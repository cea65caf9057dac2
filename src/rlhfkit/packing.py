"""Packed forwards: a batch's real tokens side by side in one row, so no padding is computed.

A padded batch (B, T) runs every projection and MLP, most of a forward and its backward, on the
padding as well. Texts of mixed length waste a quarter to a third of a step that way (a batch of
reward-model pairs here: 865 real tokens in a 16 x 75 grid of 1200). Packing keeps only the real
tokens, (1, N), with position ids restarting at each text, so the linear layers see N rows:

    padded  (B, T):  [a a a . .][b b b b b][c c . . .]      . = padding, computed anyway
    packed  (1, N):  [a a a b b b b b c c]   positions 0 1 2 0 1 2 3 4 0 1

Attention is the one place where texts must stay apart. ``packed_sdpa``, registered with
transformers' attention interface, scatters the packed queries, keys and values back into a
(B, T) grid with each text starting at column 0, runs causal scaled-dot-product attention (the
causal mask alone keeps a text's real tokens to themselves and their own past: the padding sits
after them), and gathers the real positions back. The grid costs B x T x T attention, what the
padded batch paid; the N-row projections are what packing saves.

``packed_forward`` runs a model this way for one call, on the CPU (``PACKED_DEVICES``), then
restores its attention setting, so generation and every other forward stay as they were. It
applies to causal decoders on transformers' SDPA attention (Llama, Qwen, Mistral without a
sliding window, Phi-3, OLMo and kin) that attend over the whole text; ``supports_packing`` says
which, and anything else runs padded as before. The forward is the same computation on the same tokens: the tests check
hidden states and gradients against the padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

ATTENTION = "rlhfkit_packed_sdpa"
"""The attention implementation's name in transformers' registry."""

PACKED_DEVICES = frozenset({"cpu"})
"""Devices whose batches run packed. Measured on CPU, where compute is proportional to tokens.
On CUDA a small model's step is bound by kernel launches rather than tokens, and packing adds a
few index kernels per layer, so it stays off there until bench/*_vs_trl.py --device cuda says."""


@dataclass(frozen=True)
class Packed:
    """A batch with its padding taken out. ``model(**packed.model_inputs())`` runs it."""

    input_ids: Tensor  # (1, N) every text's real tokens, one after another
    position_ids: Tensor  # (1, N) 0.. within each text
    cu_seq_lens: Tensor  # (B + 1,) where each text starts in the row, then N
    max_length: int  # the longest text, T of the attention grid

    @property
    def last(self) -> Tensor:
        """(B,) the position in the row of each text's last token."""
        return self.cu_seq_lens[1:] - 1

    def model_inputs(self) -> dict[str, Any]:
        return {"input_ids": self.input_ids, "position_ids": self.position_ids,
                "cu_seq_lens_q": self.cu_seq_lens, "cu_seq_lens_k": self.cu_seq_lens,
                "max_length_q": self.max_length, "max_length_k": self.max_length}


def pack(input_ids: Tensor, attention_mask: Tensor) -> Packed | None:
    """The real tokens of a (B, T) batch packed into one row, or None when packing cannot hold
    it: a row with no real token, or a row whose real tokens are not one contiguous run."""
    mask = attention_mask.bool()
    lengths = mask.sum(-1)  # (B,)
    if not bool((lengths > 0).all()):
        return None
    # contiguous when the real tokens of a row span exactly its length (left or right padding)
    columns = torch.arange(mask.shape[1], device=mask.device)
    first = torch.where(mask, columns, mask.shape[1]).amin(-1)
    end = torch.where(mask, columns, -1).amax(-1) + 1
    if not bool((end - first == lengths).all()):
        return None
    cu_seq_lens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)  # (B + 1,)
    starts = torch.repeat_interleave(cu_seq_lens[:-1], lengths)  # (N,) each token's text start
    positions = torch.arange(int(cu_seq_lens[-1]), device=mask.device) - starts  # (N,)
    return Packed(input_ids=input_ids[mask][None], position_ids=positions[None],
                  cu_seq_lens=cu_seq_lens, max_length=int(lengths.max()))


def packed_sdpa(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                attention_mask: Tensor | None, dropout: float = 0.0,
                scaling: float | None = None, cu_seq_lens_q: Tensor | None = None,
                max_length_q: int | None = None, **kwargs: Any) -> tuple[Tensor, None]:
    """Attention over packed texts: query (1, Hq, N, d), key and value (1, Hkv, N, d) ->
    output (1, N, Hq, d), each text attending causally to itself only."""
    if cu_seq_lens_q is None:
        raise RuntimeError(f"{ATTENTION} attends over packed batches only: run the model through "
                           "rlhfkit.packing.packed_forward")
    lengths = cu_seq_lens_q.diff().long()  # (B,)
    rows, width = lengths.numel(), int(max_length_q or lengths.max())
    text = torch.repeat_interleave(torch.arange(rows, device=query.device), lengths)  # (N,)
    column = (torch.arange(query.shape[2], device=query.device)
              - torch.repeat_interleave(cu_seq_lens_q[:-1].long(), lengths))  # (N,)
    cell = text * width + column  # (N,) each token's cell in the (B, T) grid

    def to_grid(packed: Tensor) -> Tensor:  # (1, H, N, d) -> (B, H, T, d), zeros after a text
        heads, dim = packed.shape[1], packed.shape[3]
        grid = packed.new_zeros(heads, rows * width, dim).index_copy(1, cell, packed[0])
        return grid.view(heads, rows, width, dim).transpose(0, 1)

    out = F.scaled_dot_product_attention(
        to_grid(query), to_grid(key), to_grid(value), is_causal=True, scale=scaling,
        dropout_p=dropout if module.training else 0.0,
        enable_gqa=query.shape[1] != key.shape[1])  # (B, Hq, T, d)
    out = out.transpose(1, 2).reshape(rows * width, query.shape[1], query.shape[3])[cell]
    return out.unsqueeze(0), None  # (1, N, Hq, d)


def _base(model: Any) -> Any:
    """The transformers model under a LoRA (peft) wrapper, or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_packing(model: Any) -> bool:
    """Whether ``packed_forward`` can run this model: a causal decoder on transformers' SDPA
    attention, attending over the whole text (no sliding window, no soft cap)."""
    base = _base(model)
    config = getattr(base, "config", None)
    if config is None or not getattr(base, "_supports_attention_backend", False):
        return False
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False  # eager, flash attention and kin: the user's choice, left alone
    text = config.get_text_config()
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return False
    if getattr(text, "attn_logit_softcapping", None):
        return False
    if any(kind != "full_attention" for kind in getattr(text, "layer_types", None) or ()):
        return False
    causal = [m.is_causal for m in base.modules() if hasattr(m, "is_causal")]
    return bool(causal) and all(causal)


def packed_forward(model: Any, input_ids: Tensor, attention_mask: Tensor
                   ) -> tuple[Tensor, Packed] | None:
    """The last hidden states of a (B, T) batch's real tokens, (N, H), run packed, and the
    packing; None when the model or the batch cannot run packed (run it padded instead).

    ``model`` is a decoder or base model (``get_decoder()``, a reward model's backbone) that
    returns ``last_hidden_state``. Only this call attends with ``packed_sdpa``: the model's own
    attention setting is restored after it, so generation and other forwards are unchanged.
    """
    if input_ids.device.type not in PACKED_DEVICES or not supports_packing(model):
        return None
    packed = pack(input_ids, attention_mask)
    if packed is None:
        return None
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, packed_sdpa)
    config = _base(model).config
    saved = config._attn_implementation
    config._attn_implementation = ATTENTION
    try:
        hidden = model(**packed.model_inputs(), use_cache=False).last_hidden_state[0]  # (N, H)
    finally:
        config._attn_implementation = saved
    return hidden, packed
