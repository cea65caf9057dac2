"""Shared fixtures: a tiny random Llama with a small real tokenizer, and an isolated asset cache.

The tiny model is built from a config (no download), saved once per session, and loads in a
fraction of a second, so fast tests exercise the same code paths as the real model.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: no test may reach a model hub

SENTENCES = [
    "The movie was a delight from start to finish.",
    "I did not enjoy the long and boring second half.",
    "What is two plus three? The answer is five.",
    "Please write a short poem about the sea and the sky.",
    "She said the food was good, but the service was slow.",
    "Reward models learn from human ratings of completions.",
    "A small model can still learn to follow simple instructions.",
    "Count the legs: a cat has four legs and a bird has two.",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(autouse=True)
def _fast_test_setup(request, tmp_path_factory, monkeypatch):
    """Fast tests never touch the real asset cache and run torch on one thread.

    Slow tests use the real cache (~/.cache/rlhfkit) and torch's own thread count (every
    core; ``make test`` runs them one at a time, after the fast ones): a real model's sums
    round differently on another number of threads, and the learning margins were measured on
    every core (the demo test's held-out reward rose 0.141 -> 0.173 on one thread of the 2-core
    AMD EPYC, where its margin asks for +0.05, and passes on two). For tiny models, thread
    start-up costs more than the arithmetic: on a busy 2-core machine one thread is ~10x faster.
    """
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    monkeypatch.setenv("RLHFKIT_HOME", str(tmp_path_factory.mktemp("rlhfkit_home")))
    with _torch_threads(1):
        yield


@contextlib.contextmanager
def _torch_threads(threads: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _no_deterministic_mode_left_behind():
    """``--run.deterministic`` turns on torch's deterministic kernels for the whole process; a
    test that trains with it must not leave them on for the tests after it."""
    yield
    torch = sys.modules.get("torch")  # not imported here: a config test never loads it
    if torch is not None and torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(False)


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer (~300 tokens) trained in memory, with a ChatML-style template.

    EOS is ``<|im_end|>``; no pad token is saved, as with many real models, so loading it goes
    through ``load_tokenizer``'s pad-from-EOS path.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|im_end|>", "<|im_start|>"], show_progress=False
    )
    core.train_from_iterator(SENTENCES, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE
    )


def build_tiny_llama(vocab_size: int, eos_token_id: int, seed: int = 0, tied: bool = False):
    """A 2-layer random Llama small enough to run hundreds of forward passes in a second;
    ``tied``: its LM head is its input embedding, as SmolLM2's is."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Directory of a saved tiny random Llama + tokenizer (context 128 tokens). Read-only."""
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(len(tokenizer), tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def ending_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama that ends its outputs often, as a trained model does: P(EOS) about 0.17
    per token (a random one's is 1/vocab). Length goals are met by stopping at the right time, and
    a cut-off sample teaches no EOS, so a model that never ends has nothing to learn from. Read-only.
    """
    import torch

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(len(tokenizer), tokenizer.eos_token_id)
    with torch.no_grad():  # EOS's output row along the mean final hidden state: logit ~2 on average
        ids = torch.randint(0, len(tokenizer), (16, 32), generator=torch.Generator().manual_seed(0))
        mean = model.model(ids).last_hidden_state.flatten(0, 1).mean(0)
        model.lm_head.weight[tokenizer.eos_token_id] = 2.0 * mean / mean.norm() ** 2
    path = tmp_path_factory.mktemp("ending-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    """(model, tokenizer) loaded from ``tiny_model_dir`` on CPU, shared by the session.

    Do not train or modify it; load your own copy from ``tiny_model_dir`` for that.
    """
    from rlhfkit.config import ModelCfg
    from rlhfkit.models import load_causal_lm

    return load_causal_lm(ModelCfg(path=str(tiny_model_dir), device="cpu"))


# The RL loop tests' device: `RLHFKIT_TEST_DEVICE=cuda pytest tests/test_ppo.py tests/test_grpo.py`
# runs learning and exact resume on a GPU (passed on an H200); tests whose tolerances are CPU
# float noise stay on the CPU, as does everything else.
LOOP_DEVICE = os.environ.get("RLHFKIT_TEST_DEVICE", "cpu")

LETTER_O_REWARD = '''
def letter_o(prompts, completions, **meta):
    """Share of characters that are the letter o: dense, so a tiny model can learn it."""
    return [c.count("o") / max(len(c), 1) for c in completions]
'''


def interruptible_reward(tmp_path: Path) -> tuple[str, Path, Path]:
    """(reward spec, call counter, stop file): ``letter_o`` that raises KeyboardInterrupt, as a
    user's Ctrl-C, at the call numbered in the stop file. It reads the files on every call (a
    reward module is imported once per process, so rewriting its source would not take effect).
    """
    counter, stop_at = tmp_path / "calls", tmp_path / "stop_at"
    reward_file = tmp_path / "flaky.py"
    reward_file.write_text(
        LETTER_O_REWARD
        + f"""
import pathlib
def flaky(prompts, completions, **meta):
    calls, stop_at = pathlib.Path({str(counter)!r}), pathlib.Path({str(stop_at)!r})
    n = int(calls.read_text()) + 1 if calls.exists() else 1
    calls.write_text(str(n))
    if stop_at.exists() and n == int(stop_at.read_text()):
        raise KeyboardInterrupt
    return letter_o(prompts, completions)
"""
    )
    return f"{reward_file}:flaky", counter, stop_at


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    """Four short plain-text prompts for the RL loops."""
    path = tmp_path / "prompts.txt"
    path.write_text("The movie was\nWhat is two\nPlease write a\nShe said the\n")
    return path


@pytest.fixture
def reward_spec(tmp_path) -> str:
    """A user reward file (``letter_o``) that a tiny random model can learn within 30 steps."""
    path = tmp_path / "reward_o.py"
    path.write_text(LETTER_O_REWARD)
    return f"{path}:letter_o"


@pytest.fixture
def sampler_below_trainer(monkeypatch):
    """Call it to make the rollout step's sampler report log-probs log 2 below those it sampled
    with, as another engine's might; the trainer's own log-probs stay as they are."""
    import math
    from dataclasses import replace

    from rlhfkit.train import rollout

    real_sample = rollout.sample

    def underrated(*args, **kwargs):
        sampled = real_sample(*args, **kwargs)
        return replace(sampled, logprobs=sampled.logprobs - math.log(2))

    return lambda: monkeypatch.setattr(rollout, "sample", underrated)


def send_json(handler, status: int, body) -> None:
    """Answer an ``http.server`` request with ``body`` (JSON-encoded unless already bytes)."""
    import json

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(raw)))
    handler.end_headers()
    handler.wfile.write(raw)
