"""PPO with a critic on a tiny random model: the value model, learning, exact resume, invariance."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from conftest import LOOP_DEVICE, interruptible_reward
from rlhfkit import cli, config_io
from rlhfkit.config import GenCfg, LogCfg, LoraCfg, ModelCfg, OptimCfg, PromptDataCfg, RunCfg
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.models.critic import (
    PolicyValueHead,
    ValueModel,
    explained_variance,
    load_value_model,
    scale_gradient,
)
from rlhfkit.train import kit, ppo


def make_config(
    tmp_path, model_dir, prompts_file, reward_spec, device=LOOP_DEVICE, **algo
) -> ppo.Config:
    return ppo.Config(
        reward=reward_spec,
        steps=30,
        model=ModelCfg(path=str(model_dir), device=device),
        data=PromptDataCfg(prompts=str(prompts_file), eval_size=0),
        gen=GenCfg(max_new_tokens=8, temperature=1.0, batch_size=16, chat_template="off"),
        algo=ppo.AlgoCfg(
            **{"prompts_per_step": 16, "micro_batch_size": 8, "kl_coef": 0.01, **algo}
        ),
        optim=OptimCfg(lr=1e-2),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(tmp_path / "run"), checkpoint_every=0),
    )


# --- the value model -----------------------------------------------------------------------------


@pytest.fixture
def critic(tiny_lm, tiny_model_dir):
    """A critic with a random head, so its values depend on the hidden states."""
    model = load_value_model(ModelCfg(path=str(tiny_model_dir), device="cpu"), tiny_lm[1])
    torch.manual_seed(0)
    torch.nn.init.normal_(model.head.weight)
    return model.eval()


def test_value_t_reads_the_tokens_before_response_token_t(critic):
    torch.manual_seed(1)
    ids = torch.randint(3, 200, (1, 9))  # 4 prompt tokens, 5 response tokens
    values = critic.values(ids, torch.ones_like(ids), response_start=4)  # (1, 5)
    assert values.shape == (1, 5)
    changed = ids.clone()
    changed[0, 4 + 2] = (ids[0, 4 + 2] + 1) % 200  # response token t = 2
    after = critic.values(changed, torch.ones_like(ids), response_start=4)
    # V(s_t) is the state in which token t is chosen: tokens 0..2 see only what came before
    torch.testing.assert_close(after[:, :3], values[:, :3])
    assert (after[:, 3:] - values[:, 3:]).abs().min() > 0


def test_left_padding_does_not_change_values(critic):
    torch.manual_seed(2)
    ids = torch.randint(3, 200, (1, 7))
    alone = critic.values(ids, torch.ones_like(ids), response_start=3)
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.ones_like(ids)], dim=1)
    torch.testing.assert_close(
        critic.values(padded, mask, response_start=5), alone, atol=1e-5, rtol=1e-5
    )


def test_head_starts_at_zero_and_save_load_round_trips(tiny_lm, tiny_model_dir, critic, tmp_path):
    fresh = load_value_model(ModelCfg(path=str(tiny_model_dir), device="cpu"), tiny_lm[1])
    ids = torch.randint(3, 200, (2, 6))
    assert torch.equal(fresh(ids, torch.ones_like(ids), 2), torch.zeros(2, 4))
    critic.save(tmp_path)
    fresh.load(tmp_path)
    torch.testing.assert_close(
        fresh(ids, torch.ones_like(ids), 2), critic(ids, torch.ones_like(ids), 2)
    )
    with pytest.raises(RlhfkitError, match="no critic.safetensors"):
        fresh.load(tmp_path / "elsewhere")


def test_critic_with_another_tokenizer_is_refused(tiny_lm, tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    model, tokenizer = tiny_lm
    model.save_pretrained(other)
    changed = AutoTokenizer.from_pretrained(tiny_model_dir)
    changed.add_tokens(["<extra>"])
    changed.save_pretrained(other)
    with pytest.raises(RlhfkitError, match="its tokenizer differs from the policy's"):
        load_value_model(
            ModelCfg(path=str(tiny_model_dir), device="cpu"), tokenizer, path=str(other)
        )


def test_train_layers_freezes_the_lower_layers_and_stops_the_backward_there(
    tiny_lm, tiny_model_dir
):
    cfg = ModelCfg(path=str(tiny_model_dir), device="cpu")
    whole = load_value_model(cfg, tiny_lm[1])
    top = load_value_model(cfg, tiny_lm[1], train_layers=1)  # the tiny model has 2 layers
    trainable = {n for n, p in top.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("backbone.layers.1.", "backbone.norm.", "head.")) for n in trainable
    ), trainable
    assert {"head.weight", "backbone.norm.weight"} <= trainable
    torch.manual_seed(3)
    torch.nn.init.normal_(whole.head.weight)
    top.head.load_state_dict(whole.head.state_dict())
    ids = torch.randint(3, 200, (2, 7))
    values = top(ids, torch.ones_like(ids), 3)
    torch.testing.assert_close(values, whole(ids, torch.ones_like(ids), 3))  # same function
    values.sum().backward()
    grads = {n for n, p in top.named_parameters() if p.grad is not None}
    assert grads == trainable  # nothing below layer 1 got a gradient
    with pytest.raises(RlhfkitError, match=r"critic.train_layers 3: .* has 2 decoder layers"):
        load_value_model(cfg, tiny_lm[1], train_layers=3)


def test_train_layers_with_lora_trains_only_the_top_adapters(tiny_lm, tiny_model_dir):
    critic = load_value_model(
        ModelCfg(path=str(tiny_model_dir), device="cpu"),
        tiny_lm[1],
        lora=LoraCfg(rank=4, alpha=8.0),
        train_layers=1,
    )
    trainable = {n for n, p in critic.named_parameters() if p.requires_grad} - {
        "head.weight",
        "head.bias",
    }
    assert trainable and all("lora_" in n and ".layers.1." in n for n in trainable), trainable


def test_a_shared_value_head_reads_the_policys_trunk_in_the_same_pass(tiny_lm):
    """Its log-probs are token_logprobs'; its values are a separate critic's over the policy's
    own decoder with the same head, at every real response token, left padding included."""
    from rlhfkit.models import token_logprobs

    policy = tiny_lm[0].eval()
    hidden_size = policy.config.hidden_size
    shared = PolicyValueHead(hidden_size, trunk_coef=0.1)
    separate = ValueModel(policy.get_decoder(), hidden_size)
    torch.manual_seed(3)
    torch.nn.init.normal_(shared.head.weight)
    separate.head.load_state_dict(shared.head.state_dict())
    ids = torch.randint(3, 200, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding
    mask[2, 7:] = 0  # a response that ended early
    logprobs, values = shared.evaluate(policy, ids, mask, 4, temperature=0.7)
    torch.testing.assert_close(logprobs, token_logprobs(policy, ids, mask, 4, 0.7))
    real = mask[:, 4:].bool()
    torch.testing.assert_close(values[real], separate(ids, mask, 4)[real])
    assert (values[~real] == 0).all()


@pytest.mark.parametrize("coef", [0.0, 0.25, 1.0])
def test_scale_gradient_keeps_the_value_and_scales_the_gradient(coef):
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = scale_gradient(x, coef)
    torch.testing.assert_close(y.detach(), x.detach())
    if coef == 0.0:
        assert not y.requires_grad  # nothing flows back
    else:
        (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        torch.testing.assert_close(x.grad, coef * torch.tensor([1.0, 2.0, 3.0]))


def test_explained_variance_by_hand():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the last column is padding and must not count
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask) == pytest.approx(0.0)
    # errors (0.5, 0.5, -1): variance 0.5 against the returns' 2/3
    values = torch.tensor([[0.5, 1.5, 4.0, 0.0]])
    assert explained_variance(values, returns, mask) == pytest.approx(1 - 0.5 / (2 / 3))


# --- the loop ------------------------------------------------------------------------------------


def test_reward_rises_and_the_critic_learns(tmp_path, tiny_model_dir, prompts_file, reward_spec):
    outcome = ppo.train(make_config(tmp_path, tiny_model_dir, prompts_file, reward_spec))
    rows = outcome.run.metrics()
    rewards = [row["reward"] for row in rows]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.1, rewards
    explained = [row["explained_variance"] for row in rows]
    assert explained[0] == pytest.approx(0.0, abs=1e-6)  # the zero head predicts nothing
    # The critic must follow the returns' level as they rise; a critic that learned nothing
    # would stay at its zero start, off by the whole return. Over the last ten steps its mean
    # value was within 5-15% of the mean return for seeds 0-5 on a 2-core AMD EPYC. Explained
    # variance is no test here: on that CPU seed 0's last ten steps averaged -0.11 (0.27-0.57
    # for seeds 1-5), its critic tracking the level but not the spread of 16 completions.
    late = rows[-10:]
    gap = sum(abs(row["value_mean"] - row["return_mean"]) for row in late)
    assert gap < 0.5 * sum(abs(row["return_mean"]) for row in late), late
    assert isinstance(outcome.critic, ValueModel)
    assert (outcome.run.path / "model" / "config.json").is_file()
    assert json.loads((outcome.run.path / "summary.json").read_text())["steps"] == 30


def test_with_a_shared_trunk_reward_rises_and_the_head_tracks_the_returns(
    tmp_path, tiny_model_dir, prompts_file, reward_spec
):
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, reward_spec)
    outcome = ppo.train(replace(cfg, critic=ppo.CriticCfg(share_policy=True)))
    rows = outcome.run.metrics()
    rewards = [row["reward"] for row in rows]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.1, rewards
    assert isinstance(outcome.critic, PolicyValueHead)
    # A linear head on a random 32-wide model's features explains little of the variation (its
    # explained variance stays near 0), but it must follow the returns' level as they rise; a
    # head that learned nothing would stay at its zero start, off by the whole return.
    late = rows[-10:]
    gap = sum(abs(row["value_mean"] - row["return_mean"]) for row in late)
    assert gap < 0.5 * sum(abs(row["return_mean"]) for row in late), late


def _comparable(rows):
    drop = {"time", "step_seconds", "generation_seconds", "tokens_per_second"}
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


@pytest.mark.parametrize("share_policy", [False, True], ids=["critic", "shared-trunk"])
def test_resume_matches_an_uninterrupted_run(tmp_path, tiny_model_dir, prompts_file, share_policy):
    # the reward raises a Ctrl-C at the call named in stop_at: during step 4
    reward, counter, stop_at = interruptible_reward(tmp_path)
    cfg = make_config(
        tmp_path,
        tiny_model_dir,
        prompts_file,
        reward,
        prompts_per_step=8,
        micro_batch_size=4,
        kl_target=1.0,
        kl_horizon=100,
    )
    cfg = replace(
        cfg,
        steps=6,
        optim=replace(cfg.optim, schedule="linear"),
        critic=ppo.CriticCfg(share_policy=share_policy),
        run=replace(cfg.run, checkpoint_every=3, output_dir=str(tmp_path / "whole")),
    )
    whole = ppo.train(cfg).run.metrics()

    counter.unlink()
    stop_at.write_text("4")
    interrupted = replace(cfg, run=replace(cfg.run, output_dir=str(tmp_path / "parts")))
    with pytest.raises(KeyboardInterrupt):
        ppo.train(interrupted)
    stop_at.unlink()
    resumed = ppo.train(replace(interrupted, run=replace(interrupted.run, resume=True)))
    rows = resumed.run.metrics()
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert len({row["kl_coef"] for row in rows}) > 1  # the adaptive controller state resumed too
    assert _comparable(rows) == _comparable(whole)


@pytest.mark.parametrize(
    "epochs, share_policy",
    [(1, False), (2, False), (1, True)],
    ids=["one-epoch", "two-epochs", "shared-trunk"],
)
def test_batch_times_accumulation_invariance(
    tmp_path, tiny_model_dir, prompts_file, reward_spec, epochs, share_policy
):
    """One step of 8 completions x accumulation 1 == 4 x accumulation 2, policy and critic.

    With one epoch, 8 x 1 is one forward/backward per step, which takes the critic's old values
    from its graded pass; 4 x 2 computes them in a separate no-grad pass, as every other shape.
    """

    def trained(micro, accum, name):
        # on the CPU: on CUDA the loss (~0) differs by ~1e-6 between the shapes (an H200)
        cfg = make_config(
            tmp_path / name,
            tiny_model_dir,
            prompts_file,
            reward_spec,
            "cpu",
            prompts_per_step=8,
            micro_batch_size=micro,
            epochs=epochs,
        )
        # a stop string gives completions of different lengths, so micro-batches hold
        # different shares of the minibatch's tokens and their weights are not all 1/2
        cfg = replace(
            cfg,
            steps=1,
            optim=replace(cfg.optim, grad_accum_steps=accum),
            gen=replace(cfg.gen, stop=("e",)),
            critic=ppo.CriticCfg(share_policy=share_policy),
        )
        outcome = ppo.train(cfg)
        return outcome, outcome.run.metrics()[0]

    (one, one_metrics), (two, two_metrics) = trained(8, 1, "one"), trained(4, 2, "two")
    assert one_metrics["finished"] > 0  # the stop string did end completions early
    # Adam's first step hides a constant gradient scale, so the gradient norms are compared too
    for key in ("grad_norm", "value_grad_norm", "loss", "value_loss"):
        assert one_metrics[key] == pytest.approx(two_metrics[key], rel=1e-5, abs=1e-7), key
    start = kit.load_policy_and_reference(
        ModelCfg(path=str(tiny_model_dir), device="cpu"), LoraCfg(), False
    )[0].state_dict()
    moved = max((one.model.state_dict()[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-4  # the step did change the weights
    assert one.critic.head.weight.abs().max() > 1e-4
    for model in ("model", "critic"):
        mine, theirs = getattr(one, model).state_dict(), getattr(two, model).state_dict()
        # A step moves weights by ~1e-2. Adam's first step is lr * g / (|g| + eps), so a
        # weight whose gradient is near eps turns summation-order noise into ~lr * 1e-3.
        for key in mine:
            torch.testing.assert_close(mine[key], theirs[key], atol=5e-5, rtol=1e-4)


def test_lora_trains_adapters_and_the_value_head(
    tmp_path, tiny_model_dir, prompts_file, reward_spec
):
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, reward_spec, kl_in="loss")
    outcome = ppo.train(replace(cfg, steps=2, lora=LoraCfg(rank=4, alpha=8.0)))
    assert outcome.reference is None  # the base weights with adapters off are the reference
    trainable = [n for n, p in outcome.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    critic_trainable = {n for n, p in outcome.critic.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} < critic_trainable
    assert all("lora_" in n for n in critic_trainable - {"head.weight", "head.bias"})
    kl = [row["kl"] for row in outcome.run.metrics()]
    assert kl[0] == pytest.approx(0.0, abs=1e-4) and kl[1] != 0.0
    saved = outcome.run.latest_checkpoint() / "critic.safetensors"
    from safetensors.torch import load_file

    assert all("lora_" in k or k.startswith("head.") for k in load_file(str(saved)))


def test_a_critic_training_its_top_layer_leaves_the_rest_as_it_started(
    tmp_path, tiny_model_dir, prompts_file, reward_spec, tiny_lm
):
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, reward_spec)
    outcome = ppo.train(replace(cfg, steps=2, critic=ppo.CriticCfg(train_layers=1)))
    start = tiny_lm[0].model.state_dict()
    trained = outcome.critic.backbone.state_dict()
    assert torch.equal(trained["layers.0.mlp.up_proj.weight"], start["layers.0.mlp.up_proj.weight"])
    assert torch.equal(trained["embed_tokens.weight"], start["embed_tokens.weight"])
    assert not torch.equal(
        trained["layers.1.mlp.up_proj.weight"], start["layers.1.mlp.up_proj.weight"]
    )


def test_cli_runs_two_steps(tmp_path, tiny_model_dir, prompts_file, reward_spec):
    out = tmp_path / "cli-run"
    code = cli.main(
        [
            "ppo",
            "--model",
            str(tiny_model_dir),
            "--data.prompts",
            str(prompts_file),
            "--reward",
            reward_spec,
            "--steps",
            "2",
            "--gen.max_new_tokens",
            "6",
            "--gen.chat_template",
            "off",
            "--log.progress",
            "false",
            "--model.device",
            "cpu",
            "--algo.prompts_per_step",
            "8",
            "--critic.lr",
            "0.001",
            "--run.output_dir",
            str(out),
        ]
    )
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]
    assert rows[0]["critic_lr"] == pytest.approx(1e-3)
    assert (out / "checkpoints" / "step-000002" / "critic.safetensors").is_file()


@pytest.mark.parametrize(
    "args, problem",
    [
        (
            ["--algo.prompts_per_step", "12", "--algo.micro_batch_size", "8"],
            "algo.prompts_per_step = 12: (one completion each) is not a multiple of the minibatch, "
            "algo.micro_batch_size x optim.grad_accum_steps = 8; make it one",
        ),
        (
            ["--algo.kl_coef", "0", "--algo.kl_target", "6"],
            "algo.kl_target = 6.0: adapts algo.kl_coef by multiplying it, so it needs a start above 0; "
            "set algo.kl_coef (e.g. 0.05) or drop algo.kl_target",
        ),
        (
            ["--algo.kl_target", "6", "--algo.kl_horizon", "8"],
            "algo.kl_horizon = 8: is shorter than one step's 16 completions, so one update could flip "
            "the KL coefficient's sign; make it many steps long (the paper: 10000)",
        ),
    ],
)
def test_bad_config_is_one_line_each(tmp_path, prompts_file, capsys, args, problem):
    common = ["--data.prompts", str(prompts_file), "--run.output_dir", str(tmp_path / "r")]
    with pytest.raises(ConfigError) as info:
        config_io.load(ppo.Config, [*common, *args])
    assert info.value.problems == [problem]
    assert cli.main(["ppo", *common, *args]) == 2
    assert capsys.readouterr().err == f"rlhfkit ppo: error: {problem}\n"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args, problem",
    [
        (
            ["--critic.train_layers", "2"],
            "critic.train_layers = 2: freezes a separate critic's lower layers, but with "
            "critic.share_policy those are the policy's; set it to 0 or turn critic.share_policy off",
        ),
        (
            ["--critic.path", "smollm2"],
            "critic.path = 'smollm2': names a separate critic's backbone, but critic.share_policy puts "
            "the value head on the policy's; drop one",
        ),
    ],
)
def test_a_shared_trunk_refuses_a_separate_critics_settings(prompts_file, args, problem):
    with pytest.raises(ConfigError) as info:
        config_io.load(
            ppo.Config,
            ["--data.prompts", str(prompts_file), "--critic.share_policy", "true", *args],
        )
    assert info.value.problems == [problem]


def test_a_separate_critics_checkpoint_does_not_load_into_a_shared_head(critic, tmp_path):
    critic.save(tmp_path)
    head = PolicyValueHead(critic.head.in_features, trunk_coef=0.1)
    with pytest.raises(RlhfkitError, match="holds a separate critic, but this run shares"):
        head.load(tmp_path)
    assert (head.head.weight == 0).all()  # left as it was


def test_missing_critic_path_is_refused(tmp_path, prompts_file):
    with pytest.raises(ConfigError) as info:
        config_io.load(
            ppo.Config,
            ["--data.prompts", str(prompts_file), "--critic.path", str(tmp_path / "nowhere")],
        )
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(
        f"critic.path = {str(tmp_path / 'nowhere')!r}: is neither an embedded alias"
    )


def test_tis_weights_the_policy_gradient_and_logs_the_gap(
    tmp_path, tiny_model_dir, prompts_file, reward_spec, sampler_below_trainer
):
    """PPO's objective takes the truncated importance weights as GRPO's does: a sampler log 2
    below the trainer shows as mismatch_kl = 2 - 1 - log 2, and tis scales the policy's
    gradient by the cap (the critic's is untouched)."""
    sampler_below_trainer()

    def first_step(name, **algo):
        cfg = make_config(
            tmp_path / name, tiny_model_dir, prompts_file, reward_spec, "cpu", kl_coef=0.0, **algo
        )
        # one update per step, so each side's gradient is taken at the same weights
        cfg = replace(cfg, steps=1, critic=replace(cfg.critic, share_policy=False))
        cfg = replace(cfg, algo=replace(cfg.algo, micro_batch_size=16, epochs=1))
        return ppo.train(cfg).run.metrics()[0]

    off, tis = first_step("off"), first_step("tis", rollout_is="tis", rollout_is_cap=1.5)
    assert off["mismatch_kl"] == pytest.approx(1 - math.log(2), rel=1e-3)
    assert tis["grad_norm"] == pytest.approx(1.5 * off["grad_norm"], rel=1e-5)
    assert tis["value_grad_norm"] == pytest.approx(off["value_grad_norm"], rel=1e-6)
