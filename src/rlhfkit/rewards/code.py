"""The ``code`` reward: run each completion against its problem's unit tests, in a sandbox.

A completion scores 1.0 when the program ``code + completion + test + check(entry_point)``
runs to the end, else 0.0: the functional correctness of HumanEval (Chen et al. 2021), whose
mean over samples is pass@1. Each program runs in ``rewards.sandbox`` (a separate process with
CPU, memory, process-count and output limits, no network, a throwaway directory, a wall-clock
timeout), a few at a time. ``check_code`` gives each completion's ``Outcome``: the reason it
failed (assertion, timeout, memory, syntax error, network, ...), which the reward also tallies
in ``reasons`` and logs at INFO under ``rlhfkit.rewards.code``.

The rows' meta carry ``test`` (a ``check(candidate)`` function), ``entry_point`` (the function
tested) and, optionally, ``code`` (the function's signature and docstring; without it the prompt
is the code, as in the completion setting). What is run depends on the completion:

- it holds a Markdown code block: that block is the answer (a chat model's), else the
  completion is;
- the answer starts with an indented line: it continues the code's function body (the
  completion setting);
- else, when it defines ``def ENTRY_POINT(``: that definition runs after the original code
  (so the code's imports and helper functions stay).

Either way the answer is cut at the first line (after a definition's own first line) that
starts at column 0 with ``def``, ``class``, ``if``, ``print(`` or ``#``: the stop sequences of
Chen et al. (2021), as a model may go on to write other code or its own tests.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any

from rlhfkit.errors import RewardError
from rlhfkit.rewards.registry import no_argument, register_reward
from rlhfkit.rewards.sandbox import Limits, Outcome, run_programs

LIMITS = Limits(wall_s=10.0, cpu_s=5, memory_mb=1024, processes=16, output_kb=1024)
STOP = re.compile(r"^(?:def |class |if |print\(|#)", re.MULTILINE)
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_logger = logging.getLogger(__name__)


def solution(code: str, completion: str, entry_point: str) -> str:
    """The function to test, from the original ``code`` and a model's ``completion`` (module
    docstring: a code block, a whole definition, or a continued body).

    >>> solution("def f(x):\\n", "    return x\\ndef g(): pass", "f")
    'def f(x):\\n    return x\\n'
    >>> solution("def f(x):\\n    '''Doc.'''\\n", "Sure:\\n```python\\ndef f(x):\\n    return 1\\n```", "f")
    "def f(x):\\n    '''Doc.'''\\n\\ndef f(x):\\n    return 1\\n"
    """
    fenced = _FENCE.search(completion)
    text = fenced.group(1) if fenced else completion
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    definition = re.search(rf"^(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(", text, re.M)
    if definition and not first_line.startswith((" ", "\t")):
        function = text[definition.start() :]
        end = STOP.search(function, function.find("\n") + 1 if "\n" in function else len(function))
        return code + "\n" + function[: end.start() if end else len(function)]
    end = STOP.search(text)
    return code + text[: end.start() if end else len(text)]


def program(code: str, completion: str, test: str, entry_point: str) -> str:
    """The whole program run for one completion: solution, tests, the call to ``check``."""
    return f"{solution(code, completion, entry_point)}\n\n{test}\n\ncheck({entry_point})\n"


def check_code(
    prompts: list[str], completions: list[str], limits: Limits = LIMITS, workers: int = 0, **meta
) -> list[Outcome]:
    """How each completion fared against its tests (meta ``test``, ``entry_point``, ``code``)."""
    missing = [key for key in ("test", "entry_point") if key not in meta]
    if missing:
        raise RewardError(
            f"reward 'code' needs the meta columns test and entry_point (missing: "
            f"{', '.join(missing)}); the data has: {', '.join(sorted(meta)) or 'none'}. Use "
            "the built-in set humaneval:complete or add the columns to your prompt file"
        )
    codes = meta.get("code") or prompts
    programs = [
        program(code, completion, test, entry_point)
        for code, completion, test, entry_point in zip(
            codes, completions, meta["test"], meta["entry_point"], strict=True
        )
    ]
    return run_programs(programs, limits, workers)


class CodeReward:
    """1.0 when a completion passes its problem's unit tests, else 0.0; ``reasons`` counts
    the outcomes of every completion scored so far, ``last`` holds the last call's."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()
        self.last: list[Outcome] = []

    def __call__(self, prompts: list[str], completions: list[str], **meta: Any) -> list[float]:
        self.last = check_code(prompts, completions, **meta)
        tally = Counter(outcome.reason for outcome in self.last)
        self.reasons.update(tally)
        _logger.info("code reward: %s", ", ".join(f"{r} {n}" for r, n in tally.most_common()))
        return [1.0 if outcome.passed else 0.0 for outcome in self.last]


@register_reward("code")
def code_reward(arg: str | None) -> CodeReward:
    """code runs each completion against its unit tests in a sandbox (1 passed, 0 failed)."""
    no_argument("code", arg)
    return CodeReward()
