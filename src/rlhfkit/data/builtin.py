"""Built-in prompt sets made from the embedded real data, named like ``vader:movies``.

- ``vader:<corpus>``: openings of human-rated texts (the first ``OPENING_WORDS`` words of a
  movie snippet, tweet, Amazon review or NYT editorial snippet), for sentiment steering. Train
  and held-out prompts come from the fixed splits of ``rlhfkit.data.vader`` (by text id), so
  evaluation never sees a training text. Each row keeps ``human_mean``, the raters' mean score
  of the whole text.
- ``wiki:summaries``: extreme summarisation: a Wikipedia lead and the request for a one-line
  description (``wiki.SUMMARY_PROMPT``); ``reference`` holds Wikipedia's human-written description,
  which the ``rouge_l`` and ``similarity`` rewards score against (``rlhfkit.data.wiki``; the
  fixed title-hash splits; articles without a description are left out).
- ``reasoning_gym:<task>``: procedurally generated questions with a verifier (``entry`` holds
  the task's item, which the ``reasoning_gym:<task>`` reward needs). A question's split is set
  by a hash of its text, so no held-out question is ever a training one: reasoning-gym seeds
  item i with seed + i, so sets drawn with nearby seeds share their items, and a small task
  (one-digit sums: 200 questions in all) repeats its questions whatever the seed.
  ``check_reasoning_gym`` is the ``reasoning-gym`` entry of ``rlhfkit.assets``.
- ``humaneval:complete`` / ``humaneval:chat``: HumanEval's problems (``rlhfkit.data.humaneval``;
  split by a hash of the task id), with what the ``code`` reward runs: tests, entry point.
- ``qa:fanoutqa``: closed-book single-hop questions with their gold ``answers``
  (``rlhfkit.data.fanoutqa``); ``mmlu:all`` or ``mmlu:SUBJECT``: four-option questions with
  the gold ``answer`` letter (``rlhfkit.data.mmlu``); ``translation:fr|de|es``: English
  interface strings with the human ``reference`` (``rlhfkit.data.translation``). Each row also
  holds ``completion``, the gold answer as a demonstration: ``rlhfkit sft --data qa:fanoutqa``
  learns from the train split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhfkit import assets
from rlhfkit.config import TASK_SETS
from rlhfkit.errors import AssetError, ConfigError, did_you_mean
from rlhfkit.progress import steps

OPENING_WORDS = 6
SETS = ("vader", "reasoning_gym", "humaneval", *TASK_SETS)
REASONING_SIZES = {"train": 2000, "validation": 200, "test": 200}
REASONING_SHARES = {"train": 0.8, "validation": 0.1, "test": 0.1}
"""Each split's share of the question space (by a hash of the text): see ``question_split``."""
REASONING_SEED = 1
ANSWER_FORMAT = "Give only the final answer between <answer> and </answer>."


def is_builtin(spec: str) -> bool:
    return spec.split(":", 1)[0] in SETS and ":" in spec


def load_builtin(spec: str, split: str, field: str = "prompts") -> list[dict[str, Any]]:
    """Rows ``{"prompt": ..., **meta}`` of a built-in set; ``field`` names the option in errors."""
    kind, _, name = spec.partition(":")
    if kind == "vader":
        return _vader_openings(name, split, field)
    if kind == "reasoning_gym":
        return _reasoning_gym(name, split, field)
    if kind == "qa":
        return _qa(name, split, field)
    if kind == "mmlu":
        from rlhfkit.data.mmlu import prompt_rows

        return prompt_rows(name, split)
    if kind == "translation":
        from rlhfkit.data.translation import prompt_rows

        return prompt_rows(name, split)
    if kind == "wiki":
        return _wiki_summaries(name, split, field)
    if kind == "humaneval":
        from rlhfkit.data.humaneval import prompt_rows

        return prompt_rows(name, split, field)
    hint = did_you_mean(kind, SETS)
    raise ConfigError(
        f"data.{field} = {spec!r}: not a file nor a built-in set; {hint}"
        "use vader:<corpus>, reasoning_gym:<task>, qa:fanoutqa, mmlu:all|SUBJECT, "
        "translation:fr|de|es, wiki:summaries or humaneval:complete"
    )


def _qa(name: str, split: str, field: str) -> list[dict[str, Any]]:
    from rlhfkit.data.fanoutqa import prompt_rows

    if name != "fanoutqa":
        raise ConfigError(f"data.{field} = 'qa:{name}': unknown QA set; use qa:fanoutqa")
    return prompt_rows(split)


def _wiki_summaries(name: str, split: str, field: str) -> list[dict[str, Any]]:
    """Each lead and the request for a description; its human description is the metrics'
    ``reference`` and, as ``completion``, the demonstration sft learns."""
    from rlhfkit.data.wiki import summary_rows

    if name != "summaries":
        raise ConfigError(f"data.{field} = 'wiki:{name}': unknown set; use wiki:summaries")
    return [{**row, "completion": row["reference"]} for row in summary_rows(split)]


def opening(text: str, words: int = OPENING_WORDS) -> str:
    """The first ``words`` words of a text: a prompt to continue."""
    return " ".join(text.split()[:words])


def _vader_openings(corpus: str, split: str, field: str) -> list[dict[str, Any]]:
    from rlhfkit.data.vader import CORPORA, load_vader

    if corpus not in CORPORA:
        raise ConfigError(
            f"data.{field} = 'vader:{corpus}': unknown corpus; use one of "
            + ", ".join(f"vader:{c}" for c in CORPORA)
        )
    rows, seen = [], set()
    for text in load_vader((corpus,), split=split):
        prompt = opening(text.text)
        if len(text.text.split()) <= OPENING_WORDS or prompt in seen:
            continue  # nothing left to continue, or a duplicate opening
        seen.add(prompt)
        rows.append({"prompt": prompt, "id": f"{text.corpus}:{text.id}", "human_mean": text.mean})
    return rows


def _reasoning_gym(spec: str, split: str, field: str) -> list[dict[str, Any]]:
    """A reasoning-gym task's questions; ``task:key=value,...`` sets the task's own options
    (``chain_sum:max_terms=2,max_digits=1``: sums a 135M model can do)."""
    import reasoning_gym

    task, options = parse_task_options(spec, f"data.{field}")
    size = REASONING_SIZES[split]
    # enough draws that the split's share of them fills it, unless the task has fewer questions
    draws = round(size / REASONING_SHARES[split] * 1.25)
    try:
        dataset = reasoning_gym.create_dataset(task, size=draws, seed=REASONING_SEED, **options)
    except Exception as e:  # reasoning_gym raises bare errors for unknown names and options
        raise ConfigError(
            f"data.{field} = 'reasoning_gym:{spec}': {e}; see "
            "reasoning_gym's task list (e.g. basic_arithmetic, chain_sum) and the "
            "task's config class for its options"
        ) from None
    rows, seen = [], set()
    for item in dataset:
        question = item["question"]
        if question in seen or question_split(question) != split:
            continue  # asked already, or another split's question
        seen.add(question)
        rows.append({"prompt": f"{question}\n{ANSWER_FORMAT}", "entry": item})
        if len(rows) == size:
            break
    return rows


def question_split(question: str) -> str:
    """The split a question belongs to, by a hash of its text (stable across runs, machines
    and reasoning-gym's seeds): train, validation and test share no question."""
    import hashlib

    position = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big") / 2**64
    if position < REASONING_SHARES["test"]:
        return "test"
    return "validation" if position < 1 - REASONING_SHARES["train"] else "train"


def parse_task_options(spec: str, option: str) -> tuple[str, dict[str, Any]]:
    """``"chain_sum:max_terms=2,max_digits=1"`` -> ``("chain_sum", {"max_terms": 2, ...})``.

    Values read as Python literals (numbers, True/False, tuples) and otherwise stay strings.
    """
    import ast

    task, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, has_value, value = part.partition("=")
        if not has_value or not key.strip():
            raise ConfigError(
                f"{option} = 'reasoning_gym:{spec}': option {part!r} is not "
                "key=value; write reasoning_gym:TASK:key=value,key=value"
            )
        try:
            options[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = value.strip()
    return task, options


def check_reasoning_gym(asset: assets.Asset, out: Path) -> dict[str, Any]:
    """Nothing to cache: check the installed package creates and scores a task offline."""
    with steps(f"preparing {asset.name}", total=1) as step:
        step("checking reasoning-gym")
        version = assets.installed_version(asset.package)
        if version != asset.version:
            found = f"version {version}" if version else "not installed"
            raise AssetError(
                f"asset 'reasoning-gym': {found}, expected {asset.version}; "
                f"pip install {asset.source}"
            )
        import reasoning_gym

        dataset = reasoning_gym.create_dataset("basic_arithmetic", size=2, seed=0)
        right = [dataset.score_answer(item["answer"], item) for item in dataset]
        wrong = [dataset.score_answer("no answer", item) for item in dataset]
    if right != [1.0, 1.0] or max(wrong) >= 1.0:
        raise AssetError(
            f"asset 'reasoning-gym': basic_arithmetic scored right answers {right} "
            f"and wrong ones {wrong}, expected 1.0 and less; reinstall: "
            f"pip install --force-reinstall {asset.source}"
        )
    return {
        "version": version,
        "summary": f"reasoning-gym {version}: tasks create and score offline",
    }
