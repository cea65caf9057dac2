"""Rollouts on a vLLM server: ``--gen.backend vllm-server --gen.server_url http://HOST:PORT``.

The engine runs in a ``vllm serve`` process of its own, on other GPUs, another machine or, on
a CPU, in another Python environment; the trainer talks to it over HTTP and needs no vLLM.
Before each ``generate`` the policy's weights (LoRA merged, in checkpoint names) go to the
server through vLLM's RL routes and the ``rlhfkit-gloo`` weight-transfer engine
(``vllm_receiver``): the trainer is rank 0 of a gloo group with the server's workers, opened
once, on the first call, and broadcasts each weight; the trainer asks for the update over HTTP
while it broadcasts, since the workers receive inside that request. Then each prompt is one
``/v1/completions`` request (prompt token ids in, token ids and their log-probs out), sent
concurrently so that the server batches them. The server is started as docs/vllm.md says:

    VLLM_SERVER_DEV_MODE=1 vllm serve MODEL_DIR --generation-config vllm \\
        --logprobs-mode processed_logprobs --weight-transfer-config '{"backend": "rlhfkit-gloo"}'

Log-probs. The rollout's are log p(token) under the distribution the server sampled from, after
the temperature (``processed_logprobs``), as ``hf`` records them; with ``gen.top_k`` or
``gen.top_p`` on they are of the cut and renormalised distribution, not of softmax(logits / T).
The trainer recomputes the log-probs it learns from either way (the gap is ``mismatch_kl``).
"""

from __future__ import annotations

import collections
import json
import random
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from rlhfkit import distributed
from rlhfkit.batch import Prompt, Rollout
from rlhfkit.config import GenCfg
from rlhfkit.errors import ConfigError, DataError, RlhfkitError
from rlhfkit.generation import register_backend
from rlhfkit.generation.hf import HFBackend
from rlhfkit.generation.vllm import Sample, checkpoint_plan, checkpoint_weights, vllm_rollout

BACKEND = "rlhfkit-gloo"  # vllm_receiver.BACKEND; that module imports vllm, this one must not
STORE_PREFIX = "rlhfkit-weights"  # vllm_receiver.STORE_PREFIX
CONCURRENT_REQUESTS = 64
"""Completion requests in flight at once: the server batches what is waiting."""


@register_backend("vllm-server")
class VLLMServerBackend(HFBackend):
    """Samples on a vLLM server after pushing the policy's weights to it; prompts are encoded,
    checked and padded as ``hf`` does, and the rollout is laid out as ``hf`` lays it out."""

    def __init__(self, model: Any, tokenizer: Any):
        super().__init__(model, tokenizer)
        self.server: Server | None = None

    def generate(
        self, prompts: list[Prompt], cfg: GenCfg, seed: int, response_prefix: str = ""
    ) -> Rollout:
        """One completion per prompt; each prompt is sampled with its own seed drawn from
        ``seed``, so the same prompts, cfg, seed and weights give the same rollout.

        Under torchrun every rank calls this with its own prompts: each rank gathers the
        sharded weights with the others (a collective), rank 0 alone sends them to the server,
        and every rank then samples its prompts on the updated server."""
        if not prompts:
            raise DataError("no prompts to generate from; give at least one")
        if self.server is None or self.server.url != cfg.server_url:
            self.server = Server(cfg.server_url, cfg.server_timeout_s)
        prompt_ids = self._encode(prompts, cfg.chat_template, response_prefix)
        self._check_lengths(prompt_ids, cfg.max_new_tokens)
        weights = ((name, _whole(t)) for name, t in checkpoint_weights(self.model))
        if distributed.is_main():
            self.server.push_weights(list(checkpoint_plan(self.model)), weights)
        else:
            collections.deque(weights, maxlen=0)  # join rank 0's gathers, keeping none
        distributed.barrier()  # no rank samples before the server has the new weights
        draws = random.Random(seed)
        requests = [self._request(ids, cfg, draws.getrandbits(63)) for ids in prompt_ids]
        with ThreadPoolExecutor(min(len(requests), CONCURRENT_REQUESTS)) as pool:
            samples = list(pool.map(self.server.complete, requests))
        return vllm_rollout(self, prompts, prompt_ids, samples, cfg)

    def _request(self, prompt_ids: list[int], cfg: GenCfg, seed: int) -> dict[str, Any]:
        return {
            "prompt": prompt_ids,
            "max_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature,  # 0: greedy
            "top_p": cfg.top_p,
            "top_k": cfg.top_k or -1,  # vLLM's "off"
            "stop": list(cfg.stop),
            "stop_token_ids": self.eos_ids,
            "seed": seed,
            "logprobs": 0,  # the sampled token's only
            "return_token_ids": True,
        }


class Server:
    """A ``vllm serve`` process: its completions, and the trainer's weight-transfer group with
    its workers."""

    def __init__(self, url: str, timeout_s: float):
        if not url:
            raise ConfigError(
                "gen.server_url: empty; gen.backend = vllm-server needs the vLLM server's "
                "address, e.g. --gen.server_url http://localhost:8000 (docs/vllm.md)"
            )
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        models = self._call("GET", "/v1/models")["data"]
        self.model_name = models[0]["id"]
        self.group: dist.ProcessGroup | None = None
        self.store: dist.TCPStore | None = None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:500]
            hint = ""
            if e.code == 404 and "weight" in path:
                hint = (
                    "; start the server with VLLM_SERVER_DEV_MODE=1, which turns on vLLM's RL "
                    "routes (docs/vllm.md)"
                )
            raise RlhfkitError(
                f"gen.server_url {self.url}: {method} {path} failed with HTTP {e.code}: "
                f"{detail}{hint}"
            ) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            raise RlhfkitError(
                f"gen.server_url {self.url}: no answer to {method} {path} ({e}); is `vllm serve` "
                "running there (docs/vllm.md)?"
            ) from None

    def complete(self, request: dict[str, Any]) -> Sample:
        choice = self._call("POST", "/v1/completions", {"model": self.model_name, **request})[
            "choices"
        ][0]
        return Sample(
            choice["token_ids"], choice["logprobs"]["token_logprobs"], choice["finish_reason"]
        )

    def push_weights(
        self,
        plan: list[tuple[str, torch.Tensor, Any]],
        weights: Iterator[tuple[str, torch.Tensor]],
    ) -> None:
        """Broadcast ``weights`` (named and shaped as ``plan`` says, computed one at a time) to
        the server's workers while its ``/update_weights`` request, in which they receive them,
        is open; then let vLLM finish the layers' reload."""
        if self.group is None:
            self._open_group()
        assert self.group is not None
        self._call("POST", "/start_weight_update")
        update = {
            "names": [name for name, _, _ in plan],
            "dtype_names": [str(p.dtype).removeprefix("torch.") for _, p, _ in plan],
            "shapes": [list(p.shape) for _, p, _ in plan],  # a DTensor's are the whole one's
        }
        with ThreadPoolExecutor(1) as side:
            received = side.submit(self._call, "POST", "/update_weights", {"update_info": update})
            try:
                for _, tensor in weights:
                    self.group.broadcast(tensor.to("cpu").contiguous(), 0).wait()
            finally:
                # a server that rejected the update stops receiving, and the broadcast above
                # then times out: its HTTP error says why, where the timeout cannot
                received.result()
        self._call("POST", "/finish_weight_update")
        self._call("POST", "/reset_prefix_cache")  # cached prompt KV came from the old weights

    def _open_group(self) -> None:
        workers = int(self._call("GET", "/get_world_size")["world_size"])
        host = urllib.parse.urlsplit(self.url).hostname or "localhost"
        timeout = timedelta(seconds=self.timeout_s)
        self.store = dist.TCPStore(
            _address_toward(host),
            0,
            1 + workers,
            is_master=True,
            wait_for_workers=False,
            timeout=timeout,
        )
        init = {
            "master_address": _address_toward(host),
            "master_port": self.store.port,
            "world_size": 1 + workers,
            "timeout_s": self.timeout_s,
        }
        with ThreadPoolExecutor(1) as side:  # the workers join inside this request
            joined = side.submit(
                self._call, "POST", "/init_weight_transfer_engine", {"init_info": init}
            )
            try:
                self.group = dist.ProcessGroupGloo(
                    dist.PrefixStore(STORE_PREFIX, self.store), 0, 1 + workers, timeout
                )
            finally:
                joined.result()  # the server's error, if it could not join, says more than ours


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP2) weight gathered whole on every rank; a plain one as it is."""
    full_tensor = getattr(tensor, "full_tensor", None)
    return full_tensor() if callable(full_tensor) else tensor


def _address_toward(host: str) -> str:
    """This machine's address on the route to ``host``, where the server's workers reach the
    trainer's store (no packet is sent: a UDP socket only picks its route)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((socket.gethostbyname(host), 9))
        return probe.getsockname()[0]
