"""--model.gradient_checkpointing: every trainer gets the same losses, gradients and weights,
and the decoder layers really do run again in the backward pass."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from rlhfkit import config_io
from rlhfkit.config import LoraCfg
from rlhfkit.errors import ConfigError
from rlhfkit.train import dpo, grpo, ppo, reward, sft
from test_grpo import make_config as grpo_config
from test_offline import common, pairs_file, write_jsonl
from test_ppo import make_config as ppo_config


@pytest.fixture
def layer_calls():
    """Counts attention forwards that build a graph (training, gradients on). transformers
    checkpoints a decoder layer's ``forward``, inside its own hooks, so the layer's attention
    module is where a recomputation in the backward pass shows: it runs twice."""
    calls = [0]

    def count(module, args, output):
        if type(module).__name__.endswith("Attention") and module.training:
            calls[0] += torch.is_grad_enabled()

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    yield calls
    handle.remove()


def _checkpointed(cfg):
    return replace(cfg, model=replace(cfg.model, gradient_checkpointing=True))


def _run_both(train, cfg, layer_calls, tmp_path):
    """Train ``cfg`` without, then with, checkpointing: (results, layer forwards) per side."""
    results, calls = [], []
    for name, side in (("plain", cfg), ("checkpointed", _checkpointed(cfg))):
        side = replace(side, run=replace(side.run, output_dir=str(tmp_path / name)))
        layer_calls[0] = 0
        results.append(train(side))
        calls.append(layer_calls[0])
    return results, calls


def _assert_same_run(results, keys=("loss", "grad_norm")):
    plain, checkpointed = ([row for row in r.run.metrics() if "loss" in row] for r in results)
    assert len(plain) == len(checkpointed) > 0
    for a, b in zip(plain, checkpointed, strict=True):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    one, two = (r.model.state_dict() for r in results)
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", ["full", "lora", "autocast"])
def test_grpo_matches_without(
    tmp_path, tiny_model_dir, prompts_file, reward_spec, layer_calls, variant
):
    cfg = grpo_config(tmp_path, tiny_model_dir, prompts_file, reward_spec, "cpu")
    cfg = replace(cfg, steps=2)
    if variant == "lora":
        cfg = replace(cfg, lora=LoraCfg(rank=4, alpha=8.0))
    elif variant == "autocast":  # the recomputation runs under the forward's autocast too
        cfg = replace(cfg, model=replace(cfg.model, autocast="bfloat16"))
    results, calls = _run_both(grpo.train, cfg, layer_calls, tmp_path)
    _assert_same_run(results)
    assert calls[1] > calls[0]  # the layers ran again in each backward pass


def test_ppo_with_a_critic_matches_without(
    tmp_path, tiny_model_dir, prompts_file, reward_spec, layer_calls
):
    cfg = ppo_config(tmp_path, tiny_model_dir, prompts_file, reward_spec, "cpu")
    cfg = replace(cfg, steps=2, critic=replace(cfg.critic, share_policy=False))
    results, calls = _run_both(ppo.train, cfg, layer_calls, tmp_path)
    _assert_same_run(results, keys=("loss", "grad_norm", "value_loss"))
    critics = [r.critic.state_dict() for r in results]
    for key in critics[0]:
        torch.testing.assert_close(critics[0][key], critics[1][key], atol=1e-6, rtol=1e-5)
    assert calls[1] > calls[0]


@pytest.mark.parametrize("trainer", ["sft", "dpo", "reward"])
def test_offline_trainers_match_without(tmp_path, tiny_model_dir, layer_calls, trainer):
    if trainer == "sft":
        demos = [{"prompt": "The movie was", "completion": " a delight"}] * 6
        base = common(tmp_path, tiny_model_dir, write_jsonl(tmp_path / "d.jsonl", demos), steps=3)
        train, cfg = sft.train, sft.Config(**base)
    else:
        base = common(tmp_path, tiny_model_dir, pairs_file(tmp_path), steps=3)
        if trainer == "dpo":
            train, cfg = dpo.train, dpo.Config(**base)
        else:
            train, cfg = reward.train, reward.Config(**base, rm=reward.RewardCfg(max_length=32))
    results, calls = _run_both(train, cfg, layer_calls, tmp_path)
    _assert_same_run(results)
    assert calls[1] > calls[0]


def test_flag_reads_from_the_command_line():
    cfg = config_io.load(grpo.Config, ["--model.gradient_checkpointing"])
    assert cfg.model.gradient_checkpointing is True
    with pytest.raises(ConfigError, match="model.gradient_checkpointing = 'maybe': is not a bool"):
        config_io.load(grpo.Config, ["--model.gradient_checkpointing=maybe"])
