"""The vllm-server generation backend against a real `vllm serve` and the trainer's forward pass.

One vLLM server (the OpenAI API server of vLLM's CPU build, with its RL routes and this
package's ``rlhfkit-gloo`` weight-transfer engine) runs for the module, as docs/vllm.md starts
it; the trainer's side needs no vLLM. Like tests/test_vllm.py these run in the environment
`make vllm-env` makes (`make vllm-test`), skip without vllm, and fail instead where
``RLHFKIT_REQUIRE_VLLM=1`` (CI).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from rlhfkit.config import GenCfg, LoraCfg, ModelCfg
from rlhfkit.config_io import load
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.generation import get_backend
from rlhfkit.models import load_causal_lm
from test_distributed import grpo_args, torchrun, workdir  # noqa: F401  (a fixture)
from test_vllm import (  # noqa: F401  (a fixture)
    PROMPTS,
    _vllm_or_skip,
    assert_logprobs_match_forward,
    grpo_letter_o,
    raise_logprobs,
    vllm_model_dir,
)

STARTUP_S = 600  # a CPU server on a busy 2-core machine took 4 minutes to answer


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(vllm_model_dir, tmp_path_factory):  # noqa: F811
    """A `vllm serve` of the tiny model, started as docs/vllm.md says; its URL."""
    _vllm_or_skip()
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        f"--model={vllm_model_dir}",
        f"--port={port}",
        "--dtype=float32",
        "--generation-config=vllm",
        "--logprobs-mode=processed_logprobs",
        "--enforce-eager",
        '--weight-transfer-config={"backend": "rlhfkit-gloo"}',
        "--max-model-len=128",
    ]
    with log.open("w") as out:
        server = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                with urllib.request.urlopen(f"{url}/v1/models", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"vllm serve did not start:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def generate(backend, url, prompts=PROMPTS, seed=0, **gen):
    settings = {"max_new_tokens": 10, "backend": "vllm-server", "server_url": url, **gen}
    return backend.generate(prompts, GenCfg(**settings), seed)


# log-probs of the distribution sampled from (processed_logprobs): with top-k / top-p off that
# is softmax(logits / T), the trainer's; measured within 1e-6 (float32, 2-core AMD EPYC)
@pytest.mark.parametrize("gen", [dict(temperature=1.0), dict(temperature=0.7)])
def test_sampled_logprobs_match_the_trainers_forward_pass(server_url, vllm_model_dir, gen):  # noqa: F811
    model, tokenizer = load_causal_lm(ModelCfg(path=str(vllm_model_dir), device="cpu"))
    backend = get_backend("vllm-server", model, tokenizer)
    rollout = generate(backend, server_url, **gen)
    assert_logprobs_match_forward(model, rollout, gen["temperature"])
    again = generate(backend, server_url, **gen)
    other = generate(backend, server_url, seed=1, **gen)
    assert again.response_ids.equal(rollout.response_ids)  # each prompt has its own seed
    assert not other.response_ids.equal(rollout.response_ids)


def test_greedy_decoding_equals_the_hf_backends(server_url, vllm_model_dir):  # noqa: F811
    model, tokenizer = load_causal_lm(ModelCfg(path=str(vllm_model_dir), device="cpu"))
    hf, backend = get_backend("hf", model, tokenizer), get_backend("vllm-server", model, tokenizer)
    greedy = dict(temperature=0.0, max_new_tokens=16)
    expected = hf.generate(PROMPTS, GenCfg(**greedy), 0)
    rollout = generate(backend, server_url, **greedy)
    assert rollout.response_ids.equal(expected.response_ids)
    assert rollout.completions == expected.completions
    assert rollout.finished.equal(expected.finished)
    assert rollout.prompt_ids.equal(expected.prompt_ids)


def test_rollouts_come_from_the_weights_after_each_optimiser_step(server_url, vllm_model_dir):  # noqa: F811
    """The server samples from the policy as it is: after a direct edit (the tied LM head
    included), then after fused AdamW steps, its log-probs equal the updated model's."""
    model, tokenizer = load_causal_lm(ModelCfg(path=str(vllm_model_dir), device="cpu"))
    backend = get_backend("vllm-server", model, tokenizer)
    greedy = generate(backend, server_url, temperature=0.0)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(3.0)
        model.model.embed_tokens.weight.mul_(3.0)
    assert_logprobs_match_forward(model, generate(backend, server_url, temperature=0.0), 0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    for _ in range(2):
        raise_logprobs(model, greedy, optimizer)
        assert_logprobs_match_forward(model, generate(backend, server_url), 1.0)


def test_lora_policy_is_pushed_with_adapters_merged(server_url, vllm_model_dir):  # noqa: F811
    from rlhfkit.models.lora import attach_lora

    model, tokenizer = load_causal_lm(ModelCfg(path=str(vllm_model_dir), device="cpu"))
    policy = attach_lora(model, LoraCfg(rank=4, alpha=8, target_modules=("q_proj", "v_proj")))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    rollout = generate(get_backend("vllm-server", policy, tokenizer), server_url)
    assert_logprobs_match_forward(policy, rollout, 1.0)


def test_grpo_learns_with_rollouts_on_the_server(server_url, vllm_model_dir, tmp_path):  # noqa: F811
    """`rlhfkit grpo --gen.backend vllm-server` on the letter-o reward (test_vllm's set-up):
    the mean of the last 5 steps' reward minus the first 5's was 0.56 (seed 0, 2-core AMD
    EPYC), where a policy that learned nothing averages 0 +- 0.01; mismatch_kl at most 1e-13."""
    backend = ("--gen.backend=vllm-server", f"--gen.server_url={server_url}")
    rows = grpo_letter_o(vllm_model_dir, tmp_path / "grpo", 0, *backend)
    rewards = [row["reward"] for row in rows]
    assert max(row["mismatch_kl"] for row in rows) < 1e-6
    assert sum(rewards[-5:]) / 5 - sum(rewards[:5]) / 5 > 0.1, rewards


def test_a_server_url_is_required_and_a_dead_one_named(tiny_lm):
    with pytest.raises(ConfigError, match="server_url = '': is needed by gen.backend vllm-server"):
        load(GenCfg, ["--backend", "vllm-server"])
    model, tokenizer = tiny_lm
    backend = get_backend("vllm-server", model, tokenizer)
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens
    with pytest.raises(RlhfkitError, match=rf"gen.server_url {url}: no answer.*vllm serve"):
        generate(backend, url)


def test_grpo_under_torchrun_samples_the_gathered_weights(server_url, vllm_model_dir, workdir):  # noqa: F811
    """2 ranks: under FSDP2 (each rank holds half of every weight) and with LoRA under ddp,
    the ranks gather the weights, rank 0 sends them, and both sample their prompts on the
    server. The rollouts' log-probs are the trainer's own (the logged mismatch_kl, over both
    ranks, is float noise), so at every step the server held the policy's weights."""
    server = ("--gen.backend", "vllm-server", "--gen.server_url", server_url, "--steps", "3")
    runs = {
        "fsdp2": grpo_args(workdir, vllm_model_dir, "fsdp2", *server, "--dist.strategy", "fsdp2"),
        "lora": grpo_args(workdir, vllm_model_dir, "lora", *server, "--lora.rank", "4"),
    }
    code, ranks, stderr = torchrun(list(runs.values()), workdir)
    assert code == 0 and ranks == [[0, 0], [0, 0]], stderr[-3000:]
    for run in runs:
        rows = [json.loads(line) for line in (workdir / run / "metrics.jsonl").open()]
        assert len(rows) == 3
        assert max(row["mismatch_kl"] for row in rows) < 1e-6, rows
