"""Packed forwards: a batch's real tokens side by side in one row, so no padding is computed.

A padded batch (B, T) runs every projection and MLP, most of a forward and its backward, on the
padding as well. Texts of mixed length waste a quarter to a third of a step that way (a batch of
reward-model pairs here: 865 real tokens in a 16 x 75 grid of 1200). Packing keeps only the real
tokens, (1, N), with position ids restarting at each text, so the linear layers see N rows:

    padded  (B, T):  [a a a . .][b b b b b][c c . . .]      . = padding, computed anyway
    packed  (1, N):  [a a a b b b b b c c]   positions 0 1 2 0 1 2 3 4 0 1

Attention is the one place where texts must stay apart. ``packed_sdpa``, registered with
transformers' attention interface, copies the packed queries, keys and values back into a
(B, T) grid with each text starting at column 0, runs causal scaled-dot-product attention (the
causal mask alone keeps a text's real tokens to themselves and their own past: the padding sits
after them), and reads each packed token's output back from its cell. The grid costs B x T x T
attention, what the padded batch paid; the N-row projections are what packing saves.

Rows that start with the same prompt, GRPO's G samples of each prompt or a DPO pair's chosen
and rejected, can share it (``shared_prefix``): the prompt is packed once, and every row's grid
reads its keys and values from that one copy, so its projections, MLPs and their gradients are
computed once, not once per row.

    rows      [p p a a][p p b .]         packed [p p a a b]   positions 0 1 2 3 2
    grid row 2 reads cells [p p b .] from packed 0 1 4

``packed_forward`` runs a model this way for one call, on the CPU (``PACKED_DEVICES``), then
restores its attention setting, so generation and every other forward stay as they were. It
applies to causal decoders on transformers' SDPA attention (Llama, Qwen, Mistral without a
sliding window, Phi-3, OLMo and kin) that attend over the whole text; ``supports_packing`` says
which, and anything else runs padded as before. The forward is the same computation on the
same tokens: the tests check hidden states and gradients against the padded batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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
    """A batch with its padding taken out. ``model(**packed.model_inputs())`` runs it.

    Rows that begin with the same prompt (``pack(..., shared_prefix=P)``) hold that prompt's
    tokens once: each such row's grid row reads them from the same packed positions.
    """

    input_ids: Tensor  # (1, N) the real tokens, each shared prompt once
    position_ids: Tensor  # (1, N) 0.. within each text; a row's own tokens go on from its prompt
    place: Tensor  # (B, T) where each input token sits in the packed row; -1 for padding
    grid_source: Tensor  # (B * W,) the packed token in each cell of the attention grid; N if none
    token_cell: Tensor  # (N,) the grid cell each packed token's output is read from
    width: int  # W, the longest text (its shared prompt included)

    @property
    def last(self) -> Tensor:
        """(B,) where each row's last real token sits in the packed row."""
        return self.place.amax(dim=-1)

    def model_inputs(self) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "rlhfkit_packed": self,
        }


def pack(
    input_ids: Tensor, attention_mask: Tensor, shared_prefix: int | Tensor = 0
) -> Packed | None:
    """The real tokens of a (B, T) batch packed into one row, or None when packing cannot hold
    it: a row with no real token, or a row whose real tokens are not one contiguous run.

    With ``shared_prefix`` P, rows whose first P columns are the same (tokens and padding: the
    G samples of one prompt in GRPO) share them: that prompt is computed once for all of them.
    P may differ by row, a (B,) tensor (right-padded pairs whose prompts end in different
    columns, as DPO's): rows share when their P and their first P columns are the same.
    """
    mask = attention_mask.bool()
    rows, total = mask.shape
    lengths = mask.sum(-1)  # (B,)
    if not bool((lengths > 0).all()):
        return None
    # contiguous when the real tokens of a row span exactly its length (left or right padding)
    columns = torch.arange(total, device=mask.device)
    first = torch.where(mask, columns, total).amin(-1)
    end = torch.where(mask, columns, -1).amax(-1) + 1
    if not bool((end - first == lengths).all()):
        return None

    # which rows share their prompt: the same ids where real, the same padding
    limit = torch.as_tensor(shared_prefix, device=mask.device).expand(rows)  # (B,) columns
    widest = int(limit.max())
    in_prompt = mask[:, :widest] & (columns[:widest] < limit[:, None])  # (B, P)
    owner = list(range(rows))  # the row that packs each row's prompt: itself, or the first
    if widest:
        prefix = torch.where(in_prompt, input_ids[:, :widest], -1)  # (B, P) -1: not prompt
        group = torch.unique(prefix, dim=0, return_inverse=True)[1].tolist()  # (B,)
        owner = [group.index(g) for g in group]
    prompt_lengths = in_prompt.sum(-1).tolist()  # (B,)
    width = int(lengths.max())
    place = torch.full((rows, total), -1, dtype=torch.long, device=mask.device)
    source_rows, source_columns, positions, cells = [], [], [], []
    count = 0
    for row in range(rows):  # B is a batch (tens of rows): a few tensor ops per row
        real = columns[mask[row]]  # (L,) this row's real columns, in order
        skip = prompt_lengths[row] if owner[row] != row else 0  # tokens another row packed
        if skip:
            place[row, real[:skip]] = place[owner[row], columns[mask[owner[row]]][:skip]]
        own = real[skip:]
        place[row, own] = torch.arange(count, count + own.numel(), device=mask.device)
        offsets = torch.arange(skip, skip + own.numel(), device=mask.device)  # in its text
        source_rows.append(torch.full_like(own, row))
        source_columns.append(own)
        positions.append(offsets)
        cells.append(row * width + offsets)  # its cell in the grid: its output is read there
        count += own.numel()
    # the attention grid: row b holds its whole text from column 0, a shared prompt included
    grid = torch.full((rows, width), count, dtype=torch.long, device=mask.device)  # N: empty
    grid[mask.nonzero(as_tuple=True)[0], (mask.cumsum(-1) - 1)[mask]] = place[mask]
    return Packed(
        input_ids=input_ids[torch.cat(source_rows), torch.cat(source_columns)][None],
        position_ids=torch.cat(positions)[None],
        place=place,
        grid_source=grid.flatten(),
        token_cell=torch.cat(cells),
        width=width,
    )


def packed_sdpa(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    rlhfkit_packed: Packed | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Attention over packed texts: query (1, Hq, N, d), key and value (1, Hkv, N, d) ->
    output (1, N, Hq, d), each text attending causally to itself (and its shared prompt) only."""
    if rlhfkit_packed is None:
        raise RuntimeError(
            f"{ATTENTION} attends over packed batches only: run the model through "
            "rlhfkit.packing.packed_forward"
        )
    packed = rlhfkit_packed
    rows, width = packed.place.shape[0], packed.width

    def to_grid(x: Tensor) -> Tensor:  # (1, H, N, d) -> (B, H, W, d), zeros in empty cells
        heads, dim = x.shape[1], x.shape[3]
        padded = torch.cat([x[0], x.new_zeros(heads, 1, dim)], dim=1)  # (H, N + 1, d)
        return padded[:, packed.grid_source].view(heads, rows, width, dim).transpose(0, 1)

    # Packed forwards run on the CPU (PACKED_DEVICES), whose bfloat16 flash-attention backward
    # takes ~9x as long as float32's (torch 2.13, SmolLM2 at 16 x 32 tokens); attention is a
    # small share of a step's matmuls, so under model.autocast it runs in float32 (for a float32
    # model nothing changes).
    dtype = query.dtype
    with torch.autocast(query.device.type, enabled=False):
        out = F.scaled_dot_product_attention(
            to_grid(query).float(),
            to_grid(key).float(),
            to_grid(value).float(),
            is_causal=True,
            scale=scaling,
            dropout_p=dropout if module.training else 0.0,
            enable_gqa=query.shape[1] != key.shape[1],
        )  # (B, Hq, W, d)
    out = out.transpose(1, 2).reshape(rows * width, query.shape[1], query.shape[3])
    return out[packed.token_cell].unsqueeze(0).to(dtype), None  # (1, N, Hq, d)


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


def packed_forward(
    model: Any, input_ids: Tensor, attention_mask: Tensor, shared_prefix: int | Tensor = 0
) -> tuple[Tensor, Packed] | None:
    """The last hidden states of a (B, T) batch's real tokens, (N, H), run packed, and the
    packing; None when the model or the batch cannot run packed (run it padded instead).

    ``model`` is a decoder or base model (``get_decoder()``, a reward model's backbone) that
    returns ``last_hidden_state``; ``shared_prefix`` as in ``pack``. The states of a shared prompt
    appear once: index them with ``Packed.place``. Only this call attends with ``packed_sdpa``:
    the model's own attention setting is restored after it, so generation and other forwards
    are unchanged.
    """
    if input_ids.device.type not in PACKED_DEVICES or not supports_packing(model):
        return None
    packed = pack(input_ids, attention_mask, shared_prefix)
    if packed is None:
        return None
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, packed_sdpa)
    with _attending_with(_base(model).config, ATTENTION):
        hidden = model(**packed.model_inputs(), use_cache=False).last_hidden_state[0]  # (N, H)
    return hidden, packed


def recompute_as_run(config: Any) -> Callable[[], tuple[Any, Any]]:
    """A ``context_fn`` for ``torch.utils.checkpoint``: a layer recomputed in the backward pass
    attends as it did in its forward. ``packed_forward`` switches the model's attention for its
    own call only, so by the backward the setting is back to the model's own; without this a
    packed layer would be recomputed with padded attention (and checkpoint refuse it)."""

    def context_fn() -> tuple[Any, Any]:
        return contextlib.nullcontext(), _attending_with(config, config._attn_implementation)

    return context_fn


@contextlib.contextmanager
def _attending_with(config: Any, attention: str) -> Iterator[None]:
    """``config``'s attention implementation set to ``attention`` for the block."""
    saved = config._attn_implementation
    config._attn_implementation = attention
    try:
        yield
    finally:
        config._attn_implementation = saved
