"""The process group a run belongs to, as ``torchrun`` started it, and the reductions over it.

One process (no launcher) is a world of size 1: every function here is then a no-op, so the
loops call them unconditionally. Under ``torchrun --nproc_per_node N``, ``init`` joins the group
(NCCL on CUDA, gloo on the CPU) with a timeout, so a rank that dies makes the others fail with
an error instead of waiting forever.
"""

from __future__ import annotations

import datetime
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# The queries (rank, world size, is_main) never import torch: the CLI asks them before a
# command's --help, which must stay fast. The collectives run only once torch is loaded.


_joined = False  # init() ran under a launcher: the process group is the run's


def _group() -> Any:
    """``torch.distributed`` when this process joined the run's process group, else None.

    A group some library set up for itself (vLLM's in-process engine starts one of size 1)
    is not the run's: only one ``init`` joined makes the run data-parallel.
    """
    dist = sys.modules.get("torch.distributed")
    joined = _joined and dist is not None and dist.is_available() and dist.is_initialized()
    return dist if joined else None


def launched() -> bool:
    """Whether a launcher (torchrun, or Slurm through it) started this process: then it joins a
    process group, even of one (``--nproc_per_node 1``: FSDP2's mixed precision and CPU
    offload on one GPU)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init(timeout_s: float) -> None:
    """Join the process group torchrun describes in the environment (once; later calls return).

    The CUDA device is the one of this node's ``LOCAL_RANK``.
    """
    import torch
    import torch.distributed as dist

    global _joined
    if not launched():
        return
    _joined = True
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def is_collective_error(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed: a rank gone, or silent past the timeout."""
    dist = sys.modules.get("torch.distributed")
    if dist is None:
        return False
    if isinstance(error, dist.DistError):
        return True
    # a collective inside FSDP2 or autograd surfaces the backend's own RuntimeError
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        mark in text for mark in ("gloo", "nccl", "processgroup", "closed by peer")
    )


def shutdown() -> None:
    """Leave the process group (at the end of a command)."""
    global _joined
    if (dist := _group()) is not None:
        dist.destroy_process_group()
    _joined = False


def active() -> bool:
    """Whether this process is in a process group (torchrun started it)."""
    return _group() is not None


def rank() -> int:
    """This process's rank (0 in one process; torchrun's ``RANK`` before ``init``)."""
    dist = _group()
    return dist.get_rank() if dist is not None else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many processes the run has (torchrun's ``WORLD_SIZE``, already before ``init``:
    configs are checked against it)."""
    if (dist := _group()) is not None:
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Rank 0: the one process that writes the run directory and shows progress."""
    return rank() == 0


def device_type() -> str:
    dist = _group()
    return "cuda" if dist is not None and dist.get_backend() == "nccl" else "cpu"


def is_data_parallel(model: Any) -> bool:
    """Whether ``model`` was made data-parallel (its parameters are DTensors: FSDP2's)."""
    if not active():
        return False
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def forward_is_collective(model: Any) -> bool:
    """Whether ``model``'s forward gathers parameters from the other ranks (FSDP2 shards), so
    that every rank must run the same number of forwards: generation then keeps every rank
    stepping until the last one is done."""
    if not active():
        return False
    from torch.distributed.tensor import DTensor, Shard

    return any(
        isinstance(p, DTensor)
        and any(
            isinstance(placement, Shard) and p.device_mesh.size(dim) > 1
            for dim, placement in enumerate(p.placements)
        )
        for p in model.parameters()
    )


def barrier() -> None:
    if active():
        _group().barrier()


def sum_floats(values: Sequence[float]) -> list[float]:
    """Each value summed over the ranks (one collective for all of them)."""
    if not active():
        return list(values)
    import torch

    tensor = torch.tensor(list(values), dtype=torch.float64, device=device_type())
    _group().all_reduce(tensor)
    return tensor.tolist()


def mean_floats(values: dict[str, float]) -> dict[str, float]:
    """Each metric averaged over the ranks (ranks holding equal shares of the batch). A rank
    whose value is NaN (a mean over none of its samples) is left out of that metric's mean."""
    if not active():
        return dict(values)
    present = [0.0 if math.isnan(v) else 1.0 for v in values.values()]
    sums = sum_floats([0.0 if math.isnan(v) else v for v in values.values()] + present)
    totals, counts = sums[: len(values)], sums[len(values) :]
    return {
        key: total / count if count else math.nan
        for key, total, count in zip(values, totals, counts, strict=True)
    }


def sum_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks (a new tensor; the input is left as it is)."""
    if not active():
        return tensor
    import torch

    total = tensor.detach().to(device_type(), torch.float64).clone()
    _group().all_reduce(total)
    return total.to(tensor.device, tensor.dtype)


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of ``tensor`` (the same shape on each), concatenated in rank order."""
    if not active():
        return tensor
    import torch

    local = tensor.detach().to(device_type())
    parts = [torch.empty_like(local) for _ in range(world_size())]
    _group().all_gather(parts, local)
    return torch.cat(parts).to(tensor.device)


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a small picklable object: a path, a list of states)."""
    if not active():
        return value
    box = [value]
    _group().broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not active():
        return [value]
    out: list[Any] = [None] * world_size()
    _group().all_gather_object(out, value)
    return out


def share(count: int) -> slice:
    """This rank's contiguous share of ``count`` items: equal shares when the ranks divide
    ``count``, else shares that differ by at most one."""
    size, index = world_size(), rank()
    return slice(index * count // size, (index + 1) * count // size)
