"""Goal relabelling on a tiny random model: learning, the goals by hand, and bad input."""

from __future__ import annotations

import pytest

from rlhfkit import cli, config_io
from rlhfkit.conditioning import Conditioning, load_conditioning
from rlhfkit.config import GenCfg, LogCfg, ModelCfg, OptimCfg, PromptDataCfg, RunCfg
from rlhfkit.data.relabelling import NO_NUMBER, GoalSpace
from rlhfkit.errors import ConfigError
from rlhfkit.rewards import load_reward
from rlhfkit.train.hindsight import relabel
from rlhfkit.train.hindsight.rounds import RoundsCfg


def make_config(tmp_path, model_dir, prompts_file, **goal) -> relabel.Config:
    return relabel.Config(
        reward="length",
        model=ModelCfg(path=str(model_dir), device="cpu"),
        data=PromptDataCfg(prompts=str(prompts_file), eval_size=0),
        gen=GenCfg(max_new_tokens=6, temperature=1.0, batch_size=64, chat_template="off"),
        optim=OptimCfg(lr=1e-2),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(tmp_path / "run")),
        rounds=RoundsCfg(rounds=25, prompts_per_round=64, steps_per_round=8, batch_size=16),
        goal=relabel.GoalCfg(**{"kind": "length", "max_words": 2, **goal}),
    )


def test_goal_hit_rate_rises(tmp_path, ending_model_dir, prompts_file):
    # three goals (0, 1, 2+ words): a policy ignoring the goal hits about a third of them, so a
    # hit rate well above that means the model learned to read the goal in its prompt
    result = relabel.train(make_config(tmp_path, ending_model_dir, prompts_file))
    hits = [row["goal_hit_rate"] for row in result.run.metrics()]
    first, last = sum(hits[:3]) / 3, sum(hits[-3:]) / 3
    assert first < 0.5 and last > 0.6 and last > first + 0.2, hits
    model_dir = result.run.path / "model"
    assert result.summary["model"] == str(model_dir)
    assert load_conditioning(model_dir) == Conditioning(
        "relabel", instruction="[length 2 or more words] {prompt}"
    )


def test_desired_goal_is_what_the_model_is_asked(tmp_path, tiny_model_dir, prompts_file):
    cfg = make_config(tmp_path, tiny_model_dir, prompts_file, desired=1)
    run = relabel.train(replace_rounds(cfg, rounds=1, prompts_per_round=4, steps_per_round=1)).run
    assert load_conditioning(run.path / "model").apply("Hi") == "[length 1 word] Hi"


def replace_rounds(cfg: relabel.Config, **settings: int) -> relabel.Config:
    from dataclasses import replace

    return replace(cfg, rounds=replace(cfg.rounds, **settings))


def test_sentiment_levels_by_hand():
    space = GoalSpace("sentiment", levels=4)
    assert space.edges() == [-0.5, 0.0, 0.5]
    assert [space.reached(s) for s in (-1.0, -0.6, -0.5, -0.01, 0.0, 0.49, 0.5, 1.0)] == [
        1,
        1,
        2,
        2,
        3,
        3,
        4,
        4,
    ]  # a score on an edge goes up
    assert space.goals == [1, 2, 3, 4] and space.top == 4
    assert space.ask("The movie was", 4) == "[very positive] The movie was"  # words it reads
    assert [space.describe(g) for g in (1, 2, 3)] == ["very negative", "negative", "positive"]
    assert space.distance(1, 4) == 1.0 and space.distance(3, 3) == 0.0
    assert GoalSpace("sentiment", levels=7).describe(7) == "sentiment level 7 of 7"  # no names
    own = GoalSpace("sentiment", levels=2, names=("bad", "good"))
    assert own.ask("The movie was", 2) == "[good] The movie was"
    with pytest.raises(ConfigError, match=r"goal\.names = \['bad'\] names 1 levels"):
        GoalSpace("sentiment", levels=2, names=("bad",))


def test_length_goals_by_hand():
    space = GoalSpace("length", max_words=3, template="{prompt} (in {goal})")
    assert space.goals == [0, 1, 2, 3]
    assert [space.reached(n) for n in (0.0, 1.0, 2.0, 3.0, 9.0)] == [0, 1, 2, 3, 3]
    assert space.ask("Say", 1) == "Say (in length 1 word)"
    assert space.ask("Say", 3) == "Say (in length 3 or more words)"  # longer ones reach it too
    chat = [{"role": "user", "content": "Hi"}]
    assert space.ask(chat, 2) == [{"role": "user", "content": "Hi (in length 2 words)"}]


def test_number_goals_by_hand():
    space = GoalSpace.for_reward("number", "number", max_number=9)
    assert space.goals == list(range(10)) and space.top == 9
    scores = load_reward("number")(["Q"] * 5, ["I pick 7.", "seven", "0, then 3", "42", "x"])
    assert scores == [7.0, -1.0, 0.0, 42.0, -1.0]
    assert [space.reached(s) for s in scores] == [7, NO_NUMBER, 0, 10, NO_NUMBER]
    assert space.ask("Pick a number:", 7) == "[the number 7] Pick a number:"
    # outcomes no prompt asks for are still said in words, so they are learned from too
    assert space.ask("Pick a number:", NO_NUMBER) == "[no number] Pick a number:"
    assert space.ask("Pick a number:", 10) == "[a number above 9] Pick a number:"
    assert space.distance(7, 7) == 0.0 and space.distance(0, 9) == 1.0
    assert space.distance(3, 6) == pytest.approx(1 / 3)
    assert space.distance(NO_NUMBER, 0) == 1.0 and space.distance(10, 9) == 1.0
    with pytest.raises(ConfigError, match=r"reward number:3: the number reward takes no argument"):
        load_reward("number:3")


@pytest.mark.parametrize(
    ("kind", "reward"),
    [
        ("sentiment", "reasoning_gym:basic_arithmetic"),
        ("sentiment", "length"),
        ("length", "vader"),
        ("length", "length:5"),
        ("number", "length"),
        ("sentiment", "number"),
    ],
)
def test_a_reward_that_cannot_measure_the_goal_is_an_error(kind, reward):
    with pytest.raises(
        ConfigError,
        match=rf"goal\.kind = '{kind}': .*reward = '{reward}' cannot "
        r"measure it; set --reward",
    ):
        GoalSpace.for_reward(kind, reward)
    problems = config_io.validate(relabel.Config(reward=reward, goal=relabel.GoalCfg(kind=kind)))
    assert any(
        p.startswith(f"goal.kind = '{kind}': ") and f"reward = '{reward}'" in p for p in problems
    ), problems


def test_train_refuses_an_unmeasurable_goal_before_loading(tmp_path, prompts_file):
    cfg = relabel.Config(
        reward="reasoning_gym:basic_arithmetic",
        model=ModelCfg(path=str(tmp_path / "no-model")),
        data=PromptDataCfg(prompts=str(prompts_file)),
        run=RunCfg(output_dir=str(tmp_path / "run")),
    )
    with pytest.raises(ConfigError, match=r"goal\.kind = 'sentiment'.*reasoning_gym"):
        relabel.train(cfg)
    assert not (tmp_path / "run").exists()


def test_config_errors():
    problems = "\n".join(
        config_io.validate(
            relabel.Config(
                method="hir",
                reward="vader",
                goal=relabel.GoalCfg(levels=1, template="{prompt}", desired=5, names=("a", "b")),
            )
        )
    )
    assert "method = 'hir'" in problems
    assert "goal.template = '{prompt}': must contain {goal} exactly once" in problems
    assert (
        "goal.levels = 1" in problems and "goal.desired = 5: is beyond the top goal 1" in problems
    )
    assert "goal.names = ['a', 'b']: names 2 levels but goal.levels = 1" in problems
    assert config_io.validate(relabel.Config(reward="sentiment")) == []


def test_cli_refuses_a_goal_the_reward_cannot_measure(tmp_path, capsys):
    code = cli.main(
        [
            "hindsight",
            "--method",
            "relabel",
            "--reward",
            "reasoning_gym:chain_sum",
            "--run.output_dir",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "goal.kind = 'sentiment'" in err and "reasoning_gym:chain_sum" in err
