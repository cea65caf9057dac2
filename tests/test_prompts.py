"""Prompt files: plain prompts, chats, a custom column, and errors that name file and row."""

from __future__ import annotations

import json

import pytest

from rlhfkit.data.prompts import load_prompts
from rlhfkit.errors import DataError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_prompt_and_messages_columns_with_other_columns_kept(tmp_path):
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "Tell a joke", "id": 1}, {"messages": chat, "id": 2}]
    )
    assert load_prompts(path) == [{"prompt": "Tell a joke", "id": 1}, {"prompt": chat, "id": 2}]


def test_custom_column_and_text_files(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "2 + 2?", "answer": "4"}])
    assert load_prompts(path, field="question") == [{"prompt": "2 + 2?", "answer": "4"}]
    text = tmp_path / "prompts.txt"
    text.write_text("first prompt\n\nsecond prompt\n")
    assert [row["prompt"] for row in load_prompts(text)] == ["first prompt", "second prompt"]


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": "  "}, r"p.jsonl: row 2: the prompt is empty"),
        ({"prompt": 7}, r"row 2: the prompt is a int; give a string or a chat"),
        (
            {"text": "hi"},
            r"row 2 has no 'prompt' column \(columns: text\); name the prompt "
            r"column with --prompt_field",
        ),
        ({"messages": []}, r"row 2: the chat has no messages"),
        ({"messages": [{"role": "user"}]}, r"row 2: message 0 of the chat is not"),
        (
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hey"},
                ]
            },
            r"row 2: the chat ends with an assistant message",
        ),
    ],
)
def test_bad_rows_name_file_and_row(tmp_path, row, message):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, row])
    with pytest.raises(DataError, match=message):
        load_prompts(path)


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "none.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="holds no prompts"):
        load_prompts(path)
