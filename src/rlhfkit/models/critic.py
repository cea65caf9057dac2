"""PPO's critic: a value model V(s) that reads the policy's tokens.

A causal-LM backbone (the decoder of a pretrained LM, without its LM head) and a scalar linear
head. Starting from a pretrained LM, by default the policy's own, gives the critic the same
reading of the text as the policy from step one (Ziegler et al. 2019 and InstructGPT start it
from the reward model; pass that with ``--critic.path`` when it is a causal LM of the same
tokenizer).

Which state each value belongs to, aligned with ``models.token_logprobs``: with the response
starting at column P of ``input_ids``, response token t sits in column P + t and is chosen in
state s_t = every token before it, whose last token is in column P + t - 1. The hidden state
there is what the policy's LM head turns into the distribution of token t, and what the value
head turns into V(s_t). So ``values[:, t]`` and ``logprobs[:, t]`` describe the same decision,
V(s_{t+1}) is ``values[:, t + 1]``, and after a completion's last token the episode is over
(V = 0; see ``advantages.gae``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rlhfkit.config import LoraCfg, ModelCfg
from rlhfkit.errors import RlhfkitError
from rlhfkit.losses.policy import masked_mean
from rlhfkit.packing import packed_forward

WEIGHTS_FILE = "critic.safetensors"


class ValueModel(torch.nn.Module):
    """Backbone + scalar head; ``critic(input_ids, attention_mask, response_start)`` is (B, R)."""

    def __init__(self, backbone: Any, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        device = next(backbone.parameters()).device
        # float32 whatever the backbone's dtype: the head's output is a regression target's
        # scale, and bfloat16 keeps only 3 significant digits of it.
        self.head = torch.nn.Linear(hidden_size, 1, dtype=torch.float32, device=device)
        # Zero: every state starts at V = 0, and the first updates fit the head to the returns
        # instead of chasing a random initial guess through the backbone.
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, response_start: int) -> Tensor:
        """V(s_t) for every response position: (B, T) ids and mask -> (B, R), R = T - response_start.

        Rows may be left-padded: position ids come from the attention mask, as in generation.
        Values at padded response positions are computed but meaningless; mask them. On the CPU
        a causal backbone runs packed, each group's prompt once (``rlhfkit.packing``).
        """
        total = input_ids.shape[1]
        if not 1 <= response_start < total:
            raise ValueError(f"response_start must lie in [1, {total}), got {response_start}")
        run = packed_forward(self.backbone, input_ids, attention_mask, shared_prefix=response_start)
        if run is not None:
            hidden, packing = run  # (N, H) the real tokens
            place = packing.place[:, response_start - 1 : -1].clamp(min=0)  # (B, R); padding: any
            return self.head(hidden[place].float()).squeeze(-1)  # (B, R)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        ).last_hidden_state
        hidden = hidden[:, response_start - 1 : -1]  # (B, R, H): column P + t - 1 values s_t
        return self.head(hidden.float()).squeeze(-1)  # (B, R)

    def values(self, input_ids: Tensor, attention_mask: Tensor, response_start: int) -> Tensor:
        """The same as calling the model: (B, R) values aligned with ``token_logprobs``."""
        return self(input_ids, attention_mask, response_start)

    def evaluate(
        self,
        policy: Any,
        input_ids: Tensor,
        attention_mask: Tensor,
        response_start: int,
        temperature: float,
    ) -> tuple[Tensor, Tensor]:
        """The policy's (B, R) log-probs of the response tokens and this critic's (B, R) values:
        two networks, two passes."""
        from rlhfkit.models import token_logprobs

        logprobs = token_logprobs(policy, input_ids, attention_mask, response_start, temperature)
        return logprobs, self(input_ids, attention_mask, response_start)

    # --- checkpoints -----------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, Tensor]:
        """What training changes: the head, plus the LoRA adapters or the whole backbone."""
        from rlhfkit.models.lora import trainable_state

        backbone = {f"backbone.{k}": v for k, v in trainable_state(self.backbone).items()}
        head = {f"head.{k}": v for k, v in self.head.state_dict().items()}
        return {**backbone, **head}

    def save(self, directory: Path) -> Path:
        """Write the trainable weights to ``directory/critic.safetensors``."""
        return save_weights(self.trainable_state(), directory)

    def load(self, directory: Path) -> None:
        """Restore what ``save`` wrote into this model (same backbone, same LoRA settings)."""
        from safetensors.torch import load_file

        path = directory / WEIGHTS_FILE
        if not path.is_file():
            raise RlhfkitError(
                f"{directory}: no {WEIGHTS_FILE}, so this checkpoint has no critic; "
                "resume a `rlhfkit ppo` run from its own run directory"
            )
        weights = load_file(str(path), device=str(self.head.weight.device))
        backbone = {
            k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")
        }
        head = {k.removeprefix("head."): v for k, v in weights.items() if k.startswith("head.")}
        try:
            self.head.load_state_dict(head)
            if hasattr(self.backbone, "peft_config"):
                from peft import set_peft_model_state_dict

                set_peft_model_state_dict(self.backbone, backbone)
            else:
                self.backbone.load_state_dict(backbone)
        except RuntimeError as e:
            raise RlhfkitError(
                f"{path}: the saved critic does not fit this one "
                f"({' '.join(str(e).split())[:300]}); resume with the model, "
                "critic.path and lora settings the run started with"
            ) from None


class PolicyValueHead(torch.nn.Module):
    """A value head on the policy's own trunk: one backbone pass gives log-probs and values.

    Against a separate critic (``ValueModel``) it saves a second network's forward and backward
    pass, its weights and its AdamW state (on the demo about a fifth of a PPO step's time). The
    price is that the value loss also trains the policy's trunk. ``trunk_coef`` scales that
    share of its gradient (as ``vf_coef`` does in TRL's original PPOTrainer with its value head):
    the head itself learns at full strength from its own optimiser, and 0 leaves the trunk to the
    policy alone (the head then fits the policy's features as they are).

    The module holds only the head; the trunk's weights belong to the policy, its optimiser and
    its checkpoints.
    """

    def __init__(self, hidden_size: int, trunk_coef: float, device: Any = None):
        super().__init__()
        self.trunk_coef = trunk_coef
        # float32 and zero for the reasons ValueModel's head is
        self.head = torch.nn.Linear(hidden_size, 1, dtype=torch.float32, device=device)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def evaluate(
        self,
        policy: Any,
        input_ids: Tensor,
        attention_mask: Tensor,
        response_start: int,
        temperature: float,
    ) -> tuple[Tensor, Tensor]:
        """(B, R) log-probs and (B, R) values from one pass of the policy's backbone.

        A value is read at the state before each real response token (``models.ResponseStates``),
        the decision its log-prob belongs to; elsewhere it is 0, which the response mask hides.
        """
        from rlhfkit.models import response_states, states_logprobs

        states = response_states(policy, input_ids, attention_mask, response_start)
        hidden = scale_gradient(states.hidden, self.trunk_coef).float()  # (M, H)
        values = states.spread(self.head(hidden).squeeze(-1))  # (B, R)
        return states_logprobs(policy, states, temperature), values

    def trainable_state(self) -> dict[str, Tensor]:
        """The head's weights: all this module trains."""
        return {f"head.{k}": v for k, v in self.head.state_dict().items()}

    def save(self, directory: Path) -> Path:
        """Write the head to ``directory/critic.safetensors`` (the trunk is the policy's)."""
        return save_weights(self.trainable_state(), directory)

    def load(self, directory: Path) -> None:
        """Restore the head ``save`` wrote."""
        from safetensors.torch import load_file

        path = directory / WEIGHTS_FILE
        if not path.is_file():
            raise RlhfkitError(
                f"{directory}: no {WEIGHTS_FILE}, so this checkpoint has no value "
                "head; resume a `rlhfkit ppo` run from its own run directory"
            )
        weights = load_file(str(path), device=str(self.head.weight.device))
        head = {k.removeprefix("head."): v for k, v in weights.items() if k.startswith("head.")}
        if set(weights) != {f"head.{k}" for k in head} or not head:
            raise RlhfkitError(
                f"{path}: holds a separate critic, but this run shares the policy's "
                "trunk; resume with the critic.share_policy setting it started with"
            )
        self.head.load_state_dict(head)


def save_weights(state: dict[str, Tensor], directory: Path) -> Path:
    """``state`` to ``directory/critic.safetensors``."""
    from safetensors.torch import save_file

    path = directory / WEIGHTS_FILE
    # clone: safetensors refuses tensors that share memory (tied or sliced weights)
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(path))
    return path


def scale_gradient(tensor: Tensor, coef: float) -> Tensor:
    """``tensor`` in the forward pass; ``coef`` x its gradient in the backward pass.

    y = c x + (1 - c) stopgrad(x)   =>   y = x,  dy/dx = c
    """
    if coef == 1.0:
        return tensor
    return tensor.detach() if coef == 0.0 else coef * tensor + (1.0 - coef) * tensor.detach()


def load_value_model(
    model: ModelCfg,
    tokenizer: Any,
    path: str = "",
    lora: LoraCfg | None = None,
    train_layers: int = 0,
) -> ValueModel:
    """A critic in train mode on ``model``'s device and dtype, its head at zero.

    The backbone comes from ``path`` (empty: ``model.path``, the policy's starting point). It
    reads the policy's token ids, so a model with another vocabulary is refused. With
    ``lora.rank`` > 0 the backbone trains LoRA adapters only; the head always trains in full.
    ``train_layers`` > 0 trains only the top that many decoder layers (``freeze_below``).
    """
    from rlhfkit.models import load_causal_lm
    from rlhfkit.models.lora import attach_lora

    lm, own_tokenizer = load_causal_lm(replace(model, path=path or model.path))
    if path and own_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise RlhfkitError(
            f"critic.path {path!r}: its tokenizer differs from the policy's "
            f"({model.path!r}), but the critic reads the policy's token ids; give "
            "a model with the same tokenizer, or leave critic.path empty"
        )
    hidden_size = lm.config.get_text_config().hidden_size
    backbone = lm.get_decoder()  # the LM head is dropped: the value head replaces it
    del lm
    if lora is not None and lora.rank:
        backbone = attach_lora(backbone, lora, task_type=None)
    if train_layers:
        freeze_below(backbone, train_layers)
    critic = ValueModel(backbone, hidden_size)
    return critic.train()


def freeze_below(backbone: Any, train_layers: int) -> None:
    """Freeze the embeddings and every decoder layer but the top ``train_layers``.

    What stays trainable (those layers and the final norm; with LoRA, their adapters) is where
    the backward pass stops: autograd builds no graph below the first trainable layer, so the
    frozen layers cost one forward without saved activations, no backward and no AdamW state.
    A pretrained trunk's lower layers already read the text well enough for a value estimate;
    the top layers and the head adapt to the reward.
    """
    layers = decoder_layers(backbone)
    if train_layers > len(layers):
        raise RlhfkitError(
            f"critic.train_layers {train_layers}: the critic's backbone has "
            f"{len(layers)} decoder layers; give 1..{len(layers)}, or 0 to train "
            "all of them"
        )
    backbone.get_input_embeddings().requires_grad_(False)
    for layer in layers[: len(layers) - train_layers]:
        layer.requires_grad_(False)


def decoder_layers(backbone: Any) -> torch.nn.ModuleList:
    """The backbone's stack of decoder layers: its ModuleList of ``num_hidden_layers`` blocks."""
    count = backbone.config.get_text_config().num_hidden_layers
    for module in backbone.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise RlhfkitError(
        f"critic.train_layers: cannot find the {count} decoder layers of this "
        f"{type(backbone).__name__} to freeze the lower ones; set "
        "critic.train_layers = 0 to train the whole critic"
    )


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var[R - V] / Var[R] over valid tokens: how much of the returns the critic predicts.

    1 is perfect, 0 is no better than a constant, negative is worse than a constant. NaN when
    the returns do not vary (nothing to explain).
    """
    returns_var = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    error = returns - values  # (B, R)
    error_var = masked_mean((error - masked_mean(error, mask)) ** 2, mask)
    if returns_var == 0:
        return float("nan")
    return float(1.0 - error_var / returns_var)
