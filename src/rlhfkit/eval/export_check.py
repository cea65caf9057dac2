"""Does an exported model still compute what was trained? Checked on 20 fixed prompts.

Both models see the same token ids (the original's tokenizer; a batch of one, so no padding):

- exact formats (hf, gguf f16, onnx): the logits at every position of prompt + the original's
  greedy completion must lie within ``Tolerance.logits`` of the original's, measured as
  max |Δ logit| / max |original logit| per prompt (scale-free, so one bound fits a random tiny
  model and a trained one);
- quantised formats (gguf q8_0, int8): on those same positions the export's top-1 token must
  be the original's greedy token at least ``Tolerance.agreement`` of the time, and the held-out
  reward of its own greedy completions must lie within ``Tolerance.reward`` of the original's.

A GGUF file tokenises text itself, so its tokenisation of the 20 prompts must equal the
original tokenizer's, and its chat template the original's. Greedy completions are timed for the
table: tokens/s of the export against the original on the same prompts.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PLAIN_PROMPTS = (
    "The movie was a delight from start to finish, and",
    "I did not enjoy the long and boring second half because",
    "Once upon a time, in a small village by the sea,",
    "The best way to learn a new language is",
    "Reward models learn from human ratings of completions, so",
    "def fibonacci(n):\n    ",
    "Q: What is 12 plus 30?\nA:",
    "The capital of France is",
    "She said the food was good, but the service",
    "Ingredients: two eggs, a cup of flour,",
)
CHAT_PROMPTS = (
    "Write a short poem about the sea and the sky.",
    "What is two plus three?",
    "Give me three tips for sleeping better.",
    "Explain what a language model is in one sentence.",
    "Translate 'good morning' into French.",
    "Summarise: the meeting moved to Friday because the room was booked.",
    "Is a tomato a fruit or a vegetable?",
    "Name a colour that rhymes with 'bed'.",
    "How many legs does a spider have?",
    "Say something kind to someone having a bad day.",
)


@dataclass(frozen=True)
class Tolerance:
    """The bounds an export must meet (docs/export.md says why each is what it is)."""

    logits: float
    """Exact formats: max |Δ logit| / max |original logit| on any prompt."""
    agreement: float = 0.0
    """Quantised formats: share of positions where the export's top-1 is the original's token."""
    reward: float = 0.0
    """Quantised formats: |mean reward of the export's completions - the original's|."""


@dataclass(frozen=True)
class Prompt:
    """A prompt as token ids, and its text (what a runtime that tokenises itself is given)."""

    text: str
    ids: list[int]


@dataclass
class Side:
    """One model's greedy run over the prompts."""

    completions: list[list[int]]
    seconds: float
    load_seconds: float
    size_bytes: int

    @property
    def tokens_per_second(self) -> float:
        return sum(map(len, self.completions)) / max(self.seconds, 1e-9)


@dataclass
class Report:
    """What the check measured, and which bounds failed (none: the export passed)."""

    label: str
    exact: bool
    logit_gap: float
    agreement: float
    same_completions: int
    reward_original: float
    reward_export: float
    original: Side
    export: Side
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def fixed_prompts(tokenizer: Any) -> list[Prompt]:
    """The 20 prompts: 10 plain continuations and 10 chat turns (in the model's chat template,
    with the assistant's turn opened; plain again when the tokenizer has no template)."""
    texts = list(PLAIN_PROMPTS)
    for message in CHAT_PROMPTS:
        if getattr(tokenizer, "chat_template", None):
            texts.append(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": message}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
            )
        else:
            texts.append(message)
    return [Prompt(text, tokenizer(text)["input_ids"]) for text in texts]


def greedy_side(
    runner: Any, prompts: Sequence[Prompt], max_new_tokens: int, eos: int, load: float, size: int
) -> Side:
    """Greedy completions of every prompt, timed together."""
    started = time.perf_counter()
    completions = [runner.greedy(p.ids, max_new_tokens, eos) for p in prompts]
    return Side(completions, time.perf_counter() - started, load, size)


def compare(
    label: str,
    exact: bool,
    tolerance: Tolerance,
    prompts: Sequence[Prompt],
    original: Any,
    original_side: Side,
    export: Any,
    export_side: Side,
    reward: Any,
    tokenizer: Any,
) -> Report:
    """Check ``export`` against ``original`` on ``prompts`` (see the module docstring)."""
    from rlhfkit.rewards import compute_rewards

    gaps, agree, total = [], 0, 0
    for prompt, completion in zip(prompts, original_side.completions, strict=True):
        ids = prompt.ids + completion
        want, got = original.logits(ids), export.logits(ids)  # (T, V) each
        gaps.append(float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-9)))
        # positions P - 1 .. T - 1 predict the completion and its end: the greedy choices
        chosen = slice(len(prompt.ids) - 1, len(ids))
        agree += int((got[chosen].argmax(-1) == want[chosen].argmax(-1)).sum())
        total += len(ids) - len(prompt.ids) + 1
    texts = [p.text for p in prompts]

    def mean_reward(side: Side) -> float:
        decoded = tokenizer.batch_decode(side.completions, skip_special_tokens=True)
        return float(np.mean(compute_rewards(reward, texts, decoded)))

    report = Report(
        label=label,
        exact=exact,
        logit_gap=max(gaps),
        agreement=agree / total,
        same_completions=sum(
            a == b for a, b in zip(original_side.completions, export_side.completions, strict=True)
        ),
        reward_original=mean_reward(original_side),
        reward_export=mean_reward(export_side),
        original=original_side,
        export=export_side,
    )
    report.failures += _failures(report, tolerance)
    report.failures += _runtime_failures(export, prompts, tokenizer)
    return report


def _failures(report: Report, tolerance: Tolerance) -> list[str]:
    if report.exact:
        if report.logit_gap > tolerance.logits:
            return [
                f"logits differ from the original's by {report.logit_gap:.2e} of their scale "
                f"(allowed {tolerance.logits:.0e})"
            ]
        return []
    failures = []
    if report.agreement < tolerance.agreement:
        failures.append(
            f"top-1 token agrees with the original's greedy choice at {report.agreement:.1%} "
            f"of positions (at least {tolerance.agreement:.0%} required)"
        )
    gap = abs(report.reward_export - report.reward_original)
    if gap > tolerance.reward:
        failures.append(
            f"held-out reward {report.reward_export:.3f} against the original's "
            f"{report.reward_original:.3f}: off by {gap:.3f} (allowed {tolerance.reward})"
        )
    return failures


def _runtime_failures(export: Any, prompts: Sequence[Prompt], tokenizer: Any) -> list[str]:
    """A runtime that reads text itself (llama.cpp) must tokenise and template as the original."""
    failures = []
    if hasattr(export, "tokenize"):
        differ = [i for i, p in enumerate(prompts) if export.tokenize(p.text) != p.ids]
        if differ:
            failures.append(
                f"llama.cpp tokenises {len(differ)} of {len(prompts)} prompts differently from "
                f"the original tokenizer (first: prompt {differ[0] + 1}, {prompts[differ[0]].text!r})"
            )
    template = getattr(export, "chat_template", None)
    if template is not None and template != (getattr(tokenizer, "chat_template", None) or ""):
        failures.append("the chat template in the file differs from the original's")
    return failures


def directory_bytes(path: Path) -> int:
    """Bytes of every file under ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def render_table(report: Report) -> str:
    """Size, load time and tokens/s of the export against the original, and the check's figures."""
    rows = [("original (hf, float32)", report.original), (report.label, report.export)]
    lines = [f"{'':24} {'size':>10} {'load s':>8} {'tokens/s':>9}"]
    for name, side in rows:
        lines.append(
            f"{name:24} {side.size_bytes / 2**20:>8.1f}MB {side.load_seconds:>8.2f} "
            f"{side.tokens_per_second:>9.1f}"
        )
    lines.append(
        f"logit gap {report.logit_gap:.2e} of scale; top-1 agreement {report.agreement:.1%}; "
        f"identical greedy completions {report.same_completions}/{len(report.original.completions)}"
        f"; held-out reward {report.reward_export:.3f} (original {report.reward_original:.3f})"
    )
    return "\n".join(lines)
