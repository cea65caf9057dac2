"""The llama.cpp engine: a GGUF file in llama-cpp-python, one request at a time.

llama.cpp decodes (its KV cache, the prompt prefix it keeps from the previous request) and
samples (its own sampler chain, seeded per request); this module only turns the tokens it yields
into chunks, with the text release every engine shares (``TextRelease``: stop strings, half
UTF-8 characters) and the model's log-probabilities read from llama.cpp's logits of the step.
``Llama`` is not thread-safe, so requests take turns on a lock, as in llama-cpp-python's own
server; a request waiting for its turn has already been checked (too long, no chat template).

Chats are rendered with the chat template stored in the GGUF's metadata by transformers' own
template renderer, with the same special tokens, so a GGUF and the model directory it was
exported from turn the same messages into the same prompt.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlhfkit.errors import ConfigError
from rlhfkit.serve import engine
from rlhfkit.serve.engine import Chunk, Messages, Request, TextRelease, TokenLogprob

INSTALL = "pip install 'rlhfkit[llama]'"
SEEDS = 2**32 - 1  # llama.cpp's seeds are uint32, and 2**32 - 1 asks it for a random one
SPECIAL_TOKENS = {  # the template's variables -> the GGUF keys of their ids, as transformers names them
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "pad_token": "tokenizer.ggml.padding_token_id",
}


@dataclass(frozen=True)
class Options:
    """What the llama.cpp engine needs beyond the GGUF file."""

    n_ctx: int = 0  # context in tokens; 0 = the model's own
    n_threads: int = 0  # CPU threads; 0 = llama.cpp's default (half the cores)


def gguf_file(model: str) -> Path | str:
    """The GGUF file ``model`` names (a .gguf file, or a directory that holds one, as
    ``rlhfkit export --format gguf`` writes), or what is wrong with it."""
    path = Path(model).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) == 1:
            return found[0]
        if not found:
            return "is a directory with no .gguf file; give a GGUF file (rlhfkit export --format gguf writes one)"
        return f"holds {len(found)} .gguf files; give the one to serve"
    if path.suffix != ".gguf":
        return "is not a .gguf file; give a GGUF file or the directory export --format gguf wrote"
    if not path.is_file():
        return "does not exist; give a GGUF file"
    return path


def load(model: str, options: Options) -> LlamaEngine:
    """The engine on a GGUF file or a directory holding one."""
    try:
        from llama_cpp import Llama
    except ModuleNotFoundError:
        raise ConfigError(
            f"--engine llama.cpp needs llama-cpp-python (the optional extra 'llama'): {INSTALL}"
        ) from None
    path = gguf_file(model)
    if isinstance(path, str):
        raise ConfigError(f"model {model!r} {path}")
    llm = Llama(
        model_path=str(path),
        n_ctx=options.n_ctx,
        n_threads=options.n_threads or None,
        verbose=False,
    )
    return LlamaEngine(llm)


class LlamaEngine:
    """A llama-cpp-python ``Llama`` serving one request at a time; see the module docstring."""

    def __init__(self, llm: Any):
        import llama_cpp

        self.llm = llm
        self.lock = threading.Lock()
        # the context asked for (the model's own by default); llama.cpp rounds its cache up to a
        # multiple of 256, room it may have but the model was not made for
        self.context = min(llm.n_ctx(), llm.context_params.n_ctx)
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.n_vocab = llm.n_vocab()
        template = llm.metadata.get("tokenizer.chat_template")
        self.template = chat_template(template, special_tokens(llm)) if template else None

    def stream(self, request: Request) -> Iterator[Chunk]:
        prompt_ids = self._encode(request.prompt)
        max_tokens = engine.completion_budget(request, len(prompt_ids), self.context)
        with self.lock:
            yield from self._generate(request, prompt_ids, max_tokens)

    def close(self) -> None:
        with self.lock:
            self.llm.close()

    def _encode(self, prompt: str | Messages) -> list[int]:
        if isinstance(
            prompt, str
        ):  # completions: the text as is, with the model's BOS if it adds one
            return self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        # the template already wrote any BOS token; adding it again would double it
        text = engine.render_chat(self.template, prompt)
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _generate(
        self, request: Request, prompt_ids: list[int], max_tokens: int
    ) -> Iterator[Chunk]:
        import llama_cpp

        seed = request.seed if request.seed is not None else secrets.randbits(32)
        self.llm.set_seed(seed % SEEDS)
        release = TextRelease(self._decode, request.stop)
        generated, reason, last = 0, "length", Chunk("")
        tokens = self.llm.generate(
            prompt_ids,
            temp=request.temperature,  # 0: llama.cpp's greedy sampler
            top_p=request.top_p,
            top_k=0,  # off, as min_p and the penalties: the API samples with temperature and top_p
            min_p=0.0,
            repeat_penalty=1.0,
        )
        try:
            for token in tokens:
                generated += 1
                if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                    reason, last = "stop", release.finish()
                    break
                logprob = (
                    self._logprob(token, request.logprobs) if request.logprobs is not None else None
                )
                chunk, stopped = release.add(token, logprob)
                if stopped:
                    reason, last = "stop", chunk
                    break
                if generated >= max_tokens:
                    last = Chunk(
                        chunk.text + (rest := release.finish()).text, chunk.tokens + rest.tokens
                    )
                    break
                if chunk.text or chunk.tokens:
                    yield chunk
        finally:  # also when the client leaves: the next request starts its own generate
            tokens.close()
        yield Chunk(last.text, last.tokens, reason, len(prompt_ids), generated)

    def _decode(self, ids: list[int]) -> str:
        # control tokens decode to nothing (as skip_special_tokens); a cut UTF-8 character to
        # U+FFFD, which TextRelease holds back
        return self.llm.detokenize(ids).decode("utf-8", errors="replace")

    def _token_text(self, token: int) -> str:
        return self.llm.detokenize([token]).decode("utf-8", errors="replace")

    def _logprob(self, token: int, top: int) -> TokenLogprob:
        """``token``'s log-probability and the ``top`` most likely, from the logits llama.cpp
        sampled it from (the last decoded position; the sampler works on a copy of them)."""
        import llama_cpp

        pointer = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64)
        logprobs = logits - logits.max()  # (V,), log softmax at temperature 1
        logprobs -= np.log(np.exp(logprobs).sum())
        best = np.argpartition(-logprobs, top)[:top] if top else np.array([], dtype=int)
        best = best[np.argsort(-logprobs[best], kind="stable")]
        return TokenLogprob(
            self._token_text(token),
            float(logprobs[token]),
            tuple((self._token_text(int(i)), float(logprobs[i])) for i in best),
        )


def special_tokens(llm: Any) -> dict[str, str]:
    """The special tokens' texts the GGUF names, under the names chat templates use."""
    texts = {}
    for name, key in SPECIAL_TOKENS.items():
        token = llm.metadata.get(key)
        if token is not None:
            texts[name] = llm.detokenize([int(token)], special=True).decode(
                "utf-8", errors="replace"
            )
    return texts


def chat_template(template: str, special: dict[str, str]):
    """``messages -> prompt text`` with the assistant's turn opened, rendered as transformers'
    ``apply_chat_template`` renders it (the same renderer, globals and special tokens)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    def render(messages: Messages) -> str:
        rendered, _ = render_jinja_template(
            conversations=[list(messages)],
            chat_template=template,
            add_generation_prompt=True,
            **special,
        )
        return rendered[0]

    return render
