"""Rewards: the registry and spec parsing, score validation, and every built-in reward."""

from __future__ import annotations

import doctest
import json
import math
import re
from pathlib import Path

import pytest

from rlhfkit.errors import ConfigError, RewardError
from rlhfkit.rewards import (
    Reward,
    RewardItemError,
    compute_rewards,
    lexicon,
    list_rewards,
    load_reward,
    register_reward,
    registry,
    rules,
    sentiment,
    verifiers,
)

BUILT_INS = [
    "bleu", "choice", "chrf", "classifier", "code", "exact_match", "format", "judge", "length",
    "number", "reasoning_gym", "rm", "rouge_l", "sentiment", "similarity", "token_f1", "vader",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _isolated_registry(monkeypatch):
    """Rewards a test registers vanish after it."""
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))


def exclaims(prompts, completions, **meta):
    return [float(text.count("!")) for text in completions]


# --- registry and specs ---------------------------------------------------------------------------


def test_built_ins_are_listed_with_a_summary():
    listed = list_rewards()
    assert sorted(listed) == BUILT_INS
    assert all(summary and "\n" not in summary for summary in listed.values())


@pytest.mark.parametrize("module", [registry, rules, lexicon, verifiers, sentiment])
def test_docstring_examples_hold(module):
    results = doctest.testmod(module)
    assert results.attempted > 0 and results.failed == 0


def test_name_and_argument_are_parsed():
    assert load_reward("length:4")(["Q"], ["a b"]) == [-0.5]
    assert load_reward(" length ").name == "length"
    # only the first ':' separates the name: a regex may hold more
    assert load_reward("format:^a:b$")(["Q", "Q"], ["a:b", "a:c"]) == [1.0, 0.0]


def test_unknown_name_suggests_and_lists_the_registered_ones():
    with pytest.raises(ConfigError) as error:
        load_reward("sentimnet")
    message = str(error.value)
    assert "reward 'sentimnet': not registered; did you mean 'sentiment'?" in message
    assert "registered rewards: " + ", ".join(BUILT_INS) + "; or give" in message
    with pytest.raises(ConfigError, match="empty"):
        load_reward("  ")


def test_a_function_in_a_user_file(tmp_path):
    file = tmp_path / "my_rewards.py"
    imports = tmp_path / "imports.log"
    file.write_text(
        f"open({str(imports)!r}, 'a').write('imported\\n')\n"
        "def shout(prompts, completions, **meta):\n"
        "    return [float(c.count('!')) for c in completions]\n"
        "def _helper():\n    pass\n"
    )
    reward = load_reward(f"{file}:shout")
    assert reward.name == f"{file}:shout"
    assert reward(["Q", "Q"], ["hi!", "hey!!"]) == [1.0, 2.0]
    assert load_reward(f"{file}:shout")(["Q"], ["!"]) == [1.0]
    assert imports.read_text() == "imported\n", "a user file runs once, however often it is named"
    with pytest.raises(ConfigError, match=r"no function 'shuot' there \(functions: shout\)"):
        load_reward(f"{file}:shuot")
    with pytest.raises(ConfigError, match="does not exist"):
        load_reward(f"{tmp_path / 'missing.py'}:shout")
    with pytest.raises(ConfigError, match="name the function too"):
        load_reward(str(file))


def test_a_user_file_that_fails_to_import_says_so(tmp_path):
    file = tmp_path / "broken_rewards.py"
    file.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ConfigError, match="importing .* failed: ModuleNotFoundError"):
        load_reward(f"{file}:anything")


def test_a_module_function_and_a_name_the_module_registers(tmp_path, monkeypatch):
    package = tmp_path / "user_reward_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scoring.py").write_text(
        "from rlhfkit.rewards import register_reward\n"
        "def shout(prompts, completions, **meta):\n"
        "    return [float(c.count('!')) for c in completions]\n"
        "@register_reward('exclaim')\n"
        "def make_exclaim(arg):\n"
        "    weight = float(arg or 1)\n"
        "    return lambda prompts, completions, **meta: [\n"
        "        weight * c.count('!') for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_reward("user_reward_pkg.scoring:shout")(["Q"], ["a!!"]) == [2.0]
    # the registered name works through the module, and afterwards on its own, with arguments
    assert load_reward("user_reward_pkg.scoring:exclaim")(["Q"], ["a!!"]) == [2.0]
    assert load_reward("user_reward_pkg.scoring:make_exclaim")(["Q"], ["a!!"]) == [2.0]
    assert load_reward("exclaim:0.5")(["Q"], ["a!!"]) == [1.0]
    assert "exclaim" in list_rewards()
    with pytest.raises(ConfigError, match="no module 'user_reward_pkg.missing'"):
        load_reward("user_reward_pkg.missing:shout")


def test_a_second_function_cannot_take_a_registered_name():
    with pytest.raises(ConfigError, match="'length' is already registered by rlhfkit.rewards"):
        register_reward("length")(lambda arg: exclaims)
    with pytest.raises(ValueError, match="without ':'"):
        register_reward("a:b")


def test_a_reward_without_arguments_rejects_one():
    with pytest.raises(ConfigError, match="'vader' takes no argument"):
        load_reward("vader:strict")
    with pytest.raises(ConfigError, match="'sentiment' takes no argument"):
        load_reward("sentiment:x")


# --- compute_rewards: the three ways a reward can go wrong ---------------------------------------


def test_a_raising_reward_is_traced_to_its_item():
    def explode_on_boom(prompts, completions, **meta):
        if any("boom" in text for text in completions):
            raise ValueError("cannot score this")
        return [1.0] * len(completions)

    reward = Reward("exploding", explode_on_boom)
    with pytest.raises(RewardItemError) as error:
        compute_rewards(reward, ["Q"] * 4, ["fine", "ok", "a boom here", "fine"])
    assert error.value.item == 2
    assert str(error.value) == (
        "reward 'exploding' on item 2 (completion 'a boom here'): "
        "raised ValueError: cannot score this"
    )


def test_a_long_completion_is_shortened_in_the_error():
    def explode(prompts, completions, **meta):
        raise KeyError("answer")

    with pytest.raises(RewardError) as error:
        compute_rewards(explode, ["Q"], ["word " * 50])
    assert "(completion 'word word" in str(error.value) and "...'" in str(error.value)
    assert "reward 'explode' on item 0" in str(error.value)
    assert "raised KeyError: 'answer'" in str(error.value)


def test_a_failure_only_in_a_batch_is_reported_as_such():
    def only_single(prompts, completions, **meta):
        if len(completions) > 1:
            raise RuntimeError("out of memory")
        return [0.0]

    with pytest.raises(
        RewardError,
        match="failed on a batch of 2 although every item alone "
        "scores: RuntimeError: out of memory",
    ):
        compute_rewards(Reward("picky", only_single), ["Q", "Q"], ["a", "b"])


def test_wrong_number_of_scores_names_expected_and_got():
    reward = Reward("short", lambda prompts, completions, **meta: [1.0, 2.0])
    with pytest.raises(
        RewardError,
        match=re.escape(
            "reward 'short' returned 2 scores for 3 completions; expected one per completion"
        ),
    ):
        compute_rewards(reward, ["Q"] * 3, ["a", "b", "c"])


@pytest.mark.parametrize(
    "bad, problem",
    [
        (math.nan, "returned nan; scores must be finite"),
        (math.inf, "returned inf; scores must be finite"),
        ("high", "returned 'high' (str); scores must be floats"),
        (None, "returned None (NoneType); scores must be floats"),
        (True, "returned True (bool); scores must be floats"),
    ],
)
def test_a_bad_score_names_its_item(bad, problem):
    reward = Reward("odd", lambda prompts, completions, **meta: [0.5, bad, 0.1])
    with pytest.raises(RewardItemError) as error:
        compute_rewards(reward, ["Q"] * 3, ["a", "the second one", "c"])
    assert str(error.value) == f"reward 'odd' on item 1 (completion 'the second one'): {problem}"


def test_arrays_and_integers_are_accepted_as_floats():
    import numpy as np
    import torch

    assert compute_rewards(lambda p, c, **m: np.array([1, 2]), ["Q", "Q"], ["a", "b"]) == [1.0, 2.0]
    assert compute_rewards(lambda p, c, **m: torch.tensor([0.5]), ["Q"], ["a"]) == [0.5]
    assert compute_rewards(lambda p, c, **m: (3,), ["Q"], ["a"]) == [3.0]


def test_meta_columns_reach_the_reward_and_must_fit():
    def echo(prompts, completions, **meta):
        return [float(v) for v in meta["reward"]]

    # `reward` is compute_rewards' own first argument, yet a fine column name
    assert compute_rewards(echo, ["Q", "Q"], ["a", "b"], reward=[3, 4]) == [3.0, 4.0]
    with pytest.raises(RewardError, match="meta column 'reward' has 1 values for 2 completions"):
        compute_rewards(echo, ["Q", "Q"], ["a", "b"], reward=[3])
    with pytest.raises(RewardError, match="a meta column is called 'prompts'.*rename the column"):
        compute_rewards(echo, ["Q"], ["a"], prompts=[3])
    with pytest.raises(RewardError, match="1 prompts for 2 completions"):
        compute_rewards(echo, ["Q"], ["a", "b"])


# --- rule rewards --------------------------------------------------------------------------------


def test_length_counts_words_or_scores_distance_to_a_target():
    completions = ["", "one", "one two three four", "a  b\nc\td e f g h"]
    assert load_reward("length")(["Q"] * 4, completions) == [0.0, 1.0, 4.0, 8.0]
    assert load_reward("length:4")(["Q"] * 4, completions) == [-1.0, -0.75, 0.0, -1.0]
    for bad in ("0", "-3", "ten", "2.5"):
        with pytest.raises(ConfigError, match=f"length:{re.escape(bad)}: the target must be"):
            load_reward(f"length:{bad}")


def test_format_default_needs_answer_tags_and_a_custom_regex_works():
    completions = ["<answer>4</answer>", "so\n<answer>\n4\n</answer>!", "<answer>4", "4"]
    assert load_reward("format")(["Q"] * 4, completions) == [1.0, 1.0, 0.0, 0.0]
    assert load_reward(r"format:^\d+$")(["Q"] * 4, completions) == [0.0, 0.0, 0.0, 1.0]
    with pytest.raises(ConfigError, match=r"format:\(unclosed: not a valid regular expression"):
        load_reward("format:(unclosed")


# --- vader ----------------------------------------------------------------------------------------


def test_vader_scores_positive_above_neutral_above_negative():
    score = load_reward("vader")
    positive, neutral, negative = score(
        ["Q"] * 3,
        [
            "A wonderful, moving film. I loved every minute!",
            "The film is 104 minutes long.",
            "A dull, ugly and painfully boring mess.",
        ],
    )
    assert positive > 0.8 and neutral == 0.0 and negative < -0.8


# --- reasoning-gym verifier ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def arithmetic_items():
    import reasoning_gym

    return list(reasoning_gym.create_dataset("basic_arithmetic", size=3, seed=7))


def test_reasoning_gym_scores_right_and_wrong_answers(arithmetic_items):
    verify = load_reward("reasoning_gym:basic_arithmetic")
    right, wrong = arithmetic_items[0], arithmetic_items[1]
    completions = [
        f"Working... <answer>{right['answer']}</answer>",
        f"<answer>{int(wrong['answer']) + 1}</answer>",
        f"I add them up.\nSo the result is {right['answer']}.",
    ]
    scores = compute_rewards(
        verify,
        [i["question"] for i in (right, wrong, right)],
        completions,
        entry=[right, wrong, right],
    )
    assert scores == [1.0, 0.0, 1.0]


def test_reasoning_gym_reads_answer_and_metadata_columns_and_json_text(arithmetic_items):
    verify = load_reward("reasoning_gym:basic_arithmetic")
    item = arithmetic_items[2]
    prompts = [item["question"]] * 2
    completions = [f"<answer>{item['answer']}</answer>"] * 2
    assert verify(
        prompts,
        completions,
        answer=[item["answer"], int(item["answer"])],
        metadata=[item["metadata"], json.dumps(item["metadata"])],
    ) == [1.0, 1.0]
    assert verify(prompts, completions, entry=[json.dumps(item), item]) == [1.0, 1.0]


def test_reasoning_gym_without_its_columns_names_them(arithmetic_items):
    verify = load_reward("reasoning_gym:basic_arithmetic")
    with pytest.raises(RewardError) as error:
        compute_rewards(verify, ["Q"], ["<answer>3</answer>"], id=[7])
    message = str(error.value)
    assert "needs each completion's dataset item: a column 'entry'" in message
    assert "or 'answer'" in message and "the data has extra columns: id" in message
    with pytest.raises(
        RewardItemError,
        match=r"on item 1 \(completion '3'\): column 'entry' "
        "holds int, expected a JSON object",
    ):
        verify(["Q", "Q"], ["<answer>-4</answer>", "3"], entry=[arithmetic_items[0], 3])


def test_reasoning_gym_task_must_exist():
    with pytest.raises(ConfigError, match="name the task, as in reasoning_gym:basic_arithmetic"):
        load_reward("reasoning_gym")
    with pytest.raises(ConfigError, match="'basic_arithmatic'; did you mean 'basic_arithmetic'"):
        load_reward("reasoning_gym:basic_arithmatic")


# --- sentiment: the head and its cache, on fake embeddings ---------------------------------------


def test_ridge_recovers_a_linear_rule_and_picks_the_strength_by_validation():
    import torch

    torch.manual_seed(0)
    weight = torch.tensor([1.5, -2.0, 0.5, 0.0], dtype=torch.float64)
    x_train, x_val = torch.randn(200, 4), torch.randn(50, 4)  # (N, D)
    head, strength, mse = sentiment.fit_ridge(
        x_train,
        x_train.double() @ weight + 0.7,
        x_val,
        x_val.double() @ weight + 0.7,
        strengths=(1e-6, 1e3),
    )
    assert strength == 1e-6 and mse[1e-6] < 1e-9 < mse[1e3]
    assert torch.allclose(head.weight, weight, atol=1e-5)
    assert head.bias == pytest.approx(0.7, abs=1e-5)


def test_pairwise_accuracy_in_blocks_equals_the_full_pair_matrix():
    import torch

    torch.manual_seed(0)
    target = torch.randint(-8, 9, (1500,)).double() / 2  # many ties, as in real ratings
    predicted = target + torch.randn(1500).double()
    human = target[:, None] - target[None, :]  # (N, N)
    model = predicted[:, None] - predicted[None, :]  # (N, N)
    expected = float((model[human > 0] > 0).double().mean())
    assert sentiment.pairwise_accuracy(predicted, target) == pytest.approx(expected, abs=1e-12)
    assert sentiment.pairwise_accuracy(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])) == 0.0


class FakeEncoder:
    """Stands in for MiniLM: a text's 'embedding' is (#good - #bad, #words / 10, 1)."""

    texts_embedded = 0

    def __init__(self, path, batch_size=64):
        assert (Path(path) / "model.safetensors").is_file()

    def __call__(self, texts, description=None):
        import torch

        FakeEncoder.texts_embedded += len(texts)
        return torch.tensor(
            [
                [t.split().count("good") - t.split().count("bad"), len(t.split()) / 10, 1.0]
                for t in texts
            ]
        )  # (N, 3)


def fake_splits(bias: float = 0.0) -> dict[str, list]:
    """Rated texts whose human mean is 1.5 x (#good - #bad), across the four corpora."""
    from rlhfkit.data.vader import RatedText

    splits = {}
    for split, size in (("train", 60), ("validation", 20), ("test", 24)):
        records = []
        for i in range(size):
            good, bad = i % 3, (i // 3) % 3
            text = " ".join(["good"] * good + ["bad"] * bad + ["film"] * (i % 4 + 1))
            mean = 1.5 * (good - bad) + bias
            corpus = sentiment.CORPORA[i % 4]
            records.append(RatedText(corpus, f"{split}{i}", text, mean, 0.0, (mean,)))
        splits[split] = records
    return splits


@pytest.fixture
def fake_sentiment_world(tmp_path, monkeypatch):
    from rlhfkit import assets

    encoder_dir = tmp_path / "minilm"
    encoder_dir.mkdir()
    (encoder_dir / "model.safetensors").write_bytes(b"fake weights")
    monkeypatch.setattr(assets, "ensure", lambda name: {"minilm": encoder_dir}[name])
    monkeypatch.setattr(sentiment, "SentenceEncoder", FakeEncoder)
    monkeypatch.setattr(sentiment, "rated_texts", fake_splits)
    monkeypatch.setattr(FakeEncoder, "texts_embedded", 0)
    return assets.home() / "rewards" / "sentiment"


def test_sentiment_fits_once_caches_atomically_and_reuses(fake_sentiment_world, monkeypatch):
    cache = fake_sentiment_world
    completions = ["good good film", "bad film", "film", "good good good good good"]
    first = load_reward("sentiment")
    assert FakeEncoder.texts_embedded == 60 + 20 + 24
    scores = compute_rewards(first, ["Q"] * 4, completions)
    assert scores[0] == pytest.approx(0.75, abs=1e-3)  # rating 3 of 4
    assert scores[1] == pytest.approx(-0.375, abs=1e-3)
    assert scores[2] == pytest.approx(0.0, abs=1e-3)
    assert scores[3] == 1.0  # rating 7.5 lies beyond what any person gives: clipped to 4

    entries = list(cache.iterdir())
    assert len(entries) == 1, "no staging directory may be left behind"
    assert sorted(p.name for p in entries[0].iterdir()) == ["head.safetensors", "manifest.json"]
    manifest = json.loads((entries[0] / "manifest.json").read_text())
    assert manifest["texts"] == {"train": 60, "validation": 20, "test": 24}
    assert manifest["test"]["polarity_accuracy"] == 1.0
    assert manifest["test"]["pairwise_accuracy"] == 1.0
    assert set(manifest["test"]["per_corpus"]) == set(sentiment.CORPORA)
    assert manifest["key"] == entries[0].name

    FakeEncoder.texts_embedded = 0
    again = load_reward("sentiment")
    assert FakeEncoder.texts_embedded == 0, "a cached head must not be refitted"
    assert again(["Q"] * 4, completions) == scores

    FakeEncoder.texts_embedded = 0
    monkeypatch.setattr(sentiment, "rated_texts", lambda: fake_splits(bias=0.5))
    load_reward("sentiment")
    assert FakeEncoder.texts_embedded == 104, "other ratings must give another head"
    assert len(list(cache.iterdir())) == 2


# --- sentiment: the real head on real human ratings ----------------------------------------------


@pytest.fixture(scope="module")
def real_sentiment():
    """The real reward (fitted on first use, then cached) and the held-out VADER texts."""
    from rlhfkit.data.vader import load_vader

    return load_reward("sentiment"), load_vader(sentiment.CORPORA, split="test")


@pytest.mark.slow
def test_real_sentiment_ranks_clearly_positive_movie_snippets_above_negative(real_sentiment):
    reward, held_out = real_sentiment
    movies = sorted((r for r in held_out if r.corpus == "movies"), key=lambda r: r.id)
    positive = [r.text for r in movies if r.mean >= 2.5]
    negative = [r.text for r in movies if r.mean <= -2.5]
    pairs = min(len(positive), len(negative))
    assert pairs >= 20
    up = compute_rewards(reward, [""] * pairs, positive[:pairs])
    down = compute_rewards(reward, [""] * pairs, negative[:pairs])
    ranked_right = sum(p > n for p, n in zip(up, down, strict=True))
    assert ranked_right >= 0.9 * pairs, f"{ranked_right} of {pairs} pairs ranked as people did"


@pytest.mark.slow
def test_real_sentiment_polarity_on_the_held_out_split_matches_its_manifest(real_sentiment):
    from rlhfkit import assets

    reward, held_out = real_sentiment
    scores = compute_rewards(reward, [""] * len(held_out), [r.text for r in held_out])
    rated = [(score, r.mean) for score, r in zip(scores, held_out, strict=True) if r.mean != 0]
    accuracy = sum((score > 0) == (mean > 0) for score, mean in rated) / len(rated)
    assert accuracy >= 0.75

    def must_not_embed(*args, **kwargs):
        raise AssertionError("the head is cached by now; nothing should be embedded")

    encoder = Path(assets.ensure("minilm"))
    _, manifest = sentiment.load_or_fit_head(must_not_embed, sentiment.encoder_identity(encoder))
    assert manifest["texts"]["test"] == len(held_out)
    # batches differ between fitting and scoring, so a score at ~0 may flip sign by rounding
    assert manifest["test"]["polarity_accuracy"] == pytest.approx(accuracy, abs=2 / len(rated))


def test_reasoning_gym_task_options_shape_the_questions_and_the_reward_ignores_them():
    from rlhfkit.data.builtin import load_builtin, parse_task_options

    assert parse_task_options("chain_sum:max_terms=2, max_digits=1,name=x", "data.prompts") == (
        "chain_sum",
        {"max_terms": 2, "max_digits": 1, "name": "x"},
    )
    rows = load_builtin("reasoning_gym:chain_sum:max_terms=2,max_digits=1", "test")
    for row in rows[:20]:  # "State the final answer ...: 5 - 9 =": two one-digit terms
        question = row["entry"]["question"].rsplit(":", 1)[1]
        assert len([t for t in question.replace("=", " ").split() if t.lstrip("-").isdigit()]) == 2
        assert all(len(t.lstrip("-")) == 1 for t in question.split() if t.lstrip("-").isdigit())
    verify = load_reward("reasoning_gym:chain_sum:max_terms=2,max_digits=1")
    entry = rows[0]["entry"]
    assert verify(
        [rows[0]["prompt"]] * 2,
        [f"<answer>{entry['answer']}</answer>", "<answer>x</answer>"],
        entry=[entry, entry],
    ) == [1.0, 0.0]


def test_reasoning_gym_splits_share_no_question():
    from rlhfkit.data.builtin import load_builtin

    # one-digit sums: 200 questions in all, which any seed repeats; and nearby seeds used to
    # draw the same items, so every held-out question was a training one
    spec = "reasoning_gym:chain_sum:max_terms=2,max_digits=1"
    splits = {
        s: [r["prompt"] for r in load_builtin(spec, s)] for s in ("train", "validation", "test")
    }
    assert all(len(set(rows)) == len(rows) > 10 for rows in splits.values())
    assert not set(splits["train"]) & set(splits["test"])
    assert not set(splits["train"]) & set(splits["validation"])
    assert not set(splits["validation"]) & set(splits["test"])


def test_reasoning_gym_bad_task_options_name_the_option():
    from rlhfkit.data.builtin import load_builtin

    with pytest.raises(ConfigError, match="max_termz"):
        load_builtin("reasoning_gym:chain_sum:max_termz=2", "test")
    with pytest.raises(ConfigError, match="not key=value"):
        load_builtin("reasoning_gym:chain_sum:max_terms", "test")
