"""replace_dir: a directory swapped in whole, the old one kept whole until the new one is there."""

from __future__ import annotations

import os

import pytest

from rlhfkit.atomic import old_prefix, replace_dir


def test_replace_dir_swaps_in_the_new_directory_and_leaves_nothing_aside(tmp_path):
    final, staging = tmp_path / "model", tmp_path / ".tmp-model"
    final.mkdir()
    (final / "weights").write_text("old")
    staging.mkdir()
    (staging / "weights").write_text("new")
    replace_dir(staging, final)
    assert (final / "weights").read_text() == "new" and not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    staging.mkdir()  # and into an empty place
    replace_dir(staging, tmp_path / "other")
    assert (tmp_path / "other").is_dir()


def test_a_failed_swap_keeps_the_old_directory_whole_aside(tmp_path, monkeypatch):
    final, staging = tmp_path / "model", tmp_path / ".tmp-model"
    final.mkdir()
    (final / "weights").write_text("old")
    staging.mkdir()
    real, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise OSError("disk gone")
        real(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError):
        replace_dir(staging, final)
    (aside,) = tmp_path.glob(old_prefix("model") + "*")
    assert (aside / "model" / "weights").read_text() == "old" and staging.is_dir()
