"""Multiple-choice accuracy by log-likelihood: the option the model finds most likely is its
answer, with nothing generated (the way lm-evaluation-harness scores MMLU).

For a question with context ``x`` and options ``y_1 .. y_k`` (MMLU: " A" .. " D" after a prompt
that lists the options and ends "Answer:"), the model picks ``argmax_i log p(y_i | x)``, the
sum of the option's token log-probs. The prompt is given as it is, without a chat template,
as the harness does. A row is multiple-choice when its meta has ``choices`` (the option
continuations) and ``answer``, the gold option (its text, stripped, or its index).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlhfkit.errors import ConfigError


def gold_index(row: dict[str, Any], number: int) -> int:
    """The index of the gold option of ``row`` (the ``number``-th prompt, for errors)."""
    choices, answer = row.get("choices"), row.get("answer")
    if not isinstance(choices, list) or len(choices) < 2 or answer is None:
        raise ConfigError(
            f"prompt {number}: log-likelihood scoring needs 'choices' (2 or more option "
            f"texts) and the gold 'answer'; found choices={choices!r}, answer={answer!r}. "
            "Use a multiple-choice set such as mmlu:all"
        )
    if isinstance(answer, int) and 0 <= answer < len(choices):
        return answer
    stripped = [str(choice).strip() for choice in choices]
    if str(answer).strip() not in stripped:
        raise ConfigError(
            f"prompt {number}: answer {answer!r} is none of its choices {choices!r}; "
            "give the gold option's text or index"
        )
    return stripped.index(str(answer).strip())


def option_logprobs(
    model: Any,
    tokenizer: Any,
    questions: Sequence[tuple[str, Sequence[str]]],
    max_length: int,
) -> list[list[float]]:
    """``log p(option | context)`` of each option of each ``(context, options)`` question,
    summed over the option's tokens; all of them in one forward pass."""
    import torch

    from rlhfkit.data import sequences

    examples = [
        sequences.encode(tokenizer, context, option, False, max_length, ends=False)
        for context, options in questions
        for option in options
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    with torch.no_grad():
        batch = sequences.collate(examples, pad_id).to(device)
        logprobs, mask = sequences.completion_logprobs(model, batch)  # (N, T-1) each
        flat = sequences.sequence_logprob(logprobs, mask).tolist()  # (N,) N options in all
    scores, start = [], 0
    for _, options in questions:
        scores.append(flat[start : start + len(options)])
        start += len(options)
    return scores


def pick(logprobs: Sequence[float]) -> int:
    """The most likely option (the first on a tie)."""
    return max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))


def loglik_correct(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch_size: int = 8
) -> list[float]:
    """1.0 for each row whose most likely option is its gold one, else 0.0; ``batch_size``
    questions (all their options) per forward pass."""
    golds = [gold_index(row, number) for number, row in enumerate(rows, start=1)]
    max_length = int(getattr(model.config, "max_position_embeddings", 2048))
    correct = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        questions = [(str(row["prompt"]), [str(c) for c in row["choices"]]) for row in chunk]
        for logprobs, gold in zip(
            option_logprobs(model, tokenizer, questions, max_length),
            golds[start : start + batch_size],
            strict=True,
        ):
            correct.append(float(pick(logprobs) == gold))
    return correct
