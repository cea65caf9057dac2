"""The dataset shapes the trainers read, each turned into one canonical form.

The shapes are the ones people's datasets already come in (TRL's dataset-format guide names
them the same way), each plain (strings) or conversational (lists of ``{"role", "content"}``
messages). A row's shape is chosen by the columns it holds, trying the most specific first:

===========================  ===============================  =====================================
shape                        columns                          read by
===========================  ===============================  =====================================
language modelling           text | messages                  sft
prompt-only                  prompt                           grpo, ppo, online-dpo, eval, generate
prompt-completion            prompt, completion               sft
preference                   prompt, chosen, rejected         reward, dpo (and orpo, simpo, cpo)
implicit-prompt preference   chosen, rejected                 reward, dpo
unpaired preference          prompt, completion, label        dpo --algo.loss kto
===========================  ===============================  =====================================

Canonical forms: a prompt is a string or a tuple of messages (the chat template renders it with
the assistant turn opened, see ``rlhfkit.data.sequences``); a completion is the text of the
assistant's turn, or, when a conversational completion holds several turns, its messages (the
template renders them after the prompt). The implicit prompt of a preference row is what its
chosen and rejected sides share: the leading messages, or the text up to the last whitespace
before they differ (the completion keeps that space, as a continuation does). Prompt-only rows are read by ``rlhfkit.data.prompts``, with ``is_chat`` from here.

A row that fits no shape, or a cell that is not what its shape needs, raises ``BadRow``
(``rlhfkit.data.feedback_source``), which names the file and row.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rlhfkit.data import feedback_source as source
from rlhfkit.data.feedback_source import BadRow, Message, Row

if TYPE_CHECKING:
    from rlhfkit.config import FeedbackDataCfg

Chat = tuple[Message, ...]
Prompt = str | Chat
Reply = str | Chat
"""A completion: text, or the assistant's turns (with any turns between them) of a chat."""
T = TypeVar("T")

TRUE_WORDS = frozenset({"true", "yes", "y", "good", "desirable", "positive", "1", "1.0"})
FALSE_WORDS = frozenset({"false", "no", "n", "bad", "undesirable", "negative", "0", "0.0"})


@dataclass(frozen=True)
class Completion:
    """A prompt and the completion to learn (sft): the canonical demonstration."""

    prompt: Prompt
    completion: Reply


@dataclass(frozen=True)
class Preference:
    """A prompt with a preferred and a dispreferred completion (reward, dpo family)."""

    prompt: Prompt
    chosen: Reply
    rejected: Reply


@dataclass(frozen=True)
class Unpaired:
    """A prompt and one completion marked desirable or not (kto)."""

    prompt: Prompt
    completion: Reply
    desirable: bool


@dataclass(frozen=True)
class Shape(Generic[T]):
    """A shape: its name, the columns (``FeedbackDataCfg`` options) its rows hold, its reader."""

    name: str
    options: tuple[str, ...]
    read: Callable[[Row, FeedbackDataCfg], T]

    def fits(self, row: Row, cfg: FeedbackDataCfg) -> bool:
        return all(_has(row, cfg, option) for option in self.options)

    def describe(self, cfg: FeedbackDataCfg) -> str:
        return f"{self.name} ({', '.join(getattr(cfg, o) or '-' for o in self.options)})"


def _has(row: Row, cfg: FeedbackDataCfg, option: str) -> bool:
    # prompt_field "" says the data have no prompt: every row "has" the empty one
    return getattr(cfg, option) in row or (option == "prompt_field" and not cfg.prompt_field)


def shape_of(row: Row, cfg: FeedbackDataCfg, shapes: Sequence[Shape[T]]) -> Shape[T]:
    """The first of ``shapes`` whose columns the row holds; else a BadRow naming them all."""
    for shape in shapes:
        if shape.fits(row, cfg):
            return shape
    options = dict.fromkeys(o for shape in shapes for o in shape.options)
    raise BadRow(
        "fits no accepted shape",
        f"accepted: {accepted(cfg, shapes)}; rename the columns or map them with "
        + "/".join(f"--data.{option}" for option in options),
        f" (columns: {', '.join(map(str, row)) or 'none'})",
    )


def accepted(cfg: FeedbackDataCfg, shapes: Sequence[Shape[Any]], ratings: bool = False) -> str:
    """The shapes a loader reads, with their columns, for an error message."""
    described = "; ".join(shape.describe(cfg) for shape in shapes) + " (plain or conversational)"
    if ratings:  # rlhfkit's own: rated texts, paired or labelled by their ratings
        described += f"; ratings ({cfg.prompt_field}, {cfg.completion_field}, {cfg.rating_field})"
    return described


def read(row: Row, cfg: FeedbackDataCfg, shapes: Sequence[Shape[T]]) -> tuple[Shape[T], T]:
    """(the row's shape, the row in its canonical form)."""
    shape = shape_of(row, cfg, shapes)
    return shape, shape.read(row, cfg)


def prompt_text(prompt: Prompt | list[Message]) -> str:
    """What a reward sees of a prompt: the text, or a chat's last message (the user's turn)."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"] if prompt else ""


# --- cells ----------------------------------------------------------------------------------------


def is_chat(value: Any) -> bool:
    """Whether ``value`` is a list of ``{"role": str, "content": str}`` messages."""
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    )


def _messages(value: list[dict[str, Any]]) -> Chat:
    return tuple({"role": m["role"], "content": m["content"]} for m in value)


def chat_prompt(value: Any, name: str) -> Chat:
    """A conversational prompt: messages that end with a turn for the assistant to answer."""
    if not is_chat(value) or not value:
        raise BadRow(
            f"malformed {name!r}",
            'give a string or a non-empty list of {"role": ..., "content": ...} messages',
        )
    if value[-1]["role"] == "assistant":
        raise BadRow(
            f"{name!r} ending with an assistant turn",
            "end the prompt with the turn the completion answers (move the reply to the "
            "completion)",
        )
    return _messages(value)


def prompt(row: Row, cfg: FeedbackDataCfg) -> Prompt:
    """The prompt cell: text (may be empty: a text judged alone) or a conversation."""
    if not cfg.prompt_field:
        return ""
    value = source.column(row, cfg, "prompt_field")
    if isinstance(value, list):
        return chat_prompt(value, cfg.prompt_field)
    if value is not None and not isinstance(value, str):
        raise BadRow(
            f"{cfg.prompt_field!r} not text",
            "give a string or a list of messages",
            f" (a {type(value).__name__})",
        )
    return value or ""


def completion(row: Row, cfg: FeedbackDataCfg, option: str) -> Reply:
    """A completion cell (completion, chosen, rejected): text, or the assistant's turn(s)."""
    value = source.column(row, cfg, option)
    if isinstance(value, list):
        return _reply(value, getattr(cfg, option))
    return source.text(row, cfg, option)


def _reply(value: Any, name: str) -> Reply:
    """A conversational completion: one assistant message gives its text; several (assistant
    first and last) stay messages, which the chat template renders (``sequences.encode``)."""
    if not is_chat(value) or not value:
        raise BadRow(
            f"malformed {name!r}",
            'give a string or a list of {"role": "assistant", "content": ...} messages',
        )
    if value[0]["role"] != "assistant" or value[-1]["role"] != "assistant":
        raise BadRow(
            f"{name!r} not the assistant's turn",
            "start and end the completion with an assistant message; earlier turns belong "
            "in the prompt",
            f" (roles {', '.join(m['role'] for m in value)})",
        )
    if not value[-1]["content"].strip():
        raise BadRow(f"empty {name!r}", "fill in the assistant's reply or remove the row")
    return value[0]["content"] if len(value) == 1 else _messages(value)


def reply_text(reply: Reply) -> str:
    """A completion as one text (what a reward model reads): its messages' contents, a line each."""
    return reply if isinstance(reply, str) else "\n".join(m["content"] for m in reply)


def label(row: Row, cfg: FeedbackDataCfg) -> bool:
    """A binary label: a boolean, 1/0, or a word such as yes/no, good/bad."""
    value = source.column(row, cfg, "label_field")
    word = value.strip().lower() if isinstance(value, str) else None
    if isinstance(value, bool) or isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if word in TRUE_WORDS | FALSE_WORDS:
        return word in TRUE_WORDS
    raise BadRow(
        f"{cfg.label_field!r} not a boolean",
        "use true/false, 1/0, yes/no or good/bad",
        f" ({value!r})",
    )


# --- one reader per shape -------------------------------------------------------------------------


def language_modelling(row: Row, cfg: FeedbackDataCfg) -> Completion:
    """``{"text": str}``: the whole text is learned, from the start of the sequence."""
    return Completion("", source.text(row, cfg, "text_field"))


def conversation(row: Row, cfg: FeedbackDataCfg) -> Completion:
    """``{"messages": [...]}`` ending with the assistant: its last reply is learned, the
    messages before it are the prompt."""
    messages, reply = source.chat(row[cfg.messages_field], cfg.messages_field)
    return Completion(messages, reply)


def prompt_completion(row: Row, cfg: FeedbackDataCfg) -> Completion:
    """``{"prompt", "completion"}``: the completion is learned after the prompt."""
    return Completion(prompt(row, cfg), completion(row, cfg, "completion_field"))


def preference(row: Row, cfg: FeedbackDataCfg) -> Preference:
    """``{"prompt", "chosen", "rejected"}``: the explicit-prompt preference pair."""
    return _different(
        Preference(
            prompt(row, cfg),
            completion(row, cfg, "chosen_field"),
            completion(row, cfg, "rejected_field"),
        )
    )


def implicit_preference(row: Row, cfg: FeedbackDataCfg) -> Preference:
    """``{"chosen", "rejected"}`` whole texts or conversations: what they share is the prompt."""
    chosen, rejected = (source.column(row, cfg, o) for o in ("chosen_field", "rejected_field"))
    if is_chat(chosen) and is_chat(rejected) and chosen and rejected:
        shared = next(
            (i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b),
            min(len(chosen), len(rejected)),
        )
        head = chat_prompt(chosen[:shared], "the messages chosen and rejected share")
        return _different(
            Preference(
                head,
                _reply(chosen[shared:], cfg.chosen_field),
                _reply(rejected[shared:], cfg.rejected_field),
            )
        )
    chosen = source.text(row, cfg, "chosen_field")
    rejected = source.text(row, cfg, "rejected_field")
    head = split_point(chosen, rejected)
    return _different(Preference(chosen[:head], chosen[head:], rejected[head:]))


def split_point(chosen: str, rejected: str) -> int:
    """Where the shared prompt of two texts ends: at the last whitespace of their common
    prefix, so no word is split and each completion starts with that space (0: none shared)."""
    common = os.path.commonprefix([chosen, rejected])
    return max((i for i, char in enumerate(common) if char.isspace()), default=0)


def unpaired(row: Row, cfg: FeedbackDataCfg) -> Unpaired:
    """``{"prompt", "completion", "label"}``: one completion marked desirable or not."""
    return Unpaired(prompt(row, cfg), completion(row, cfg, "completion_field"), label(row, cfg))


def _different(pair: Preference) -> Preference:
    if pair.chosen == pair.rejected:
        raise BadRow("chosen equals rejected", "a pair needs two different completions")
    if not reply_text(pair.chosen).strip() or not reply_text(pair.rejected).strip():
        raise BadRow("empty completion after the shared prompt", "give two different replies")
    return pair


LANGUAGE_MODELLING = Shape("language modelling", ("text_field",), language_modelling)
CONVERSATION = Shape("conversational language modelling", ("messages_field",), conversation)
PROMPT_COMPLETION = Shape(
    "prompt-completion", ("prompt_field", "completion_field"), prompt_completion
)
PREFERENCE = Shape("preference", ("prompt_field", "chosen_field", "rejected_field"), preference)
IMPLICIT_PREFERENCE = Shape(
    "implicit-prompt preference", ("chosen_field", "rejected_field"), implicit_preference
)
UNPAIRED = Shape(
    "unpaired preference", ("prompt_field", "completion_field", "label_field"), unpaired
)

DEMONSTRATIONS = (PROMPT_COMPLETION, CONVERSATION, LANGUAGE_MODELLING)
"""What sft reads, most specific first (a messages row with a completion column is
prompt-completion, as before)."""
PAIRS = (PREFERENCE, IMPLICIT_PREFERENCE)
"""What reward and the dpo family read."""
LABELS = (UNPAIRED,)
"""What kto reads besides pairs (each pair gives a desirable and an undesirable row)."""
