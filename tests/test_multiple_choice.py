"""Log-likelihood multiple choice: the batched option scores against a direct computation on a
tiny model, the pick, and ``rlhfkit eval --loglik`` end to end."""

from __future__ import annotations

import json

import pytest
import torch

from rlhfkit import cli
from rlhfkit.errors import ConfigError
from rlhfkit.eval.multiple_choice import gold_index, loglik_correct, option_logprobs, pick


def direct_logprob(model, tokenizer, context: str, option: str) -> float:
    """log p(option | context) from one full forward pass, summed by hand."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    option_ids = tokenizer(option, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context_ids + option_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)  # (T, V)
    start = len(context_ids)
    return sum(float(logprobs[start + i - 1, t]) for i, t in enumerate(option_ids))


def test_batched_option_scores_match_a_direct_computation(tiny_lm):
    model, tokenizer = tiny_lm
    questions = [
        ("The sky is blue.\nAnswer:", [" A", " B", " C", " D"]),
        ("Is it good? Answer:", [" yes", " no, never", " maybe"]),  # options of several tokens
    ]
    scores = option_logprobs(model, tokenizer, questions, max_length=128)
    for (context, options), row in zip(questions, scores, strict=True):
        expected = [direct_logprob(model, tokenizer, context, option) for option in options]
        assert row == pytest.approx(expected, abs=1e-4)
    rows = [
        {"prompt": context, "choices": options, "answer": options[pick(score)].strip()}
        for (context, options), score in zip(questions, scores, strict=True)
    ]
    assert loglik_correct(model, tokenizer, rows, batch_size=1) == [1.0, 1.0]
    rows[1]["answer"] = rows[1]["choices"][pick(scores[1]) - 1].strip()  # not the likeliest
    assert loglik_correct(model, tokenizer, rows, batch_size=2) == [1.0, 0.0]


def test_pick_and_gold():
    assert pick([-3.0, -1.5, -2.0]) == 1 and pick([-1.0, -1.0]) == 0  # a tie: the first
    assert gold_index({"choices": [" A", " B"], "answer": "B"}, 1) == 1
    assert gold_index({"choices": ["x", "y"], "answer": 0}, 1) == 0
    with pytest.raises(ConfigError, match="prompt 3: answer 'C' is none of its choices"):
        gold_index({"choices": [" A", " B"], "answer": "C"}, 3)
    with pytest.raises(ConfigError, match="prompt 2: log-likelihood scoring needs 'choices'"):
        gold_index({"answer": "A"}, 2)


def test_eval_loglik_adds_the_accuracy_figure(tmp_path, tiny_model_dir):
    rows = [
        {
            "prompt": f"Question {i}?\nA. one\nB. two\nAnswer:",
            "choices": [" A", " B"],
            "answer": "AB"[i % 2],
        }
        for i in range(4)
    ]
    prompts = tmp_path / "mc.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "eval.json"
    args = ["--model", str(tiny_model_dir), "--prompts", str(prompts), "--reward", "choice"]
    args += ["--loglik", "--gen.max_new_tokens", "3", "--output", str(output)]
    assert cli.main(["eval", *args]) == 0
    figures = json.loads(output.read_text())["figures"]
    assert figures["choice_loglik"]["n"] == 4 and figures["choice"]["n"] == 4
    assert figures["choice_loglik"]["mean"] in (0.0, 0.25, 0.5, 0.75, 1.0)
