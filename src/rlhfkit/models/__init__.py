"""Load causal language models and tokenizers; per-token log-probabilities for RL.

Nothing here contacts a model hub: a model is an embedded alias (prepared by ``rlhfkit.assets``)
or a local Hugging Face directory, loaded with ``local_files_only=True``.
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.checkpoint import checkpoint

from rlhfkit.config import ModelCfg
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.packing import packed_forward, recompute_as_run

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def pick_device(cfg_device: str) -> torch.device:
    """The torch device for ``model.device``: auto prefers a CUDA GPU, then Apple MPS, then CPU."""
    if cfg_device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(cfg_device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"model.device {cfg_device!r}: torch sees no CUDA GPU here; "
                "use --model.device cpu (or auto)"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"model.device {cfg_device!r}: only {count} CUDA device(s) are "
                f"visible (cuda:0..cuda:{count - 1}); pick one of those"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"model.device {cfg_device!r}: Apple MPS is not available here; "
            "use --model.device cpu (or auto)"
        )
    return device


def pick_dtype(cfg_dtype: str, device: torch.device) -> torch.dtype:
    """The weights dtype for ``model.dtype``: auto is bfloat16 on a GPU with it, else float32.

    float32 stays the CPU default: bfloat16 matmuls are slower on most CPUs and lose precision
    that small-model RL notices.
    """
    if cfg_dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        cfg_dtype
    ]


def pick_autocast(setting: str, device: torch.device, weights: torch.dtype) -> bool:
    """Whether ``model.autocast`` runs the model's matmuls in bfloat16 (see ``ModelCfg``).

    auto asks for AMX: without it a CPU emulates bfloat16 matmuls, slower than float32.
    """
    if setting == "auto":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        return device.type == "cpu" and weights == torch.float32 and bool(amx())
    return setting == "bfloat16"


def enable_autocast(module: torch.nn.Module) -> torch.nn.Module:
    """Make every call of ``module`` run under bfloat16 autocast, on its own device type.

    The forward is wrapped on the instance, so whoever calls the module (generation, packed
    forwards, the critic, a reward model) gets mixed precision without knowing of it, and a
    caller's own outer ``autocast_region`` keeps the cast weights cached across calls. Returns
    ``module``.
    """
    module.forward = types.MethodType(_autocast_forward, module)  # deepcopy rebinds a method
    return module


def keep_float32(module: torch.nn.Module) -> torch.nn.Module:
    """Make ``module`` compute in float32 even inside an autocast scope (an LM head: log-probs
    from bfloat16 logits would be off by ~0.1). Returns ``module``."""
    module.forward = types.MethodType(_float32_forward, module)
    return module


def _bfloat16_scope(module: torch.nn.Module) -> torch.autocast:
    return torch.autocast(next(module.parameters()).device.type, dtype=torch.bfloat16)


def _autocast_forward(self: torch.nn.Module, *args: object, **kwargs: object) -> object:
    with _bfloat16_scope(self):
        return type(self).forward(self, *args, **kwargs)


def _float32_forward(self: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    with torch.autocast(hidden.device.type, enabled=False):
        return type(self).forward(self, hidden.float())


def autocast_region(module: torch.nn.Module) -> AbstractContextManager[object]:
    """An autocast scope for many calls of ``module`` (a decoding loop), or a no-op.

    Each call's own autocast casts the weights to bfloat16 again; inside one outer scope autocast
    keeps the casts of trainable weights until the scope ends, so a decoding loop casts once.
    """
    if not uses_autocast(module):
        return nullcontext()
    return _bfloat16_scope(_decoder_of(module))


def uses_autocast(module: torch.nn.Module) -> bool:
    """Whether ``enable_autocast`` wrapped ``module`` (or its decoder)."""
    return getattr(_decoder_of(module).forward, "__func__", None) is _autocast_forward


def _decoder_of(module: torch.nn.Module) -> torch.nn.Module:
    return module.get_decoder() if hasattr(module, "get_decoder") else module


def resolve_model_dir(path_or_alias: str) -> Path:
    """A local model directory as given, or the cached directory of an embedded alias."""
    path = Path(os.path.expanduser(path_or_alias))
    if path.is_dir() and (path / "config.json").is_file():
        return path
    from rlhfkit.assets import resolve_model

    path = resolve_model(path_or_alias)  # prepares an alias on first use
    if not (path / "config.json").is_file():
        raise RlhfkitError(
            f"{path}: holds no config.json, so it is not a Hugging Face model "
            "directory; give the directory that save_pretrained wrote"
        )
    return path


def load_tokenizer(path_or_alias: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a model, set up for batched generation.

    Padding goes on the left so that every prompt ends in the same column and new tokens are
    appended in step across the batch. A model without a pad token pads with EOS; the attention
    mask, not the token, says what is padding.
    """
    from transformers import AutoTokenizer

    path = resolve_model_dir(str(path_or_alias))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise RlhfkitError(
            f"{path}: cannot load a tokenizer from this directory ({_one_line(e)}); "
            "save one there with tokenizer.save_pretrained"
        ) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise RlhfkitError(
                f"{path}: the tokenizer has neither a pad nor an EOS token, so "
                "generation cannot tell where a completion ends; add an eos_token "
                "to its tokenizer_config.json"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


LOCAL_WEIGHTS = {"local_files_only": True, "use_kernels": False}
"""``from_pretrained`` arguments for every model rlhfkit loads. Since 5.25 transformers swaps layers
for kernels it downloads from the Hugging Face Hub (on CUDA: RMSNorm, RoPE, activations) unless
``use_kernels`` is off, and rlhfkit never downloads at run time."""


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' own loading and saving bars, which would be noise inside a stage's;
    restore the setting after."""
    from transformers.utils import logging

    was_enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            logging.enable_progress_bar()


def load_causal_lm(cfg: ModelCfg) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM in eval mode on the configured device and dtype, with its tokenizer."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_dir(cfg.path)
    device = pick_device(cfg.device)
    tokenizer = load_tokenizer(path)
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=pick_dtype(cfg.dtype, device), **LOCAL_WEIGHTS
            )
    except (OSError, ValueError) as e:
        raise RlhfkitError(
            f"{path}: cannot load a causal language model from this directory "
            f"({_one_line(e)}); check that its weights are there and complete"
        ) from None
    if pick_autocast(cfg.autocast, device, model.dtype):
        enable_autocast(model.get_decoder())
        head = model.get_output_embeddings()
        if cfg.head_dtype == "bfloat16":
            enable_autocast(head)
        else:
            keep_float32(head)
    if cfg.gradient_checkpointing:
        checkpoint_activations(model)
    return model.to(device).eval(), tokenizer


def checkpoint_activations(model: PreTrainedModel) -> None:
    """Have ``model``'s layers recompute their activations in the backward pass rather than keep
    them (transformers' gradient checkpointing; active in train mode only, so sampling and the
    frozen reference are unaffected). Non-reentrant: it needs no gradient on the inputs, so
    frozen embeddings and LoRA work as they are, and it restores the RNG for dropout."""
    if not model.supports_gradient_checkpointing:
        raise RlhfkitError(
            f"model.gradient_checkpointing: {type(model).__name__} does not support it; "
            "turn it off for this model"
        )
    kwargs = {"use_reentrant": False, "context_fn": recompute_as_run(model.config)}
    if hasattr(model, "activation_checkpointing_enable"):  # the newer name; early 5.x lack it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    """Make ``model`` a frozen reference: no gradients, and under ``model.autocast`` weights that
    cost less memory and time for the same numbers. Returns ``model``.

    Under autocast its decoder's linear layers are stored in bfloat16: the copies autocast would
    make at every call (it caches the casts of trainable weights only), so no forward casts 107M
    weights again (a GRPO reference pass of SmolLM2: 0.30 s against 0.34). The other weights (the
    embedding the LM head is tied to, the norms) are copied too, in their own dtype: a model
    loaded from safetensors reads its weights through a memory map of the file, whose pages
    count in the process's memory once touched and stay while any weight still points into it.
    Casting the linears alone left that mapping, and raised peak memory by 0.19 GB; with every
    weight copied it goes, and the reference takes 0.33 GB instead of 0.54 (SmolLM2-135M)."""
    model.requires_grad_(False)
    if not uses_autocast(model):
        return model
    linears = [m for m in model.get_decoder().modules() if isinstance(m, torch.nn.Linear)]
    to_bfloat16 = {id(p) for m in linears for p in m.parameters(recurse=False)}
    with torch.no_grad():
        for param in model.parameters():  # tied weights are one parameter, copied once
            param.data = (
                param.data.to(torch.bfloat16) if id(param) in to_bfloat16 else param.data.clone()
            )
        for module in model.modules():
            for name, buffer in module.named_buffers(recurse=False):
                setattr(module, name, buffer.clone())
    return model


def _one_line(error: Exception) -> str:
    """A library's multi-line message folded into the one line the CLI prints."""
    return " ".join(str(error).split())


RECOMPUTE_LOGITS_ABOVE_BYTES = 256 * 2**20
"""Above this many bytes of float32 logits for a batch, ``token_logprobs`` recomputes them in the
backward pass instead of keeping them."""

LOGITS_CHUNK_BYTES = 128 * 2**20
"""The float32 logits ``token_logprobs`` computes at once, rows x positions x vocabulary: a
fixed number of positions would make a 64-row batch's chunk 800 MB at a 49k vocabulary."""


def token_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    prompt_columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """log p(token | everything before it) for each response token: (B, R), R = T - response_start.

    The distribution is softmax(logits / temperature), the one the tokens were sampled from
    (temperature 0, greedy decoding, uses the raw logits). Rows may be padded on either side:
    position ids count real tokens only, exactly as ``model.generate`` computes them. A position
    whose token or whose predecessor is padding gets 0.

    ``response_states`` then ``states_logprobs``: one backbone pass, then the LM head over the
    predicting positions only, in chunks (see both).
    """
    states = response_states(model, input_ids, attention_mask, response_start, prompt_columns)
    return states_logprobs(model, states, temperature, chunk_size)


@dataclass(frozen=True)
class ResponseStates:
    """A causal LM's last hidden states at the positions that predict real response tokens:
    what its LM head turns into log-probabilities, and a value head on the same trunk into
    values (``critic.PolicyValueHead``). Position P + t - 1 predicts response token t."""

    hidden: torch.Tensor
    """(M, H): one row per predicted real token, in row-major (B, R) order."""
    targets: torch.Tensor
    """(M,) the token each row predicts."""
    wanted: torch.Tensor
    """(B, R) bool: which response tokens the M rows are (the token and its predecessor real)."""

    def spread(self, per_token: torch.Tensor) -> torch.Tensor:
        """(M,) figures, one per row, -> (B, R) with 0 where no real token is predicted."""
        return torch.zeros(
            self.wanted.shape, dtype=per_token.dtype, device=per_token.device
        ).masked_scatter(self.wanted, per_token)


def response_states(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    prompt_columns: torch.Tensor | None = None,
) -> ResponseStates:
    """Run the backbone once over a (B, T) batch whose responses start at ``response_start``.

    A causal decoder on SDPA attention runs the batch packed (``rlhfkit.packing``): its padding is
    not run, and rows with the same prompt (the columns before ``response_start``, or each row's
    ``prompt_columns``) compute it once. Anything else runs padded.
    """
    rows, total = input_ids.shape
    if not 1 <= response_start < total:
        raise ValueError(f"response_start must lie in [1, {total}), got {response_start}")
    mask = attention_mask.bool()
    # packed, the rows sampled from one prompt hold that prompt once (GRPO's groups, DPO's pairs)
    run = packed_forward(
        model.get_decoder(),
        input_ids,
        attention_mask,
        response_start if prompt_columns is None else prompt_columns,
    )
    if run is not None:  # (N, H) real tokens; (B, T) -> their place in the packed row
        hidden, packing = run
        place = packing.place
    else:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        hidden = model.get_decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state.flatten(0, 1)  # (B*T, H)
        place = torch.arange(rows * total, device=input_ids.device).view(rows, total)
    # position t - 1 predicts token t: the predictions wanted, both ends real
    wanted = mask[:, response_start:] & mask[:, response_start - 1 : -1]  # (B, R)
    return ResponseStates(
        hidden=hidden[place[:, response_start - 1 : -1][wanted]],  # (M, H)
        targets=input_ids[:, response_start:][wanted],
        wanted=wanted,
    )


def states_logprobs(
    model: PreTrainedModel,
    states: ResponseStates,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """(B, R) log-probabilities of the response tokens under softmax(lm_head(states) / T).

    Full (B, T, V) float32 logits would dominate memory (8 x 512 x 150k floats is 2.5 GB), so the
    LM head is applied to chunks of the predicting positions only, each at most
    ``LOGITS_CHUNK_BYTES`` of logits unless ``chunk_size`` (positions of every row) says. With
    gradients on and more than ``RECOMPUTE_LOGITS_ABOVE_BYTES`` of logits, each chunk is
    checkpointed: its logits are recomputed in the backward pass instead of being kept, so RL
    losses can differentiate through this at the same memory.
    Assumes logits = lm_head(last hidden state), true for Llama, Qwen, Mistral, GPT-2 and kin.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    predicting, targets = states.hidden, states.targets  # (M, H), (M,)
    lm_head = model.get_output_embeddings()
    vocab = lm_head.weight.shape[0]
    scale = 1.0 / temperature if temperature > 0 else 1.0
    rows = states.wanted.shape[0]
    step = chunk_size * rows if chunk_size else max(1, LOGITS_CHUNK_BYTES // (vocab * 4))

    def chunk_logprobs(hidden_chunk: torch.Tensor, target_chunk: torch.Tensor) -> torch.Tensor:
        logits = lm_head(hidden_chunk).float()  # (C, V)
        if scale != 1.0:  # a pass over (C, V) floats, and another in the backward
            logits = logits * scale
        picked = logits.gather(-1, target_chunk.unsqueeze(-1)).squeeze(-1)  # (C,)
        return picked - logits.logsumexp(dim=-1)  # log_softmax without a second (C, V) tensor

    # Recomputing the head in the backward pass costs ~10% of a training step; do it only when
    # keeping the chunks' logits would cost real memory.
    checkpointed = (
        torch.is_grad_enabled()
        and predicting.requires_grad
        and targets.numel() * vocab * 4 > RECOMPUTE_LOGITS_ABOVE_BYTES
    )
    chunks = []
    for start in range(0, targets.numel(), step):
        args = (predicting[start : start + step], targets[start : start + step])
        if checkpointed:
            chunks.append(checkpoint(chunk_logprobs, *args, use_reentrant=False))
        else:
            chunks.append(chunk_logprobs(*args))
    picked = torch.cat(chunks) if chunks else predicting.new_zeros(0, dtype=torch.float32)  # (M,)
    return states.spread(picked)  # (B, R)
