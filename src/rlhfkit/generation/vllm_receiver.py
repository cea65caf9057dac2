"""The vLLM server's side of ``--gen.backend vllm-server``: a weight-transfer engine over gloo.

vLLM's RL routes (``/init_weight_transfer_engine``, ``/start_weight_update``,
``/update_weights``, ``/finish_weight_update``) drive a weight-transfer engine inside each
inference worker; vLLM's own engines move weights over NCCL or CUDA IPC, so none runs on a CPU
or without a GPU on the trainer's side. This one joins a plain torch ``ProcessGroupGloo`` with
the trainer (trainer = rank 0, workers after it) and receives each weight as a broadcast of a
CPU tensor, which the worker's ``load_weights`` copies to its own device. It needs nothing but
torch on the trainer's side, so the trainer may run in another environment than the server (the
project's own, whose transformers vLLM does not accept).

vLLM finds it through the ``vllm.general_plugins`` entry point of this package (``register``),
which every vLLM process loads at start, so a server started in an environment where rlhfkit
is installed offers it as ``--weight-transfer-config '{"backend": "rlhfkit-gloo"}'``. Only
vLLM's processes import this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

BACKEND = "rlhfkit-gloo"
STORE_PREFIX = "rlhfkit-weights"
"""Key prefix of the trainer's TCP store, which holds nothing else."""


def register() -> None:
    """The ``vllm.general_plugins`` hook: offer the engine under ``BACKEND``."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    if BACKEND not in WeightTransferEngineFactory._registry:  # loaded once per process
        WeightTransferEngineFactory.register_engine(BACKEND, __name__, "GlooWeightReceiver")


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    """Where the trainer's TCP store listens, and the group's size (the trainer + workers)."""

    master_address: str
    master_port: int
    world_size: int
    timeout_s: float = 600.0


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    """The weights of one update, in the order the trainer broadcasts them."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]


class GlooWeightReceiver(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Receives the trainer's weights by gloo broadcast and loads them in checkpoint format
    through vLLM's layerwise reload (each layer is processed once all its weights came)."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo

    group: dist.ProcessGroup | None = None

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        parallel = self.parallel_config
        # unique over data-parallel replicas and their tensor/pipeline ranks; the trainer is 0
        rank = 1 + parallel.data_parallel_index * parallel.world_size + parallel.rank
        timeout = timedelta(seconds=init_info.timeout_s)
        store = dist.TCPStore(
            init_info.master_address,
            init_info.master_port,
            init_info.world_size,
            is_master=False,
            timeout=timeout,
        )
        self.group = dist.ProcessGroupGloo(
            dist.PrefixStore(STORE_PREFIX, store), rank, init_info.world_size, timeout
        )

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError(f"{BACKEND}: no weights can come before init_weight_transfer_engine")
        for name, dtype_name, shape in zip(
            update_info.names, update_info.dtype_names, update_info.shapes, strict=True
        ):
            weight = torch.empty(shape, dtype=getattr(torch, dtype_name))
            self.group.broadcast(weight, 0).wait()
            self.model.load_weights([(name, weight)])

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)
        # a tied LM head is skipped by the loaders, and on a CPU each linear layer computes from
        # a packed copy of its weight: rebuild it from the new embedding
        head = getattr(self.model, "lm_head", None)
        if head is not None and getattr(self.model.config, "tie_word_embeddings", False):
            head.quant_method.process_weights_after_loading(head)

    def shutdown(self) -> None:
        self.group = None
