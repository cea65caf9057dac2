"""Data parallelism on PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``), and its checkpoints.

``--dist.strategy fsdp2`` shards each trained model's parameters, gradients and optimiser state
over the ranks; ``ddp`` keeps a full replica on every rank and all-reduces the gradients. Both
are ``fully_shard`` over a device mesh: ``fsdp2`` over a 1-D mesh of the ranks, ``ddp`` over a
(ranks x 1) mesh, which is FSDP2's hybrid mode with shards of size 1, i.e. data parallelism
with every parameter replicated (what ``torch.distributed``'s composable ``replicate`` is built
on). One mechanism keeps one set of rules: DTensor parameters, the same checkpoint path, the
same mixed-precision policy.

Why not ``DistributedDataParallel``: it synchronises gradients from hooks armed by the wrapped
module's own ``forward``, but rlhfkit's loops call the decoder directly (packed sequences, the
LM head over chunks of positions, value and reward heads on top), so a DDP wrapper around the
model would never arm and gradients would silently stay per-rank. FSDP2's hooks sit on each
unit it manages, so ``shard`` makes units of exactly the modules the loops call: each decoder
layer, the decoder itself (the root unit: embeddings, final norm and, tied, the LM head), and
each module outside the decoder that holds parameters of its own (an untied LM head, a value or
reward head).

Checkpoints (``save`` / ``load``) use ``torch.distributed.checkpoint`` (DCP): each rank writes its
shards (under ``ddp`` the replicated tensors are written once), and loading reshards, so a run
may resume at another world size. Loop state every rank holds alike (data position, schedules,
KL controller) is written by rank 0; each rank's RNG state is kept by rank.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import torch

from rlhfkit import distributed
from rlhfkit.config import DistCfg
from rlhfkit.errors import RlhfkitError

DCP_DIR = "dcp"  # the sharded model and optimiser state inside a checkpoint directory

# each sharded model's unsharded twin on the meta device (no memory): plain_copy's skeleton
_skeletons: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = (
    weakref.WeakKeyDictionary()
)


def _mesh(strategy: str) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    size = distributed.world_size()
    if strategy == "fsdp2":
        return init_device_mesh(distributed.device_type(), (size,), mesh_dim_names=("shard",))
    return init_device_mesh(
        distributed.device_type(), (size, 1), mesh_dim_names=("replicate", "shard")
    )


def _decoder_layers(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.ModuleList] | None:
    """(the decoder, its ModuleList of ``num_hidden_layers`` blocks); None for a model without a
    transformer inside (PPO's value head on the policy's trunk)."""
    config = next(
        (m.config for m in model.modules() if hasattr(getattr(m, "config", None), "to_dict")), None
    )
    if config is None:
        return None
    count = config.get_text_config().num_hidden_layers
    for module in model.modules():
        for child in module.children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == count:
                return module, child
    raise RlhfkitError(
        f"dist.strategy: cannot find the {count} layers of this {type(model).__name__} to shard "
        "them; run it in one process, or report the model"
    )


def shard(model: torch.nn.Module, cfg: DistCfg) -> None:
    """Make ``model`` data-parallel in place (``cfg.strategy``); the loops call it as before.
    A model already sharded (a learner rebuilt with one more model) is left as it is."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    if model in _skeletons:
        return
    options: dict[str, Any] = {"mesh": _mesh(cfg.strategy)}
    if cfg.mixed_precision == "bf16":
        # compute in bfloat16, reduce gradients and keep the weights and AdamW in float32
        options["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.float32
        )
    if cfg.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    _skeletons[model] = _copy_module(model, "meta")  # for plain_copy, once training is done
    _tie_head_by_reference(model)
    claimed: set[int] = set()
    if (found := _decoder_layers(model)) is not None:
        decoder, layers = found
        for layer in layers:
            fully_shard(layer, **options)
        fully_shard(decoder, **options)  # the root unit: embeddings, final norm
        claimed.update(id(p) for p in decoder.parameters())
    for module in model.modules():
        if any(id(p) not in claimed for p in module.parameters(recurse=False)):
            fully_shard(module, **options)  # an untied LM head, a value or reward head
            claimed.update(id(p) for p in module.parameters())


class _TiedHead(torch.nn.Module):
    """An LM head tied to the input embedding that reads the embedding's weight at each call.

    fully_shard swaps a parameter for the unit that holds it, the decoder's, so a head keeping
    its own reference to the shared weight would come untied (a stale copy, trained apart).
    Reading ``embedding.weight`` when called gets what the decoder's unit holds: the gathered
    weight after the decoder's forward, whose gradient FSDP2 reduces with the embedding's.
    """

    def __init__(self, embedding: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "embedding", embedding)  # not a child: its unit is the decoder's

    @property
    def weight(self) -> torch.Tensor:
        return self.embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.embedding.weight)


def _tie_head_by_reference(model: torch.nn.Module) -> None:
    """Replace an LM head tied to the input embedding with a ``_TiedHead``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA
    if not hasattr(base, "get_output_embeddings"):
        return
    head, embedding = base.get_output_embeddings(), base.get_input_embeddings()
    if (
        isinstance(head, torch.nn.Linear)
        and head.bias is None
        and embedding is not None
        and head.weight is embedding.weight
    ):
        base.set_output_embeddings(_TiedHead(embedding))


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (sharded parameters give a DTensor)."""
    from torch.distributed.tensor import DTensor

    return norm.full_tensor() if isinstance(norm, DTensor) else norm


# --- checkpoints ---------------------------------------------------------------------------------


def save(directory: Path, models: list[Any], optimizers: list[Any]) -> None:
    """Every rank writes its shards of the models and optimisers into ``directory / dcp``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    state = {}
    for index, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
        weights, optim = get_state_dict(model, optimizer)
        state[f"model{index}"], state[f"optim{index}"] = weights, optim
    dcp.save(state, checkpoint_id=str(directory / DCP_DIR))


def load(directory: Path, models: list[Any], optimizers: list[Any]) -> None:
    """Load ``save``'s shards into the models and optimisers, resharded to this world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
        set_state_dict,
    )

    state = {}
    for index, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
        weights, optim = get_state_dict(model, optimizer)
        # a tied LM head is saved under the embedding's name only (``_TiedHead``); a model not
        # sharded (resumed in one process) lists it twice
        for name in _tied_names(model):
            weights.pop(name, None)
        state[f"model{index}"], state[f"optim{index}"] = weights, optim
    try:
        dcp.load(state, checkpoint_id=str(directory / DCP_DIR))
    except Exception as e:  # DCP raises its own CheckpointException with every rank's error
        raise RlhfkitError(
            f"{directory / DCP_DIR}: cannot be loaded ({str(e).splitlines()[0]}); resume with "
            "the model, LoRA and dist settings the run started with, or start afresh with "
            "--run.overwrite"
        ) from None
    for index, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state[f"model{index}"],
            optim_state_dict=state[f"optim{index}"],
            options=StateDictOptions(strict=not _tied_names(model)),
        )


def _tied_names(model: Any) -> list[str]:
    """Names under which a parameter appears a second time (a tied LM head's weight)."""
    first = {name for name, _ in model.named_parameters()}
    return [name for name, _ in model.named_parameters(remove_duplicate=False) if name not in first]


def plain_copy(model: Any) -> Any:
    """``model`` itself in one process; sharded, a plain copy gathered on rank 0 (None on the
    other ranks, which must call this too: gathering is collective).

    The copy is built on the skeleton ``shard`` kept (the same modules on the meta device, no
    memory) and the full state dict, so it costs the memory of one whole model on rank 0, as
    writing a Hugging Face directory does anyway.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if model not in _skeletons:
        return model
    state = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not distributed.is_main():
        return None
    copy = _copy_module(_skeletons[model], "cpu")  # empty tensors, ties kept
    loaded = copy.load_state_dict(state, strict=False)
    # a tied LM head's weight is the embedding's, loaded under the embedding's name
    names = {id(p): n for n, p in copy.named_parameters() if n in state}
    untied = [n for n, p in copy.named_parameters(remove_duplicate=False) if id(p) not in names]
    if loaded.unexpected_keys or untied:
        raise RlhfkitError(
            f"exporting the trained model: its gathered weights do not fit the model "
            f"(missing {untied[:3]}, unexpected {loaded.unexpected_keys[:3]}); report this"
        )
    with torch.no_grad():  # buffers are never sharded; the state dict lacks non-persistent ones
        for name, buffer in copy.named_buffers():
            buffer.copy_(model.get_buffer(name))
    return copy.train(model.training)


def _copy_module(module: torch.nn.Module, device: str) -> torch.nn.Module:
    """A deep copy whose parameters and buffers are new, empty tensors on ``device``."""
    import copy

    memo: dict[int, Any] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        empty = torch.empty_like(tensor, device=device)
        memo[id(tensor)] = (
            torch.nn.Parameter(empty, tensor.requires_grad)
            if isinstance(tensor, torch.nn.Parameter)
            else empty
        )
    return copy.deepcopy(module, memo)
