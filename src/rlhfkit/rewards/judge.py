"""LLM judges: a language model asked which of two responses is better, or whether one is good.

A judge reads a judging prompt and answers with one of two words ("A" or "B"; "Yes" or "No").
Each implementation gives ``choice_probabilities``: the probability of the first word, over
the two, after each prompt. Everything else is shared:

- ``prefer(prompt, a, b, outcome_a, outcome_b)``: P(A is better). LLM judges favour one
  position (Zheng et al. 2023, "Judging LLM-as-a-judge", arXiv 2306.05685), so both orders are
  asked and averaged: P = (P(A | a, b) + 1 - P(A | b, a)) / 2. A judge that only reads the
  position then scores 0.5, whatever it was biased toward.
- ``score(prompt, response, outcome)``: P(Yes, it is good), registered as the reward
  ``judge:SPEC`` (scaled to 2P - 1, in [-1, 1]).

When outcomes are given (what happened after each response: RLHS's hindsight, Liang et al.
2025, arXiv 2501.08617), each response is shown with its outcome; otherwise only the responses.
The two implementations: ``LocalJudge`` (any local causal LM; the probability comes from its
next-token log-probs) and ``EndpointJudge`` (an OpenAI-compatible chat-completions server; the
probability comes from the reply's top log-probs when the server gives them, else from the text).

This module imports only the standard library (and ``rlhfkit.config``, which does too) at the
top: importing ``rlhfkit.rewards`` registers ``judge`` without loading torch.
"""

from __future__ import annotations

import json
import math
import os
import re
import string
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from typing import Any, Protocol

from rlhfkit.config import endpoint_spec
from rlhfkit.errors import ConfigError, RewardError
from rlhfkit.rewards.registry import RewardFn, register_reward

PAIR_TEMPLATE = (
    "A person asked for help:\n{prompt}\n\n"
    "Response A:\n{response_a}\n\n"
    "Response B:\n{response_b}\n\n"
    "Which response leaves the person better off? Answer with one letter, A or B."
)
"""The pairwise judging prompt: ``{prompt}``, ``{response_a}``, ``{response_b}``."""

POINT_TEMPLATE = (
    "A person asked for help:\n{prompt}\n\n"
    "Response:\n{response}\n\n"
    "Does this response leave the person better off? Answer Yes or No."
)
"""The pointwise judging prompt: ``{prompt}``, ``{response}``."""

WITH_OUTCOME = "{response}\n\nWhat happened next:\n{outcome}"
"""How a response is shown with its outcome (hindsight); without one it is shown alone."""

DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"


class PairwiseJudge(Protocol):
    """Anything that says how likely response A is the better one."""

    name: str

    def prefer(
        self,
        prompt: str,
        response_a: str,
        response_b: str,
        outcome_a: str | None = None,
        outcome_b: str | None = None,
    ) -> float:
        """P(response A is better than response B), in [0, 1]."""
        ...


def shown(response: str, outcome: str | None) -> str:
    """A response as the judge sees it: with its outcome in hindsight, alone in foresight."""
    return response if outcome is None else WITH_OUTCOME.format(response=response, outcome=outcome)


def template_problem(template: str, fields: tuple[str, ...]) -> str | None:
    """What is wrong with a prompt template (None if nothing): it must name each of ``fields``
    and no other (``{{`` writes a literal brace)."""
    try:
        found = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        return f"is malformed ({e}); write {{{{ and }}}} for literal braces"
    wanted = ", ".join("{" + f + "}" for f in fields)
    if missing := set(fields) - found:
        return f"lacks {', '.join('{' + f + '}' for f in sorted(missing))}; use {wanted}"
    if unknown := found - set(fields):
        return (
            f"names unknown {', '.join('{' + f + '}' for f in sorted(unknown))}; use only "
            f"{wanted} (write {{{{ for a literal brace)"
        )
    return None


class Judge(ABC):
    """The shared part of every judge: prompts in both orders, averaged; pointwise scores."""

    name: str = "judge"

    def __init__(self, pair_template: str = PAIR_TEMPLATE, point_template: str = POINT_TEMPLATE):
        for option, template, fields in (
            ("judge.template", pair_template, ("prompt", "response_a", "response_b")),
            ("judge.point_template", point_template, ("prompt", "response")),
        ):
            if problem := template_problem(template, fields):
                raise ConfigError(f"{option}: the template {problem}")
        self.pair_template, self.point_template = pair_template, point_template

    @abstractmethod
    def choice_probabilities(self, texts: list[str], first: str, second: str) -> list[float]:
        """P(the judge answers ``first`` rather than ``second``) after each judging prompt."""

    def pair_prompt(
        self,
        prompt: str,
        response_a: str,
        response_b: str,
        outcome_a: str | None = None,
        outcome_b: str | None = None,
    ) -> str:
        """The judging prompt for one order of a pair."""
        if (outcome_a is None) != (outcome_b is None):
            raise ValueError("give both outcomes (hindsight) or neither (foresight)")
        return self.pair_template.format(
            prompt=prompt,
            response_a=shown(response_a, outcome_a),
            response_b=shown(response_b, outcome_b),
        )

    def prefer(
        self,
        prompt: str,
        response_a: str,
        response_b: str,
        outcome_a: str | None = None,
        outcome_b: str | None = None,
    ) -> float:
        """P(A is better), averaged over both orders to cancel the judge's position bias."""
        a_first = self.pair_prompt(prompt, response_a, response_b, outcome_a, outcome_b)
        b_first = self.pair_prompt(prompt, response_b, response_a, outcome_b, outcome_a)
        p_a_first, p_b_first = self.choice_probabilities([a_first, b_first], "A", "B")
        return 0.5 * (p_a_first + 1.0 - p_b_first)

    def prefer_all(
        self, prompts: list[str], responses_a: list[str], responses_b: list[str]
    ) -> list[float]:
        """``prefer`` for each (prompt, a, b) without outcomes, every judging prompt in one
        ``choice_probabilities`` call (a local judge batches them)."""
        triples = list(zip(prompts, responses_a, responses_b, strict=True))
        texts = [self.pair_prompt(p, a, b) for p, a, b in triples]
        texts += [self.pair_prompt(p, b, a) for p, a, b in triples]
        probabilities = self.choice_probabilities(texts, "A", "B")
        a_first, b_first = probabilities[: len(triples)], probabilities[len(triples) :]
        return [0.5 * (x + 1.0 - y) for x, y in zip(a_first, b_first, strict=True)]

    def score(
        self, prompts: list[str], responses: list[str], outcomes: list[str] | None = None
    ) -> list[float]:
        """P(the judge calls each response good), in [0, 1]."""
        outcomes = outcomes or [None] * len(responses)
        texts = [
            self.point_template.format(prompt=prompt, response=shown(response, outcome))
            for prompt, response, outcome in zip(prompts, responses, outcomes, strict=True)
        ]
        return self.choice_probabilities(texts, "Yes", "No")


# --- a local causal LM ---------------------------------------------------------------------------


class LocalJudge(Judge):
    """A local causal LM as judge: compares its next-token log-probs of the two answer words.

    The judging prompt goes through the model's chat template when it has one (an instruct
    model answers in its own turn). An answer word may begin with or without a space; both
    spellings count, their first tokens' probabilities summed.
    """

    def __init__(self, model: Any, tokenizer: Any, name: str = "local", **templates: str):
        super().__init__(**templates)
        from rlhfkit.data.sequences import uses_chat_template  # torch: only a local judge

        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.chat = uses_chat_template(tokenizer, "auto")
        self.context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        self.batch_size = 16  # judging prompts per forward pass

    @classmethod
    def load(cls, path: str, device: str = "auto", **templates: str) -> LocalJudge:
        from rlhfkit.config import ModelCfg
        from rlhfkit.models import load_causal_lm

        model, tokenizer = load_causal_lm(ModelCfg(path=path, device=device))
        return cls(model, tokenizer, name=path, **templates)

    def answer_ids(self, word: str, other: str) -> list[int]:
        """Tokens that begin ``word`` (alone or after a space) and not ``other``: the next token
        decides which of the two answers the judge gives."""

        def first_tokens(answer: str) -> set[int]:
            spelled = (
                self.tokenizer.encode(spelling, add_special_tokens=False)
                for spelling in (answer, " " + answer)
            )
            return {ids[0] for ids in spelled if ids}

        ids = first_tokens(word) - first_tokens(other)
        if not ids:
            raise RewardError(
                f"judge {self.name}: its tokenizer begins {word!r} and {other!r} "
                "with the same token, so one next token cannot tell them apart; "
                "use another judge model"
            )
        return sorted(ids)

    def render(self, text: str) -> str:
        from rlhfkit.data.sequences import render_prompt

        return render_prompt(self.tokenizer, text, chat=True) if self.chat else text + "\nAnswer:"

    def choice_probabilities(self, texts: list[str], first: str, second: str) -> list[float]:
        import torch

        first_ids, second_ids = self.answer_ids(first, second), self.answer_ids(second, first)
        device = next(self.model.parameters()).device
        probabilities = []
        for start in range(0, len(texts), self.batch_size):
            rendered = [self.render(text) for text in texts[start : start + self.batch_size]]
            batch = self.tokenizer(
                rendered,
                return_tensors="pt",
                padding=True,
                padding_side="left",
                add_special_tokens=not self.chat,
            )
            width = batch["input_ids"].shape[1]
            if self.context and width > self.context:
                raise RewardError(
                    f"judge {self.name}: a judging prompt is {width} tokens, beyond "
                    f"the model's context of {self.context}; shorten the responses "
                    "(gen.max_new_tokens, simulator.max_new_tokens) or the template"
                )
            mask = batch["attention_mask"].to(device)  # (N, T)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: count real tokens
            with torch.no_grad():
                logits = (
                    self.model(
                        input_ids=batch["input_ids"].to(device),
                        attention_mask=mask,
                        position_ids=position_ids,
                    )
                    .logits[:, -1]
                    .float()
                )  # (N, V)
            logprobs = logits.log_softmax(dim=-1)
            first_lp = logprobs[:, first_ids].logsumexp(dim=-1)  # (N,)
            second_lp = logprobs[:, second_ids].logsumexp(dim=-1)  # (N,)
            probabilities += torch.sigmoid(first_lp - second_lp).tolist()  # first's share
        return probabilities


# --- an OpenAI-compatible endpoint ---------------------------------------------------------------


class EndpointJudge(Judge):
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, llama.cpp,
    OpenAI ...), asked at temperature 0.

    With ``logprobs`` the server is asked for the first token's top log-probs, and the
    probability is the first word's share of the two; a reply without them (or without either
    word among them) is read as text: it must name exactly one of the two words.
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        logprobs: bool = True,
        **templates: str,
    ):
        super().__init__(**templates)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"judge.url = {url!r}: give the server's base URL, such as http://localhost:8000/v1"
            )
        if not model:
            raise ConfigError("judge.endpoint_model: name the model the server should run")
        self.url = url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.timeout, self.retries, self.backoff, self.logprobs = (
            timeout,
            retries,
            backoff,
            logprobs,
        )
        self.name = f"{model}@{url}"

    def choice_probabilities(self, texts: list[str], first: str, second: str) -> list[float]:
        return [self._ask(text, first, second) for text in texts]

    def _ask(self, text: str, first: str, second: str) -> float:
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": 8,
            "messages": [{"role": "user", "content": text}],
        }
        if self.logprobs:
            body.update(logprobs=True, top_logprobs=10)
        reply = self._post(body)
        try:
            choice = reply["choices"][0]
            content = choice["message"]["content"] or ""
            top = ((choice.get("logprobs") or {}).get("content") or [{}])[0].get("top_logprobs")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise RewardError(
                f"judge endpoint {self.url}: malformed reply "
                f"{_excerpt(json.dumps(reply))}: expected choices[0].message.content"
            ) from None
        if top:
            mass = {first: 0.0, second: 0.0}
            for entry in top:
                word = _answer_word(str(entry.get("token", "")), first, second)
                if word is not None:
                    mass[word] += math.exp(float(entry.get("logprob", -math.inf)))
            if mass[first] + mass[second] > 0:
                return mass[first] / (mass[first] + mass[second])
        flags = 0 if len(first) == 1 else re.IGNORECASE  # "A" the letter, not "a" the article
        named = {
            _answer_word(word, first, second)
            for word in re.findall(
                rf"\b(?:{re.escape(first)}|{re.escape(second)})\b", content, flags
            )
        }
        if len(named) != 1:
            raise RewardError(
                f"judge endpoint {self.url}: reply {_excerpt(content)} names "
                f"{'both' if named else 'neither'} of {first!r} and {second!r}; use "
                "a model that answers the judging prompt with one of them"
            )
        return 1.0 if named == {first} else 0.0

    def reply(self, messages: list[dict[str, str]], max_tokens: int) -> str:
        """The server's text answer to a chat at temperature 0 (a judge prompt that asks for an
        explanation before its verdict, as MT-Bench's do)."""
        body = {"model": self.model, "temperature": 0, "max_tokens": max_tokens}
        reply = self._post({**body, "messages": messages})
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise RewardError(
                f"judge endpoint {self.url}: malformed reply "
                f"{_excerpt(json.dumps(reply))}: expected choices[0].message.content"
            ) from None

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST with retries: a timeout, a refused connection, 429 or 5xx waits backoff x 2^k."""
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(
            self.url, json.dumps(body).encode(), headers, method="POST"
        )
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as e:
                detail = _excerpt(e.read().decode("utf-8", "replace"))
                problem = f"HTTP {e.code} {detail}"
                if e.code in (401, 403):
                    raise RewardError(
                        f"judge endpoint {self.url}: {problem}; set the API key in "
                        f"${self.api_key_env} (judge.api_key_env names the "
                        "variable)"
                    ) from None
                if e.code != 429 and e.code < 500:
                    raise RewardError(
                        f"judge endpoint {self.url}: {problem}; check "
                        "judge.endpoint_model and that the server speaks the "
                        "OpenAI chat-completions API"
                    ) from None
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                problem = str(getattr(e, "reason", e))
                continue
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                raise RewardError(
                    f"judge endpoint {self.url}: the reply is not JSON "
                    f"({_excerpt(raw.decode('utf-8', 'replace'))})"
                ) from None
        raise RewardError(
            f"judge endpoint {self.url}: no answer after {self.retries + 1} tries "
            f"({problem}); check that the server runs there and raise "
            "judge.timeout if it is slow"
        )


def _answer_word(token: str, first: str, second: str) -> str | None:
    """``first`` or ``second`` if ``token`` spells it (words of several letters in any case)."""
    token = token.strip()
    for word in (first, second):
        if token == word or (len(word) > 1 and token.lower() == word.lower()):
            return word
    return None


def _excerpt(text: str, width: int = 80) -> str:
    text = " ".join(str(text).split())
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def load_judge(spec: str, **options: Any) -> Judge:
    """``MODEL@http(s)://HOST/v1`` is an endpoint judge; anything else a local model (an alias
    or a directory). ``options`` go to the judge (templates; endpoint settings)."""
    served = endpoint_spec(spec)
    if served is not None:
        endpoint = {k: v for k, v in options.items() if k not in ("device",)}
        return EndpointJudge(served[1], served[0], **endpoint)
    local = {k: v for k, v in options.items() if k in ("device", "pair_template", "point_template")}
    return LocalJudge.load(spec, **local)


@register_reward("judge")
def judge_reward(arg: str | None) -> RewardFn:
    """An LLM judge: judge:MODEL_DIR or judge:MODEL@http://HOST/v1 scores 2 P(good) - 1."""
    if not arg:
        raise ConfigError(
            "reward 'judge': name the judge: judge:smollm2 (a local model) or "
            f"judge:MODEL@http://HOST/v1 (an endpoint; key in ${DEFAULT_API_KEY_ENV})"
        )
    judge = load_judge(arg)

    def llm_judge(prompts: list[str], completions: list[str], **meta: list[Any]) -> list[float]:
        """2 P(the judge says Yes, the completion is good) - 1, in [-1, 1]."""
        return [2.0 * p - 1.0 for p in judge.score(prompts, completions)]

    return llm_judge
