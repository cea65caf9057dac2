"""`rlhfkit demo` on the real embedded model, in a short preset: the reward must move up."""

from __future__ import annotations

import json

import pytest

from rlhfkit import cli


@pytest.mark.slow
def test_short_demo_moves_reward_up(tmp_path, capsys):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--steps", "8", "--optim.lr", "1e-4", "--gen.max_new_tokens", "16",
                     "--data.eval_size", "32", "--samples", "2", "--log.tensorboard", "false",
                     "--run.checkpoint_every", "0", "--run.output_dir", str(out)])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    # sampling uses fixed seeds, so this is deterministic on a given machine
    assert summary["reward_after"] > summary["reward_before"] + 0.02, summary
    assert 0 < summary["kl_after"] < 20, summary
    assert (out / "curves.png").stat().st_size > 10_000
    assert (out / "model" / "config.json").is_file()
    printed = capsys.readouterr().out
    assert "positive rate, judged by vader" in printed and "before vs after" in printed
