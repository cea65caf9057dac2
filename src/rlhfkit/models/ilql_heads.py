"""ILQL's value heads on a causal LM's trunk, and the decoding they steer.

Twin Q heads (hidden -> one value per vocabulary token, as the LM head gives one logit per
token), their target copies (Polyak averages, no gradient) and a scalar V head, all reading the
trunk's last hidden state, the one the LM head reads. State s_t is every token before token t,
so the hidden state at column t - 1 gives Q(s_t, .) and V(s_t), aligned with the logits there.

Saved next to an exported model as ``ilql_heads.safetensors`` (plus ``ilql.json``: sizes and the
trained beta), so ``rlhfkit generate --ilql`` reproduces the perturbed decoding, and
``compare`` evaluates an ILQL run as it decodes.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import LogitsProcessor

from rlhfkit.errors import RlhfkitError
from rlhfkit.losses.ilql import advantage_logits, polyak

WEIGHTS_FILE = "ilql_heads.safetensors"
INFO_FILE = "ilql.json"


class IlqlHeads(torch.nn.Module):
    """Q1, Q2 (online and target) and V on hidden states of size ``hidden_size``.

    Float32 whatever the trunk's dtype (regression targets, as the PPO critic's head), and
    zero-initialised: every Q and V starts at 0, so decoding starts unperturbed.
    """

    def __init__(self, hidden_size: int, vocab_size: int, device: Any = None):
        super().__init__()

        def linear(out: int) -> torch.nn.Linear:
            layer = torch.nn.Linear(hidden_size, out, dtype=torch.float32, device=device)
            torch.nn.init.zeros_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
            return layer

        self.q1, self.q2, self.v = linear(vocab_size), linear(vocab_size), linear(1)
        self.target_q1 = copy.deepcopy(self.q1).requires_grad_(False)
        self.target_q2 = copy.deepcopy(self.q2).requires_grad_(False)

    def values(self, hidden: Tensor) -> Tensor:
        """V(s): (..., H) -> (...)."""
        return self.v(hidden.float()).squeeze(-1)

    def target_q(self, hidden: Tensor) -> Tensor:
        """min of the target heads' Q(s, .): (..., H) -> (..., V), no gradient."""
        with torch.no_grad():
            hidden = hidden.float()
            return torch.minimum(self.target_q1(hidden), self.target_q2(hidden))

    def advantages(self, hidden: Tensor) -> Tensor:
        """min_i Q_i^target(s, .) - V(s): (..., H) -> (..., V), no gradient (decoding only).

        The target heads, as trlX decodes: V is regressed on them (the expectile loss), so
        their difference is the advantage V was fit to, and Polyak averaging smooths the
        online heads' step-to-step noise out of it."""
        q = self.target_q(hidden)
        with torch.no_grad():
            return advantage_logits(torch.zeros_like(q), q, self.values(hidden), 1.0)

    @torch.no_grad()
    def update_targets(self, alpha: float) -> None:
        """Polyak-average the online Q heads into the target heads."""
        for online, target in ((self.q1, self.target_q1), (self.q2, self.target_q2)):
            for o, t in zip(online.parameters(), target.parameters(), strict=True):
                t.copy_(polyak(t, o, alpha))

    def save(self, directory: Path, beta: float) -> Path:
        """Write the heads and ``ilql.json`` into ``directory`` (each file written whole)."""
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        info = {"hidden_size": self.v.in_features, "vocab_size": self.q1.out_features, "beta": beta}
        _write_atomic(directory / WEIGHTS_FILE, lambda path: save_file(state, path))
        _write_atomic(directory / INFO_FILE, lambda path: Path(path).write_text(json.dumps(info)))
        return directory / WEIGHTS_FILE


def load_heads(directory: str | os.PathLike, device: Any = None) -> tuple[IlqlHeads, float]:
    """The heads saved in a model directory and the beta they were trained for."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / WEIGHTS_FILE).is_file() or not (directory / INFO_FILE).is_file():
        raise RlhfkitError(
            f"{directory}: no {WEIGHTS_FILE} and {INFO_FILE}, so this model has no ILQL heads; "
            "use the model directory a `rlhfkit ilql` run exported, or drop --ilql"
        )
    info = json.loads((directory / INFO_FILE).read_text())
    heads = IlqlHeads(int(info["hidden_size"]), int(info["vocab_size"]), device)
    heads.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device=str(device or "cpu")))
    return heads, float(info["beta"])


def has_heads(directory: str | os.PathLike) -> bool:
    """Whether a model directory holds the heads of an ``rlhfkit ilql`` run."""
    return (Path(directory) / WEIGHTS_FILE).is_file()


@contextlib.contextmanager
def steering(
    backend: Any, model: Any, directory: str | os.PathLike, beta: float = 0.0
) -> Iterator[float]:
    """Decode through ``backend`` steered by the heads in ``directory``, at ``beta`` (0: the
    beta the run trained for, which it yields). Only the hf backend runs the model's forward
    passes in this process, where the heads can read its hidden states."""
    if not hasattr(backend, "steer"):
        raise RlhfkitError(
            f"{directory}: decoding with ILQL heads needs the hf generation backend, whose "
            "forward passes the heads read; pass --gen.backend hf"
        )
    heads, trained = load_heads(directory, next(model.parameters()).device)
    with AdvantageSteer(model, heads, beta or trained) as steer:
        backend.steer = [steer]
        try:
            yield beta or trained
        finally:
            backend.steer = []


class AdvantageSteer(LogitsProcessor):
    """Decoding's logits + beta * (Q - V), the heads reading the trunk's last hidden state.

    A forward hook on the model's decoder keeps the hidden state of each generation step's
    last position, the state whose next token is being chosen, so the heads cost no second pass.
    Use as a context manager: the hook is removed on the way out.
    """

    def __init__(self, model: Any, heads: IlqlHeads, beta: float):
        self.heads, self.beta, self.hidden = heads, beta, None
        self.handle = model.get_decoder().register_forward_hook(self._keep)

    def _keep(self, module: Any, args: Any, output: Any) -> None:
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        self.hidden = hidden[:, -1]  # (B, H)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.hidden is None:
            raise RlhfkitError("AdvantageSteer: the model's decoder ran no forward pass")
        with torch.no_grad():
            advantage = self.heads.advantages(self.hidden.to(self.heads.v.weight.device))
        width = min(scores.shape[-1], advantage.shape[-1])
        steered = scores.clone()
        steered[:, :width] += self.beta * advantage[:, :width].to(scores.dtype)
        return steered

    def __enter__(self) -> AdvantageSteer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def _write_atomic(path: Path, write: Any) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
