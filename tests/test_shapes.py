"""The ecosystem's dataset shapes, plain and conversational, from JSONL, Parquet and save_to_disk:
each read into its trainer's canonical form, one short run per trainer family, the chat template
on conversational rows, and the error for a row that fits no shape."""

from __future__ import annotations

import json

import pytest

from rlhfkit.config import FeedbackDataCfg, GenCfg, LogCfg, ModelCfg, PromptDataCfg, RunCfg
from rlhfkit.data.feedback import (
    Demonstration,
    Labeled,
    Pair,
    load_demonstrations,
    load_labeled,
    load_pairs,
)
from rlhfkit.data.prompts import load_prompts
from rlhfkit.data.shapes import split_point
from rlhfkit.errors import DataError


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def chat(text):  # a canonical conversational prompt
    return ({"role": "user", "content": text},)


def write(path, rows):
    """Rows as JSONL, Parquet or a save_to_disk directory, by the path's suffix."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        from datasets import Dataset

        Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def data(path, **overrides) -> FeedbackDataCfg:
    return FeedbackDataCfg(path=path, **{"eval_fraction": 0.0, **overrides})


# --- each shape into its canonical form ----------------------------------------------------------

DEMONSTRATIONS = {
    "language modelling": ({"text": "Once upon a time."}, Demonstration("", "Once upon a time.")),
    "conversational language modelling": (
        {"messages": user("Hi") + assistant("Hello.")},
        Demonstration(chat("Hi"), "Hello."),
    ),
    "prompt-completion": (
        {"prompt": "2 + 2 =", "completion": " 4"},
        Demonstration("2 + 2 =", " 4"),
    ),
    "conversational prompt-completion": (
        {"prompt": user("2 + 2?"), "completion": assistant("4")},
        Demonstration(chat("2 + 2?"), "4"),
    ),
}
PAIRS = {
    "preference": (
        {"prompt": "Say hi", "chosen": "Hello!", "rejected": "Go away."},
        Pair("Say hi", "Hello!", "Go away."),
    ),
    "conversational preference": (
        {"prompt": user("Say hi"), "chosen": assistant("Hello!"), "rejected": assistant("No.")},
        Pair(chat("Say hi"), "Hello!", "No."),
    ),
    "implicit-prompt preference": (
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        Pair("The sky is", " blue.", " green."),
    ),
    "conversational implicit-prompt preference": (
        {
            "chosen": user("Sky?") + assistant("Blue.") + user("Sure?") + assistant("Yes."),
            "rejected": user("Sky?") + assistant("Blue.") + user("Sure?") + assistant("No."),
        },
        Pair(
            chat("Sky?") + ({"role": "assistant", "content": "Blue."},) + chat("Sure?"),
            "Yes.",
            "No.",
        ),
    ),
    "conversational implicit-prompt preference, several turns": (
        {
            "chosen": user("Sky?") + assistant("Blue.") + user("Sure?") + assistant("Yes."),
            "rejected": user("Sky?") + assistant("Green.") + user("Sure?") + assistant("No."),
        },
        Pair(
            chat("Sky?"),
            tuple(assistant("Blue.") + user("Sure?") + assistant("Yes.")),
            tuple(assistant("Green.") + user("Sure?") + assistant("No.")),
        ),
    ),
}
UNPAIRED = {
    "unpaired preference": (
        {"prompt": "Say hi", "completion": "Hello!", "label": True},
        Labeled("Say hi", "Hello!", True),
    ),
    "conversational unpaired preference": (
        {"prompt": user("Say hi"), "completion": assistant("Go away."), "label": False},
        Labeled(chat("Say hi"), "Go away.", False),
    ),
}


@pytest.mark.parametrize("shape", DEMONSTRATIONS)
def test_sft_reads_language_modelling_and_prompt_completion(tmp_path, shape):
    row, expected = DEMONSTRATIONS[shape]
    assert load_demonstrations(data(write(tmp_path / "d.jsonl", [row])), "train") == [expected]


@pytest.mark.parametrize("shape", PAIRS)
def test_reward_and_dpo_read_explicit_and_implicit_preference(tmp_path, shape):
    row, expected = PAIRS[shape]
    assert load_pairs(data(write(tmp_path / "p.jsonl", [row])), "train") == [expected]


@pytest.mark.parametrize("shape", UNPAIRED)
def test_kto_reads_unpaired_preference(tmp_path, shape):
    row, expected = UNPAIRED[shape]
    assert load_labeled(data(write(tmp_path / "u.jsonl", [row])), "train") == [expected]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ""])
def test_every_shape_reads_from_jsonl_parquet_and_save_to_disk(tmp_path, suffix):
    """Conversational rows survive each format's types (Parquet structs, Arrow lists)."""
    for name, table, loader in (
        ("d", DEMONSTRATIONS, load_demonstrations),
        ("p", PAIRS, load_pairs),
        ("u", UNPAIRED, load_labeled),
    ):
        for row, expected in table.values():  # one shape per file: a table has one schema
            path = write(tmp_path / f"{name}{len(list(tmp_path.iterdir()))}{suffix}", [row])
            assert loader(data(path), "train") == [expected]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ""])
def test_prompt_loaders_read_prompt_only_and_the_prompt_of_other_shapes(tmp_path, suffix):
    for name, prompt in (("plain", "The movie was"), ("chat", user("Hi"))):  # one schema a file
        path = write(tmp_path / f"{name}{suffix}", [{"prompt": prompt}])
        assert [row["prompt"] for row in load_prompts(path)] == [prompt]
    preference = PAIRS["conversational preference"][0]
    path = write(tmp_path / f"pairs{suffix}", [preference])
    (read,) = load_prompts(path)
    assert read["prompt"] == user("Say hi") and read["chosen"] == assistant("Hello!")  # meta


def test_the_implicit_prompt_ends_at_a_word_boundary():
    assert split_point("I like cats", "I like cars") == len("I like")
    assert split_point("Yes", "No") == 0
    assert split_point("Q: a\nA: 4", "Q: a\nA: 5") == len("Q: a\nA:")


def test_kto_reads_pairs_of_every_preference_shape_as_labels(tmp_path):
    row = PAIRS["conversational implicit-prompt preference"][0]
    labeled = load_labeled(data(write(tmp_path / "p.jsonl", [row])), "train")
    assert [(r.completion, r.desirable) for r in labeled] == [("Yes.", True), ("No.", False)]


# --- errors ---------------------------------------------------------------------------------------


def test_a_row_that_fits_no_shape_names_file_row_columns_and_shapes(tmp_path):
    path = write(tmp_path / "x.jsonl", [PAIRS["preference"][0], {"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as error:
        load_pairs(data(path), "train")
    assert str(error.value) == (
        f"{path}: row 2: fits no accepted shape (columns: question, answer); accepted: "
        "preference (prompt, chosen, rejected); implicit-prompt preference (chosen, rejected) "
        "(plain or conversational); rename the columns or map them with --data.prompt_field/"
        "--data.chosen_field/--data.rejected_field, or pass --data.on_bad_row skip to drop "
        "such rows"
    )
    with pytest.raises(DataError, match=r"d.jsonl: row 1: fits no accepted shape \(columns: q\); "):
        load_demonstrations(data(write(tmp_path / "d.jsonl", [{"q": "?"}])), "train")


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"prompt": user("Hi"), "chosen": user("x") + assistant("y"), "rejected": "n"},
            r"'chosen' not the assistant's turn \(roles user, assistant\); start and end the "
            r"completion with an assistant message",
        ),
        (
            {"prompt": assistant("Hi"), "chosen": "a", "rejected": "b"},
            r"'prompt' ending with an assistant turn; end the prompt with the turn",
        ),
        (
            {"chosen": user("A") + assistant("x"), "rejected": user("B") + assistant("y")},
            r"malformed 'the messages chosen and rejected share'",
        ),
        ({"chosen": "same text", "rejected": "same text"}, "chosen equals rejected"),
    ],
)
def test_bad_conversational_cells_name_row_and_fix(tmp_path, row, message):
    path = write(tmp_path / "p.jsonl", [row])
    with pytest.raises(DataError, match=rf"p.jsonl: row 1: {message}"):
        load_pairs(data(path), "train")


# --- the chat template ----------------------------------------------------------------------------


def test_a_conversational_row_is_rendered_by_the_chat_template(tmp_path, tiny_lm):
    from rlhfkit.data import sequences

    _, tokenizer = tiny_lm
    (pair,) = load_pairs(
        data(write(tmp_path / "p.jsonl", [PAIRS["conversational preference"][0]])), "train"
    )
    encoded = sequences.encode(tokenizer, pair.prompt, pair.chosen, True, 128)
    head = tokenizer.apply_chat_template(user("Say hi"), add_generation_prompt=True, tokenize=False)
    assert head.endswith("assistant\n")  # the assistant's turn is opened
    ids = encoded.ids
    assert ids[: encoded.completion_start] == tokenizer(head, add_special_tokens=False).input_ids
    reply = tokenizer("Hello!", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    assert ids[encoded.completion_start :] == reply
    with pytest.raises(DataError, match="a chat prompt .* needs the chat template"):
        sequences.encode(tokenizer, pair.prompt, pair.chosen, False, 128)


def test_a_reply_of_several_turns_is_the_templates_text_after_the_prompt(tiny_lm):
    from rlhfkit.data import sequences

    _, tokenizer = tiny_lm
    _, pair = PAIRS["conversational implicit-prompt preference, several turns"]
    encoded = sequences.encode(tokenizer, pair.prompt, pair.chosen, True, 128)
    whole = tokenizer.apply_chat_template(
        user("Sky?") + assistant("Blue.") + user("Sure?") + assistant("Yes."), tokenize=False
    )
    assert whole.endswith("Yes.<|im_end|>\n")  # the template's last end, which encode replaces
    head = tokenizer.apply_chat_template(user("Sky?"), add_generation_prompt=True, tokenize=False)
    reply = whole[len(head) :].removesuffix("<|im_end|>\n")
    assert encoded.ids[encoded.completion_start :] == tokenizer(
        reply, add_special_tokens=False
    ).input_ids + [tokenizer.eos_token_id]
    with pytest.raises(DataError, match="a completion of several messages needs the chat"):
        sequences.encode(tokenizer, "Sky?", pair.chosen, False, 128)


# --- one short run per trainer family ---------------------------------------------------------------


def offline_common(tmp_path, model_dir, path: str) -> dict:
    from rlhfkit.config import OptimCfg
    from rlhfkit.train import offline

    return dict(
        model=ModelCfg(path=str(model_dir), device="cpu"),
        data=FeedbackDataCfg(path=path, eval_path=path),
        train=offline.TrainCfg(max_steps=2, batch_size=2, max_length=64),
        optim=OptimCfg(lr=1e-3),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(tmp_path / "run"), checkpoint_every=0),
    )


def conversational_rows(table) -> list[dict]:
    return [row for name, (row, _) in table.items() if name.startswith("conversational")]


def test_sft_trains_on_conversational_shapes(tmp_path, tiny_model_dir):
    from rlhfkit.train import sft

    path = write(tmp_path / "d.jsonl", conversational_rows(DEMONSTRATIONS) + [{"text": "Plain."}])
    result = sft.train(sft.Config(**offline_common(tmp_path, tiny_model_dir, path)))
    assert result.summary["steps"] == 2 and result.summary["eval_nll_after"] > 0


@pytest.mark.parametrize("loss", ["dpo", "kto"])
def test_dpo_family_trains_on_conversational_preference_and_unpaired_rows(
    tmp_path, tiny_model_dir, loss
):
    from rlhfkit.train import dpo

    rows = conversational_rows(PAIRS)[1:] if loss == "dpo" else conversational_rows(UNPAIRED) * 2
    path = write(tmp_path / "p", rows)  # save_to_disk
    cfg = dpo.Config(**offline_common(tmp_path, tiny_model_dir, path), algo=dpo.AlgoCfg(loss=loss))
    assert dpo.train(cfg).summary["steps"] == 2


def test_reward_trains_on_implicit_conversational_pairs(tmp_path, tiny_model_dir):
    from rlhfkit.train import reward

    rows = conversational_rows(PAIRS)
    path = write(tmp_path / "p.parquet", rows[1:])  # implicit: one turn and several
    cfg = reward.Config(
        **offline_common(tmp_path, tiny_model_dir, path), rm=reward.RewardCfg(max_length=32)
    )
    assert reward.train(cfg).summary["steps"] == 2


def test_grpo_trains_on_conversational_prompts_from_a_saved_dataset(
    tmp_path, tiny_model_dir, reward_spec
):
    from rlhfkit.config import OptimCfg
    from rlhfkit.config_io import validate
    from rlhfkit.train import grpo

    path = write(tmp_path / "prompts", [{"prompt": user("Hi")}, {"prompt": user("Tell a")}])
    assert validate(PromptDataCfg(prompts=path)) == []
    [problem] = validate(PromptDataCfg(prompts=str(tmp_path)))
    assert problem.endswith(
        "is a directory; give a file or a dataset saved by save_to_disk; or "
        "name a built-in set such as vader:movies"
    )
    cfg = grpo.Config(
        reward=reward_spec,
        steps=1,
        model=ModelCfg(path=str(tiny_model_dir), device="cpu"),
        data=PromptDataCfg(prompts=path, eval_size=0),
        gen=GenCfg(max_new_tokens=4, batch_size=4, chat_template="on"),
        algo=grpo.AlgoCfg(group_size=2, prompts_per_step=2, micro_batch_size=4),
        optim=OptimCfg(lr=1e-3),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(tmp_path / "run"), checkpoint_every=0),
    )
    assert grpo.train(cfg).summary["steps"] == 1
