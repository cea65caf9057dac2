"""conditioning.json: written atomically, read back, applied to text and chat prompts."""

from __future__ import annotations

import pytest

from rlhfkit.conditioning import FILE_NAME, Conditioning, load_conditioning
from rlhfkit.errors import DataError


def test_round_trip_and_apply(tmp_path):
    saved = Conditioning("hir", instruction="{prompt}\nAnswer correctly.", response_prefix="")
    saved.save(tmp_path)
    loaded = load_conditioning(tmp_path)
    assert loaded == saved
    assert loaded.apply("2+2?") == "2+2?\nAnswer correctly."
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    assert loaded.apply(chat) == [chat[0], {"role": "user", "content": "2+2?\nAnswer correctly."}]
    assert chat[1]["content"] == "2+2?"  # the caller's chat is not changed
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]  # no temp file left behind


def test_ordinary_model_has_none(tmp_path):
    assert load_conditioning(tmp_path) is None


def test_template_must_hold_the_prompt_once():
    with pytest.raises(DataError, match="exactly once"):
        Conditioning("coh", instruction="Be positive.")


def test_corrupt_file_is_a_clear_error(tmp_path):
    (tmp_path / FILE_NAME).write_text("{not json")
    with pytest.raises(DataError, match="not a valid conditioning file"):
        load_conditioning(tmp_path)
