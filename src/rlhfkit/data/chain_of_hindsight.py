"""Chain of Hindsight sequences: outputs written after the feedback they earned.

Chain of Hindsight (Liu, Sferrazza & Abbeel 2023, arXiv 2302.02676) turns any feedback into
language-model training text. Each output follows a natural-language phrase describing its
feedback ("A good answer:", "A bad answer:", or an annotator's critique); trained on such text,
the model learns what each phrase asks for, and at sampling time the positive phrase asks for a
good output. A chain puts two outputs of one prompt side by side, good then bad and bad then
good, so the contrast itself is in context; a single form holds one output.

Rendering (one segment per output, the segments of a chain one after the other)::

    plain prompts:  <phrase>\\n<prompt><output><EOS>
    chat prompts:   <chat template: prompt, assistant turn opened><phrase>\\n<output><EOS>

A segment is exactly what sampling renders for the conditioned prompt (``phrase_conditioning``
and ``rlhfkit.conditioning``) followed by the output, so training and sampling agree token for
token. For a plain prompt the phrase is an instruction in front of it: a continuation prompt
("The film was") is the start of its output, so the phrase goes before the text it describes.
For a chat, the phrase opens the assistant's answer, as the paper's dialogue format. Unlike the
paper's format the prompt is repeated in each segment and each output ends with EOS: the model
learns where a good output stops, and the one-segment form sampling uses is the form trained on.

Only output tokens (and each output's EOS) carry loss; phrases and prompts are context. Random
masking of past tokens (``sample_hidden`` / ``hide``) keeps the model from merely copying the
other output of a chain.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlhfkit.data.sequences import render_prompt
from rlhfkit.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

    from rlhfkit.conditioning import Conditioning
    from rlhfkit.config import FeedbackDataCfg
    from rlhfkit.data.feedback import Pair, Rating
    from rlhfkit.data.sequences import SequenceBatch

SEPARATOR = "\n"  # between a phrase and what it describes
POSITIVE = ("A good response:", "A better response:", "A response that was rated good:")
NEGATIVE = ("A bad response:", "A worse response:", "A response that was rated bad:")


@dataclass(frozen=True)
class Judged:
    """One output and the feedback it earned: good, bad, or (``good`` None) a critique."""

    prompt: str
    output: str
    good: bool | None
    critique: str = ""
    weight: float = 1.0
    finished: bool = True  # False: cut off by a length limit, so no EOS follows it


Chain = tuple[Judged, ...]
"""Outputs of one prompt in the order they are written: one (single form) or two (a chain)."""


@dataclass(frozen=True)
class Phrases:
    """The words put before each output: one of several phrasings, or the output's critique."""

    positive: tuple[str, ...] = POSITIVE
    negative: tuple[str, ...] = NEGATIVE
    critiques: bool = False  # use each output's own critique text

    def pick(self, judged: Judged, rng: random.Random) -> str:
        if self.critiques:
            return judged.critique
        return rng.choice(self.positive if judged.good else self.negative)


@dataclass(frozen=True)
class CohSequence:
    """One tokenised chain: ``loss_mask[t]`` is True where ``ids[t]`` is an output token or EOS."""

    ids: list[int]
    loss_mask: list[bool]
    weight: float = 1.0
    truncated: bool = False


# --- chains from feedback ------------------------------------------------------------------------


def chains_from_pairs(
    pairs: Sequence[Pair], chains: bool = True, singles: bool = True
) -> list[Chain]:
    """Per pair: good-bad and bad-good chains (``chains``) and each output alone (``singles``)."""
    built: list[Chain] = []
    for pair in pairs:
        if not all(isinstance(text, str) for text in (pair.prompt, pair.chosen, pair.rejected)):
            raise DataError(  # chains group prompts and join outputs as text
                "hindsight reads plain-text pairs, and this one is conversational; give "
                "strings (conversational pairs are read by dpo and reward)"
            )
        good = Judged(
            pair.prompt, pair.chosen, True, weight=pair.weight, finished=pair.chosen_finished
        )
        bad = Judged(
            pair.prompt, pair.rejected, False, weight=pair.weight, finished=pair.rejected_finished
        )
        built += _forms(good, bad, chains, singles)
    return built


def judged_from_ratings(ratings: Sequence[Rating], good_min: float, bad_max: float) -> list[Judged]:
    """Texts rated at least ``good_min`` are good, at most ``bad_max`` bad; the rest neither."""
    if good_min < bad_max:
        raise ConfigError(
            f"good_min = {good_min:g} is below bad_max = {bad_max:g}: a text would "
            "be both good and bad; give good_min >= bad_max"
        )
    return [
        Judged(r.prompt, r.completion, r.rating >= good_min, weight=r.weight)
        for r in ratings
        if r.rating >= good_min or r.rating <= bad_max
    ]


def load_critiques(
    cfg: FeedbackDataCfg, split: str, critique_field: str = "critique"
) -> list[Judged]:
    """Critiqued outputs of one split: ``{prompt, completion, critique}`` rows, as the feedback
    studio exports them (``rlhfkit label export --as critiques``). A row without critique text
    stops the load naming the file and row (or, with ``on_bad_row="skip"``, is counted and
    dropped): its output would be trained on with no feedback at all."""
    from rlhfkit.data import feedback_source as source

    name, rows = source.split_rows(cfg, split)
    if rows is None:
        raise DataError(
            f"{name}: a built-in set holds ratings, not critiques; give a critiques "
            "file (rlhfkit label export --as critiques) or use --coh.data ratings"
        )

    def parse(row: dict[str, Any], cfg: FeedbackDataCfg) -> Judged:
        critique = row.get(critique_field)
        if not isinstance(critique, str) or not critique.strip():
            found = (
                "no"
                if critique_field not in row
                else "an empty"
                if critique is None or isinstance(critique, str)
                else "a non-text"
            )
            raise source.BadRow(
                f"{found} {critique_field!r}",
                "give each row its critique text (or name the column with --coh.critique_field)",
                f" (columns: {', '.join(map(str, row))})",
            )
        return Judged(
            source.prompt(row, cfg),
            source.text(row, cfg, "completion_field"),
            None,
            critique.strip(),
            source.weight(row, cfg),
        )

    judged = source.parse_rows(name, split, rows, cfg, parse)
    return judged[: cfg.max_rows] if split == "train" and cfg.max_rows else judged


def chains_from_judged(
    judged: Sequence[Judged], rng: random.Random, chains: bool = True, singles: bool = True
) -> list[Chain]:
    """Chains from outputs judged one at a time (ratings, critiques).

    Each output alone (``singles``); and (``chains``) each output paired with one random partner
    of the same prompt whose feedback differs (a good text with a bad one; a critiqued output
    with another critiqued output), each unordered pair once, in both orders.
    """
    built: list[Chain] = [(one,) for one in judged] if singles else []
    if not chains:
        return built
    by_prompt: dict[str, list[Judged]] = {}
    for one in judged:
        by_prompt.setdefault(one.prompt, []).append(one)
    for outputs in by_prompt.values():
        seen: set[tuple[int, int]] = set()
        for i, one in enumerate(outputs):
            partners = [
                j
                for j, other in enumerate(outputs)
                if j != i and (other.good != one.good or one.good is None)
            ]
            if not partners:
                continue
            j = rng.choice(partners)
            if (min(i, j), max(i, j)) not in seen:
                seen.add((min(i, j), max(i, j)))
                built += _forms(one, outputs[j], chains=True, singles=False)
    return built


def _forms(first: Judged, second: Judged, chains: bool, singles: bool) -> list[Chain]:
    return ([(first, second), (second, first)] if chains else []) + (
        [(first,), (second,)] if singles else []
    )


# --- tokens --------------------------------------------------------------------------------------


def phrase_conditioning(phrase: str, chat: bool) -> Conditioning:
    """How ``phrase`` asks for an output at sampling time: in front of a plain prompt, or at the
    start of a chat's answer. ``segment_context`` renders training text the same way."""
    from rlhfkit.conditioning import Conditioning

    if chat:
        return Conditioning("coh", response_prefix=phrase + SEPARATOR)
    return Conditioning("coh", instruction=phrase + SEPARATOR + "{prompt}")


def segment_context(tokenizer: Any, prompt: str, phrase: str, chat: bool) -> str:
    """The text an output follows: the prompt with its phrase, as generation renders it."""
    if chat:
        return render_prompt(tokenizer, prompt, chat=True) + phrase + SEPARATOR
    return phrase + SEPARATOR + prompt


def encode_chain(
    tokenizer: Any, chain: Chain, phrases: Phrases, rng: random.Random, chat: bool, max_length: int
) -> CohSequence:
    """Token ids and loss mask of a chain, at most ``max_length`` tokens.

    Each segment is its context (no loss) then its output and EOS (loss; no EOS after an output
    that was cut off, ``Judged.finished``, which did not end there). A chain too long loses
    whole leading segments first; a segment still too long keeps its output's start and the end
    of its context (prompt cut from the left, as ``sequences.encode`` cuts a demonstration).
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(
            "the tokenizer has no EOS token, so an output's end cannot be learned; "
            "give a model whose tokenizer defines eos_token"
        )
    segments = []
    for judged in chain:
        context = segment_context(tokenizer, judged.prompt, phrases.pick(judged, rng), chat)
        segments.append(
            (
                tokenizer(context, add_special_tokens=False)["input_ids"],
                tokenizer(judged.output, add_special_tokens=False)["input_ids"]
                + [eos] * judged.finished,
            )
        )
    truncated = False
    while len(segments) > 1 and sum(len(c) + len(o) for c, o in segments) > max_length:
        segments.pop(0)
        truncated = True
    context_ids, output_ids = segments[-1]
    if len(context_ids) + len(output_ids) > max_length:
        output_ids = output_ids[: max_length - 1]
        context_ids = context_ids[len(context_ids) - (max_length - len(output_ids)) :]
        segments[-1], truncated = (context_ids, output_ids), True
    ids: list[int] = []
    loss_mask: list[bool] = []
    for context_ids, output_ids in segments:
        ids += context_ids + output_ids
        loss_mask += [False] * len(context_ids) + [True] * len(output_ids)
    return CohSequence(ids, loss_mask, sum(j.weight for j in chain) / len(chain), truncated)


def collate(sequences: Sequence[CohSequence], pad_id: int) -> SequenceBatch:
    """Right-pad sequences into one batch; padding carries neither attention nor loss."""
    import torch

    from rlhfkit.data.sequences import SequenceBatch

    width = max(len(s.ids) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)  # (B, T)
    loss_mask = torch.zeros((len(sequences), width), dtype=torch.bool)  # (B, T)
    for row, sequence in enumerate(sequences):
        length = len(sequence.ids)
        input_ids[row, :length] = torch.tensor(sequence.ids)
        attention_mask[row, :length] = 1
        loss_mask[row, :length] = torch.tensor(sequence.loss_mask)
    return SequenceBatch(input_ids, attention_mask, loss_mask)


def sample_hidden(
    attention_mask: torch.Tensor, fraction: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """CoH's random masking: which past tokens later positions may not attend to. (B, T) bool

    Each real token but the first is hidden with probability ``fraction`` (the paper hides a
    few percent), so the model cannot rely on copying the other output of a chain. The first
    token stays visible, so every position has something to attend to.
    """
    import torch

    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"mask fraction {fraction:g}: give a value in [0, 1)")
    draws = torch.rand(attention_mask.shape, generator=generator)  # (B, T)
    hidden = (draws < fraction) & attention_mask.bool().cpu()
    hidden[:, 0] = False
    return hidden.to(attention_mask.device)


def hide(batch: SequenceBatch, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(attention mask with the ``hidden`` tokens removed, explicit position ids). Both (B, T)

    A hidden token is removed as a key for every position, so nothing after it can read it; its
    own position still holds its embedding in the residual stream, and it stays a prediction
    target: the loss mask is untouched, and the logits that predict it (from the position before)
    never see it anyway. Position ids are given explicitly because a model would otherwise count
    positions from the attention mask and shift every token after a hidden one.
    """
    import torch

    attention_mask = batch.attention_mask.masked_fill(hidden, 0)  # (B, T)
    width = batch.input_ids.shape[1]
    position_ids = torch.arange(width, device=batch.input_ids.device).expand_as(batch.input_ids)
    return attention_mask, position_ids


def output_logprobs(
    model: Any, batch: SequenceBatch, hidden: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs (B, T-1), their mask (B, T-1)) of the loss-carrying tokens, ``hidden`` tokens
    masked from attention. Position t holds log p(token t+1 | visible tokens <= t); the LM head
    runs on the loss positions only, so no (B, T, V) logits are materialised."""
    import torch

    if hidden is None:
        hidden = torch.zeros_like(batch.loss_mask)
    attention_mask, position_ids = hide(batch, hidden)
    states = model.get_decoder()(
        input_ids=batch.input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
    ).last_hidden_state
    mask = batch.loss_mask[:, 1:]  # (B, T-1)
    targets = batch.input_ids[:, 1:][mask]  # (N,)
    logits = model.get_output_embeddings()(states[:, :-1][mask]).float()  # (N, V)
    picked = logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(dim=-1)  # (N,)
    logprobs = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device)  # (B, T-1)
    logprobs = logprobs.masked_scatter(mask, picked)
    return logprobs, mask
