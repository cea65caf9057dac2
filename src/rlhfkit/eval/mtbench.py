"""MT-Bench: two-turn answers from a model, graded 1-10 by a judge and compared pairwise.

Zheng et al. 2023, "Judging LLM-as-a-judge with MT-Bench and Chatbot Arena" (arXiv 2306.05685).
Each question is asked twice: the first user turn, then the second with the conversation so far
(the model's own first answer in context), both through the generation backend and the chat
template, each category at MT-Bench's sampling temperature.

Grading follows FastChat's ``llm_judge``: single-answer grading asks the judge for a 1-10
``[[rating]]`` of each turn (turn 2 with the ``-multi-turn`` prompt, which shows the whole
conversation), reference-guided for math, reasoning and coding (GPT-4's answers shown); pairwise
comparison asks for ``[[A]]``, ``[[B]]`` or ``[[C]]`` (a tie) with both answer orders, so that a
judge's position bias cancels. A verdict that cannot be parsed is counted and left out of the
means, never scored.

An endpoint judge (``MODEL@http://HOST/v1``) gets the prompts exactly as MT-Bench writes them and
explains before its verdict. A local judge writes only the verdict: its reply is opened with the
format's own start (``Rating: [[``, ``[[``), as a small model rarely reaches a verdict after an
explanation of its own.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config import GenCfg
from rlhfkit.data.files import read_rows
from rlhfkit.data.mtbench import NEEDS_REFERENCE, JudgePrompt, Question
from rlhfkit.errors import DataError
from rlhfkit.eval.heldout import interval
from rlhfkit.generation import GenerationBackend, generate_conditioned, get_backend
from rlhfkit.rewards.judge import EndpointJudge, Judge, LocalJudge

TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
"""FastChat's sampling temperature per category (``common.temperature_config``)."""

RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")
VERDICT_SCORE = {"A": 1.0, "B": 0.0, "C": 0.5}  # the first assistant's score: win, loss, tie
LOCAL_OPENING = {"single": "Rating: [[", "pairwise": "[["}
LOCAL_VERDICT_TOKENS = 6  # "10]]" and a little more

Chat = list[dict[str, str]]
Replier = Callable[[list[Chat], str], list[str]]  # judge chats, prompt type -> reply texts


@dataclass(frozen=True)
class Answer:
    """A model's two answers to one question, the second given the first in context."""

    question_id: int
    category: str
    turns: tuple[str, str]


# --- two-turn generation -------------------------------------------------------------------------


def conversation(question: Question, first_answer: str | None = None) -> Chat:
    """The chat the model answers: the first user turn, or with ``first_answer`` the whole
    conversation up to the second user turn."""
    chat = [{"role": "user", "content": question.turns[0]}]
    if first_answer is None:
        return chat
    return chat + [
        {"role": "assistant", "content": first_answer},
        {"role": "user", "content": question.turns[1]},
    ]


def _sample(
    backend: GenerationBackend,
    chats: list[Chat],
    temperatures: list[float],
    gen: GenCfg,
    seed: int,
    conditioning: Any,
) -> list[str]:
    """Completions of ``chats`` in order, each group of equal temperature sampled together."""
    completions: list[str] = [""] * len(chats)
    for temperature in sorted(set(temperatures)):
        group = [i for i, t in enumerate(temperatures) if t == temperature]
        cfg = dataclasses.replace(gen, temperature=temperature)
        rollout = generate_conditioned(backend, [chats[i] for i in group], cfg, seed, conditioning)
        for i, completion in zip(group, rollout.completions, strict=True):
            completions[i] = completion.strip()
    return completions


def generate_answers(
    backend: GenerationBackend,
    questions: Sequence[Question],
    gen: GenCfg,
    seed: int,
    conditioning: Any = None,
    category_temperatures: bool = True,
) -> list[Answer]:
    """Both turns of every question: all first turns in batches, then all second turns, each
    after its own first answer."""
    temperatures = [
        TEMPERATURES[q.category] if category_temperatures else gen.temperature for q in questions
    ]
    first = _sample(
        backend, [conversation(q) for q in questions], temperatures, gen, seed, conditioning
    )
    second_chats = [conversation(q, a) for q, a in zip(questions, first, strict=True)]
    second = _sample(backend, second_chats, temperatures, gen, seed + 1, conditioning)
    return [
        Answer(q.question_id, q.category, (a, b))
        for q, a, b in zip(questions, first, second, strict=True)
    ]


def read_answers(path: Path) -> dict[int, Answer]:
    """The answers an earlier run saved (its ``answers.jsonl``), by question id."""
    answers = {}
    for number, row in enumerate(read_rows(path), start=1):
        turns = row.get("turns")
        if not (
            isinstance(row.get("question_id"), int)
            and isinstance(row.get("category"), str)
            and isinstance(turns, list)
            and len(turns) == 2
            and all(isinstance(t, str) for t in turns)
        ):
            raise DataError(
                f"{path}: row {number} is not an answer: expected question_id, category and "
                "turns (two strings), as rlhfkit mt-bench writes answers.jsonl"
            )
        answers[row["question_id"]] = Answer(row["question_id"], row["category"], tuple(turns))
    return answers


# --- the judge's prompts and verdicts ------------------------------------------------------------


def prompt_name(kind: str, category: str, turn: int) -> str:
    """FastChat's judge prompt for a category and turn (``single-math-v1-multi-turn`` ...)."""
    reference = category in NEEDS_REFERENCE
    base = {
        ("single", False): "single-v1",
        ("single", True): "single-math-v1",
        ("pairwise", False): "pair-v2",
        ("pairwise", True): "pair-math-v1",
    }[kind, reference]
    return base + ("-multi-turn" if turn == 2 else "")


def _judge_chat(prompt: JudgePrompt, fields: dict[str, str]) -> Chat:
    return [
        {"role": "system", "content": prompt.system_prompt},
        {"role": "user", "content": prompt.prompt_template.format(**fields)},
    ]


def _shared_fields(question: Question) -> dict[str, str]:
    fields = {"question": question.turns[0], "question_1": question.turns[0]}
    fields["question_2"] = question.turns[1]
    for i, reference in enumerate(question.reference, start=1):
        fields[f"ref_answer_{i}"] = reference
    return fields


def single_chat(
    prompts: dict[str, JudgePrompt], question: Question, answer: Answer, turn: int
) -> Chat:
    """The judge's chat grading ``answer``'s turn ``turn`` (1 or 2) of ``question``."""
    fields = _shared_fields(question) | {
        "answer": answer.turns[0],
        "answer_1": answer.turns[0],
        "answer_2": answer.turns[1],
    }
    return _judge_chat(prompts[prompt_name("single", question.category, turn)], fields)


def pair_chat(
    prompts: dict[str, JudgePrompt], question: Question, a: Answer, b: Answer, turn: int
) -> Chat:
    """The judge's chat comparing ``a`` (shown as assistant A) with ``b`` on turn ``turn``."""
    fields = _shared_fields(question) | {
        "answer_a": a.turns[0],
        "answer_b": b.turns[0],
        "answer_a_1": a.turns[0],
        "answer_a_2": a.turns[1],
        "answer_b_1": b.turns[0],
        "answer_b_2": b.turns[1],
    }
    return _judge_chat(prompts[prompt_name("pairwise", question.category, turn)], fields)


def parse_rating(reply: str) -> float | None:
    """The rating in a judge's reply: FastChat's rule, the first ``[[N]]`` (else ``[N]``);
    None when there is none or it lies outside MT-Bench's 1-10 scale."""
    match = RATING.search(reply) or RATING_FALLBACK.search(reply)
    if match is None:
        return None
    rating = float(match.group(1))
    return rating if 1.0 <= rating <= 10.0 else None


def parse_verdict(reply: str) -> str | None:
    """``"A"``, ``"B"`` or ``"C"`` (a tie) from a pairwise reply; None when it names none of
    ``[[A]]``, ``[[B]]``, ``[[C]]``, or more than one of them."""
    named = {verdict for verdict in VERDICT_SCORE if f"[[{verdict}]]" in reply}
    return named.pop() if len(named) == 1 else None


def pair_score(model_first: str | None, model_second: str | None) -> float | None:
    """The model's score on one pair judged in both orders, the mean of its two games (win 1,
    tie 1/2, loss 0): (s(v1) + 1 - s(v2)) / 2, where v1 is the verdict with the model shown as
    A and v2 with it shown as B; None when either verdict is unparseable."""
    if model_first is None or model_second is None:
        return None
    return 0.5 * (VERDICT_SCORE[model_first] + 1.0 - VERDICT_SCORE[model_second])


def consistent(model_first: str, model_second: str) -> bool:
    """Whether the two orders agree: the same winner (or a tie) once the swap is undone."""
    return VERDICT_SCORE[model_first] == 1.0 - VERDICT_SCORE[model_second]


# --- asking the judge ----------------------------------------------------------------------------


def judge_replier(judge: Judge, max_tokens: int, seed: int = 0) -> Replier:
    """A function from judge chats to the judge's replies: an endpoint writes up to
    ``max_tokens`` (its explanation, then its verdict); a local judge, greedily through the
    generation backend, only the verdict after the format's opening."""
    if isinstance(judge, EndpointJudge):
        return lambda chats, kind: [judge.reply(chat, max_tokens) for chat in chats]
    if not isinstance(judge, LocalJudge):
        raise TypeError(f"judge {judge.name}: neither a local nor an endpoint judge")
    backend = get_backend("hf", judge.model, judge.tokenizer)
    cfg = GenCfg(
        max_new_tokens=LOCAL_VERDICT_TOKENS, temperature=0.0, batch_size=8, chat_template="on"
    )

    def local(chats: list[Chat], kind: str) -> list[str]:
        opening = LOCAL_OPENING[kind]
        rollout = backend.generate(list(chats), cfg, seed, response_prefix=opening)
        return [opening + completion for completion in rollout.completions]

    return local


def grade(
    replier: Replier,
    prompts: dict[str, JudgePrompt],
    questions: Sequence[Question],
    answers: Sequence[Answer],
) -> list[dict[str, Any]]:
    """Single-answer grading of both turns of every answer: one record per (question, turn)
    with the judge's reply and its rating (None: unparseable)."""
    keys = [(q, a, turn) for q, a in zip(questions, answers, strict=True) for turn in (1, 2)]
    replies = replier([single_chat(prompts, q, a, turn) for q, a, turn in keys], "single")
    return [
        {
            "question_id": q.question_id,
            "category": q.category,
            "turn": turn,
            "prompt": prompt_name("single", q.category, turn),
            "reply": reply,
            "rating": parse_rating(reply),
        }
        for (q, _, turn), reply in zip(keys, replies, strict=True)
    ]


def compare(
    replier: Replier,
    prompts: dict[str, JudgePrompt],
    questions: Sequence[Question],
    answers: Sequence[Answer],
    baseline: Sequence[Answer],
) -> list[dict[str, Any]]:
    """Pairwise comparison of each turn against the baseline's, the model shown first and then
    second: one record per (question, turn) with both verdicts and the model's score."""
    keys = [
        (q, a, b, turn)
        for q, a, b in zip(questions, answers, baseline, strict=True)
        for turn in (1, 2)
    ]
    chats = [pair_chat(prompts, q, a, b, turn) for q, a, b, turn in keys]
    chats += [pair_chat(prompts, q, b, a, turn) for q, a, b, turn in keys]
    replies = replier(chats, "pairwise")
    records = []
    for i, (q, _, _, turn) in enumerate(keys):
        first, second = replies[i], replies[len(keys) + i]
        v1, v2 = parse_verdict(first), parse_verdict(second)
        records.append(
            {
                "question_id": q.question_id,
                "category": q.category,
                "turn": turn,
                "prompt": prompt_name("pairwise", q.category, turn),
                "replies": [first, second],
                "verdicts": [v1, v2],
                "score": pair_score(v1, v2),
                "consistent": None if v1 is None or v2 is None else consistent(v1, v2),
            }
        )
    return records


# --- summaries -----------------------------------------------------------------------------------


def figure(values: Sequence[float]) -> dict[str, Any] | None:
    """The mean with its 95% interval ({mean, low, high, n}); one value: only its mean and n."""
    if not values:
        return None
    mean = statistics.fmean(values)
    return interval(mean, values) if len(values) > 1 else {"mean": mean, "n": 1}


def summarise(records: Sequence[dict[str, Any]], value: str) -> dict[str, Any]:
    """Means of ``record[value]`` overall, per turn and per category; unparseable verdicts
    (None) counted apart, in no mean."""
    scored = [r for r in records if r[value] is not None]

    def of(keep: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        return figure([r[value] for r in scored if keep(r)])

    categories = dict.fromkeys(r["category"] for r in records)
    return {
        "overall": of(lambda r: True),
        "turns": {str(turn): of(lambda r, t=turn: r["turn"] == t) for turn in (1, 2)},
        "categories": {c: of(lambda r, c=c: r["category"] == c) for c in categories},
        "judged": len(records),
        "unparseable": len(records) - len(scored),
    }


def position_consistency(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The share of pairs whose two orders agree (a judge that reads only the position: 0)."""
    both = [float(r["consistent"]) for r in records if r["consistent"] is not None]
    return figure(both)
