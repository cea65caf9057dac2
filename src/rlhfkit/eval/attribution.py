"""Which parts of a text moved a reward: token attributions with Captum.

Two methods, both from Captum (the well-kept library for attribution in PyTorch):

- **Integrated gradients** (Sundararajan et al. 2017), for a reward model (``rm:DIR``), which is
  differentiable: along the straight path from a baseline x' to the input x in the embedding
  space,

      IG_i(x) = (x_i - x'_i) · ∫_0^1 ∂f(x' + α (x - x')) / ∂x_i dα,

  summed over each token's embedding dimensions. The baseline blanks the explained part (its
  tokens replaced by the pad token; the rest stays), so by completeness the attributions add up
  to f(x) - f(x'): how much of the score that part earns. Captum's convergence delta says how
  far the Riemann sum is from it.
- **Leave-one-out** (occlusion), for any reward (rules, verifiers, judges, a sentiment head):
  each word of the explained part is removed in turn and the text scored again,

      a_w = r(text) - r(text without w).

  Words, not tokens: a reward reads text, and a half-word is not text a person would remove.

Each explained row is a list of spans (text, part, attribution) that join back into the prompt
and completion, so a page can highlight them as they were written.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from rlhfkit.data.feedback import join_text

METHODS = ("integrated-gradients", "leave-one-out")
PARTS = ("completion", "both")
WORD = re.compile(r"\s*\S+\s*$|\s*\S+")  # a word with the whitespace before it (and at the end)


@dataclass(frozen=True)
class Span:
    text: str
    part: str  # "prompt" or "completion"
    attribution: float


@dataclass(frozen=True)
class Explanation:
    prompt: str
    completion: str
    method: str
    score: float  # the reward of the whole text
    blanked_score: float  # the reward with the explained part blanked (IG's baseline) or removed
    spans: list[Span]
    delta: float | None = None  # IG: sum of attributions - (score - blanked_score)

    def row(self) -> dict[str, Any]:
        return asdict(self)


def words(text: str) -> list[str]:
    """``text`` cut into words, each with the whitespace before it; they join back to ``text``.

    >>> words(" was a delight ")
    [' was', ' a', ' delight ']
    """
    pieces = WORD.findall(text)
    if "".join(pieces) != text:  # whitespace only: one piece, so nothing is lost
        return [text] if text else []
    return pieces


# --- leave-one-out: any reward ---------------------------------------------------------------------


def leave_one_out(
    reward: Callable[..., list[float]],
    prompt: str,
    completion: str,
    meta: dict[str, Any],
    part: str = "completion",
    batch_size: int = 16,
) -> Explanation:
    """Each word's a_w = r(text) - r(text without w), through Captum's FeatureAblation.

    ``reward`` is ``(prompts, completions, **meta) -> scores``; ``meta`` holds this row's
    value of each meta column, repeated for every variant scored.
    """
    from captum.attr import FeatureAblation

    units = [(w, "prompt") for w in words(prompt)] if part == "both" else []
    units += [(w, "completion") for w in words(completion)]
    fixed_prompt = part != "both"

    def score(keep: torch.Tensor) -> torch.Tensor:  # (k, n_units) of 1 / 0 -> (k,)
        prompts, completions = [], []
        for row in keep.tolist():
            kept = [(w, side) for (w, side), on in zip(units, row, strict=True) if on]
            prompts.append(prompt if fixed_prompt else "".join(w for w, s in kept if s == "prompt"))
            completions.append("".join(w for w, s in kept if s == "completion"))
        batch_meta = {key: [value] * len(prompts) for key, value in meta.items()}
        return torch.tensor(reward(prompts, completions, **batch_meta), dtype=torch.float64)

    full = torch.ones(1, len(units), dtype=torch.float64)
    if not units:
        whole = float(score(full)[0])
        return Explanation(prompt, completion, "leave-one-out", whole, whole, [])
    attributions = FeatureAblation(score).attribute(
        full, baselines=0.0, perturbations_per_eval=batch_size
    )[0]
    scores = score(torch.cat([full, torch.zeros_like(full)]))
    spans = [
        Span(text, side, float(value))
        for (text, side), value in zip(units, attributions.tolist(), strict=True)
    ]
    if fixed_prompt:
        spans = [*([Span(prompt, "prompt", 0.0)] if prompt else []), *spans]
    return Explanation(
        prompt, completion, "leave-one-out", float(scores[0]), float(scores[1]), spans
    )


# --- integrated gradients: a reward model -----------------------------------------------------------


def integrated_gradients(
    model: Any, prompt: str, completion: str, part: str = "completion", steps: int = 32
) -> Explanation:
    """Token attributions of a reward model's normalised score over its input embeddings.

    ``model`` is a ``rlhfkit.models.reward_model.RewardModel``; it must have a fast tokenizer
    (for the character offsets that map tokens back to the prompt and the completion).
    """
    from captum.attr import LayerIntegratedGradients

    text = join_text(prompt, completion)
    start = len(text) - len(completion)  # where the completion begins in the joined text
    encoded = model.tokenizer(
        text,
        truncation=True,
        max_length=model.max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_token_type_ids=False,
        return_tensors="pt",
    )
    device = model.head.weight.device
    ids, mask = encoded["input_ids"].to(device), encoded["attention_mask"].to(device)  # (1, T)
    offsets = encoded["offset_mapping"][0].tolist()  # (T, 2) character spans
    special = encoded["special_tokens_mask"][0].bool()  # (T,)
    in_completion = torch.tensor([end > start for _, end in offsets])  # (T,)
    explained = ~special & (in_completion if part == "completion" else torch.ones_like(special))
    pad = model.tokenizer.pad_token_id
    baseline = torch.where(explained.to(device), torch.full_like(ids, pad), ids)  # (1, T)

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return model.score(input_ids, attention_mask.expand(input_ids.shape[0], -1))

    was_training, was_packed = model.training, model.packed
    model.eval()
    model.packed = False  # IG swaps the embedding output in place: one padded batch, unpacked
    try:
        lig = LayerIntegratedGradients(forward, model.backbone.get_input_embeddings())
        attributions, delta = lig.attribute(
            ids,
            baselines=baseline,
            additional_forward_args=(mask,),
            n_steps=steps,
            internal_batch_size=steps,
            return_convergence_delta=True,
        )
        with torch.no_grad():
            scores = forward(torch.cat([ids, baseline]), mask)
    finally:
        model.train(was_training)
        model.packed = was_packed
    per_token = attributions.sum(-1)[0].detach().cpu().tolist()  # (T,)
    spans = _token_spans(text, start, offsets, per_token)
    return Explanation(
        prompt,
        completion,
        "integrated-gradients",
        float(scores[0]),
        float(scores[1]),
        spans,
        float(delta.reshape(-1)[0]),
    )


def _token_spans(
    text: str, start: int, offsets: Sequence[Sequence[int]], values: Sequence[float]
) -> list[Span]:
    """Spans that cover ``text`` whole: each token's characters (and the gap before it) carry
    its attribution; special tokens (offsets (0, 0)) carry none. A token straddling the
    prompt / completion join is split there, its value kept on the completion side."""
    spans, cursor = [], 0
    for (begin, end), value in zip(offsets, values, strict=True):
        if end <= begin or end <= cursor:
            continue
        if cursor < start < end:  # the join falls inside this token (or the gap before it)
            spans.append(Span(text[cursor:start], "prompt", 0.0))
            cursor = start
        spans.append(Span(text[cursor:end], "prompt" if end <= start else "completion", value))
        cursor = end
    if cursor < len(text):  # cut off by max_length: the rest is shown, unattributed
        if cursor < start:
            spans.append(Span(text[cursor:start], "prompt", 0.0))
            cursor = start
        spans.append(Span(text[cursor:], "completion", 0.0))
    return spans


# --- the page -------------------------------------------------------------------------------------


def html_page(explanations: Sequence[Explanation], title: str) -> str:
    """A self-contained page: each row's text with every span shaded by its attribution (green
    raised the reward, red lowered it; the strongest span of a row at full colour), its value
    on hover. No script; every text is escaped."""
    rows = []
    for number, item in enumerate(explanations, start=1):
        top = max((abs(s.attribution) for s in item.spans), default=0.0) or 1.0
        body = "".join(_shaded(span, top) for span in item.spans)
        delta = "" if item.delta is None else f", convergence delta {item.delta:+.3g}"
        rows.append(
            f"<section><h2>{number}</h2><p class=meta>{item.method}: score "
            f"{item.score:+.3f}, with the part explained blanked {item.blanked_score:+.3f}"
            f"{delta}</p><pre>{body}</pre></section>"
        )
    return (
        "<!doctype html><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60em;margin:2em auto}"
        "pre{white-space:pre-wrap;font:15px/1.7 ui-monospace,monospace}"
        ".prompt{color:#555}.meta{color:#666;font-size:13px}</style>"
        f"<h1>{html.escape(title)}</h1>"
        "<p>Green raised the reward, red lowered it; hover a span for its value. "
        "Grey text is the prompt.</p>" + "".join(rows)
    )


def _shaded(span: Span, top: float) -> str:
    strength = min(abs(span.attribution) / top, 1.0)
    colour = "0,160,60" if span.attribution > 0 else "220,40,40"
    return (
        f'<span class={span.part} style="background:rgba({colour},{strength * 0.6:.2f})" '
        f'title="{span.attribution:+.4g}">{html.escape(span.text)}</span>'
    )
