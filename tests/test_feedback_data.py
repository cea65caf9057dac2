"""Human feedback data: formats, column mapping, bad rows, splits, pairs from ratings, weights,
and the rater-agreement ceiling on hand-computed ratings."""

from __future__ import annotations

import csv
import json
import random
import warnings

import pytest

from rlhfkit.config import FeedbackDataCfg
from rlhfkit.config_io import validate
from rlhfkit.data.agreement import agreement_ceiling, rater_agreement, single_rater_accuracy
from rlhfkit.data.feedback import (
    Demonstration,
    Labeled,
    Pair,
    Rating,
    join_text,
    load_demonstrations,
    load_labeled,
    load_pairs,
    load_ratings,
    pairs_from_ratings,
)
from rlhfkit.data.vader import RatedText
from rlhfkit.errors import ConfigError, DataError

PAIRS = [
    {"prompt": "Say hi", "chosen": "Hello!", "rejected": "Go away.", "id": "a", "margin": 1.5},
    {"prompt": "2 + 2?", "chosen": "4", "rejected": "5", "id": "b", "margin": 0.0},
]
EXPECTED_PAIRS = [
    Pair("Say hi", "Hello!", "Go away.", 1.5, meta={"id": "a"}),
    Pair("2 + 2?", "4", "5", 0.0, meta={"id": "b"}),
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def config(path, **overrides) -> FeedbackDataCfg:
    """All rows train (eval_fraction 0) unless a test asks for a split."""
    return FeedbackDataCfg(path=str(path), **{"eval_fraction": 0.0, **overrides})


# --- formats and columns -------------------------------------------------------------------------


def write_json(path, rows):
    path.write_text(json.dumps(rows))
    return path


def write_csv(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_saved_dataset(path, rows):
    from datasets import Dataset

    Dataset.from_list(rows).save_to_disk(str(path))
    return path


@pytest.mark.parametrize(
    "name, writer",
    [
        ("pairs.jsonl", write_jsonl),
        ("pairs.json", write_json),
        ("pairs.csv", write_csv),
        ("pairs.parquet", write_parquet),
        ("saved", write_saved_dataset),
    ],
)
def test_every_format_gives_the_same_pairs(tmp_path, name, writer):
    path = writer(tmp_path / name, PAIRS)
    assert load_pairs(config(path), "train") == EXPECTED_PAIRS


def test_saved_dataset_dict_uses_its_own_splits(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"prompt": "p", "completion": f"text {i}", "rating": float(i)} for i in range(6)]
    DatasetDict(
        {"train": Dataset.from_list(rows[:4]), "validation": Dataset.from_list(rows[4:])}
    ).save_to_disk(str(tmp_path / "d"))
    cfg = config(tmp_path / "d", eval_fraction=0.5)  # ignored: the dataset has a validation split
    assert [r.completion for r in load_ratings(cfg, "train")] == [f"text {i}" for i in range(4)]
    assert [r.completion for r in load_ratings(cfg, "eval")] == ["text 4", "text 5"]


def test_column_mapping_and_data_without_prompts(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"q": "Hi?", "good": "Hey", "bad": "No", "w": "2"}])
    cfg = config(
        path, prompt_field="q", chosen_field="good", rejected_field="bad", weight_field="w"
    )
    assert load_pairs(cfg, "train") == [Pair("Hi?", "Hey", "No", weight=2.0)]
    no_prompt = config(path, prompt_field="", chosen_field="good", rejected_field="bad")
    assert load_pairs(no_prompt, "train") == [Pair("", "Hey", "No", meta={"q": "Hi?", "w": "2"})]


def test_demonstrations_from_prompt_completion_and_chat_rows(tmp_path):
    chat = [
        {"role": "system", "content": "Be brief.", "name": "sys"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": "Say yes", "completion": "Yes", "id": 1}, {"messages": chat, "id": 2}],
    )
    assert load_demonstrations(config(path), "train") == [
        Demonstration("Say yes", "Yes", meta={"id": 1}),
        Demonstration(
            ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}),
            "Hello.",
            meta={"id": 2},
        ),
    ]


def test_a_file_without_the_kinds_columns_names_the_options(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "text": "t"}])
    with pytest.raises(
        DataError,
        match=r"x.jsonl: row 1 fits no accepted shape \(columns: prompt, text\); accepted: "
        r"preference \(prompt, chosen, rejected\); implicit-prompt preference \(chosen, "
        r"rejected\) \(plain or conversational\); ratings \(prompt, completion, rating\); "
        r"rename the columns or map them with --data.chosen_field/--data.rating_field$",
    ):
        load_pairs(config(path), "train")


# --- bad rows ------------------------------------------------------------------------------------


GOOD = {
    "pairs": {"prompt": "p", "chosen": "a", "rejected": "b"},
    "ratings": {"prompt": "p", "completion": "c", "rating": 1},
    "labels": {"prompt": "p", "completion": "c", "label": True},
    "demos": {"prompt": "p", "completion": "c"},
}
LOADERS = {
    "pairs": load_pairs,
    "ratings": load_ratings,
    "labels": load_labeled,
    "demos": load_demonstrations,
}
SKIP = r", or pass --data.on_bad_row skip to drop such rows"


@pytest.mark.parametrize(
    "kind, row, message",
    [
        (
            "pairs",
            {"prompt": "p", "rejected": "b", "chosen_text": "a"},
            r"fits no accepted shape \(columns: prompt, rejected, chosen_text\); accepted: "
            r"preference \(prompt, chosen, rejected\); implicit-prompt preference .*; rename the "
            r"columns or map them with --data.prompt_field/--data.chosen_field/--data.rejected_field",
        ),
        ("pairs", {"prompt": "p", "chosen": " ", "rejected": "b"}, r"empty 'chosen'; fill it in"),
        ("pairs", {"prompt": "p", "chosen": "a", "rejected": None}, r"empty 'rejected'"),
        (
            "pairs",
            {"prompt": "p", "chosen": "a", "rejected": "a"},
            r"chosen equals rejected; a pair needs two different completions",
        ),
        ("pairs", {"prompt": 3, "chosen": "a", "rejected": "b"}, r"'prompt' not text \(a int\)"),
        (
            "pairs",
            {"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"},
            r"'margin' not a number \('big'\); give a finite number",
        ),
        (
            "pairs",
            {"prompt": "p", "chosen": "a", "rejected": "b", "weight": -1},
            r"negative 'weight' \(-1\); give a weight >= 0",
        ),
        (
            "ratings",
            {"prompt": "p", "completion": "c", "rating": "good"},
            r"'rating' not a number \('good'\); give a finite number",
        ),
        ("ratings", {"prompt": "p", "completion": "c", "rating": "nan"}, r"'rating' not a number"),
        ("ratings", {"prompt": "p", "completion": "", "rating": 1}, r"empty 'completion'"),
        (
            "labels",
            {"prompt": "p", "completion": "c", "label": "maybe"},
            r"'label' not a boolean \('maybe'\); use true/false, 1/0, yes/no or good/bad",
        ),
        ("labels", {"prompt": "p", "completion": "c", "label": 2}, r"'label' not a boolean \(2\)"),
        (
            "demos",
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "?"}]},
            r"'messages' not ending with an assistant turn \(last role 'user'\); end the chat with "
            r"the assistant's reply",
        ),
        ("demos", {"messages": [{"role": "assistant", "content": "Hi"}]}, r"malformed 'messages'"),
        (
            "demos",
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]},
            r"empty reply in 'messages'",
        ),
    ],
)
def test_bad_rows_name_file_row_column_and_fix(tmp_path, kind, row, message):
    path = write_jsonl(tmp_path / f"{kind}.jsonl", [GOOD[kind], row])
    with pytest.raises(DataError, match=rf"{kind}.jsonl: row 2: {message}.*{SKIP}$"):
        LOADERS[kind](config(path), "train")


def test_skip_warns_once_with_counts_per_reason(tmp_path):
    good = GOOD["pairs"]
    rows = [
        good,
        {**good, "chosen": ""},
        {**good, "chosen": "x"},
        {**good, "chosen": ""},
        {**good, "rejected": "a"},
        {"prompt": "p", "rejected": "b"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows + [{**good, "chosen": None}] * 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = load_pairs(config(path, on_bad_row="skip"), "train")
    assert len(pairs) == 2
    assert [str(w.message) for w in caught] == [
        f"skipped 8 of 10 train rows of {path}: 6 empty 'chosen' (rows 2, 4, 7, 8, 9, ...), "
        "1 chosen equals rejected (row 5), 1 fits no accepted shape (row 6)"
    ]


def test_no_usable_rows_is_an_error(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "", "rejected": "b"}])
    with (
        pytest.raises(DataError, match=r"bad.jsonl: no usable train rows; skipped 1 of 1"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("error")  # the error says it all: no warning besides
        load_pairs(config(bad, on_bad_row="skip"), "train")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty.jsonl: no train rows"):
        load_pairs(config(empty), "train")


# --- splits --------------------------------------------------------------------------------------


def test_hash_split_is_stable_disjoint_and_about_the_fraction(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(400)]
    shuffled = random.Random(0).sample(rows, len(rows))
    cfg = config(write_jsonl(tmp_path / "a.jsonl", rows), eval_fraction=0.25)
    cfg_shuffled = config(write_jsonl(tmp_path / "b.jsonl", shuffled), eval_fraction=0.25)
    train, held_out = (load_demonstrations(cfg, split) for split in ("train", "eval"))
    assert {d.prompt for d in load_demonstrations(cfg_shuffled, "eval")} == {
        d.prompt for d in held_out
    }  # by content, not position
    assert len(train) + len(held_out) == 400
    assert not {d.prompt for d in train} & {d.prompt for d in held_out}
    assert 70 <= len(held_out) <= 130


def test_every_rating_of_a_text_lands_in_one_split(tmp_path):
    rows = [
        {"prompt": "p", "completion": f"text {i}", "rating": r, "annotator": who}
        for i in range(40)
        for r, who in ((1, "ann"), (3, "bob"))
    ]
    cfg = config(write_jsonl(tmp_path / "r.jsonl", rows), eval_fraction=0.5)
    for split in ("train", "eval"):
        assert all(r.ratings == (1.0, 3.0) for r in load_ratings(cfg, split))


def test_eval_path_and_splits_a_user_file_does_not_have(tmp_path):
    cfg = config(
        write_jsonl(tmp_path / "train.jsonl", PAIRS),
        eval_fraction=0.9,
        eval_path=str(write_jsonl(tmp_path / "held.jsonl", PAIRS[:1])),
    )
    assert load_pairs(cfg, "train") == EXPECTED_PAIRS  # all of path: eval_fraction is not used
    assert load_pairs(cfg, "eval") == EXPECTED_PAIRS[:1]
    with pytest.raises(ConfigError, match=r"split 'test': only built-in sets have one"):
        load_pairs(cfg, "test")


def test_max_rows_caps_the_training_rows_only(tmp_path):
    cfg = config(
        write_jsonl(tmp_path / "p.jsonl", PAIRS), max_rows=1, eval_path=str(tmp_path / "p.jsonl")
    )
    assert len(load_pairs(cfg, "train")) == 1
    assert len(load_pairs(cfg, "eval")) == 2


# --- ratings, pairs from ratings, labels ---------------------------------------------------------


def test_several_raters_of_one_text_merge_into_their_mean(tmp_path):
    rows = [
        {"prompt": "p", "completion": "c", "rating": 1, "annotator": "ann", "t": 1, "src": "x"},
        {"prompt": "p", "completion": "d", "rating": 2, "annotator": "ann", "t": 2, "src": "x"},
        {"prompt": "p", "completion": "c", "rating": "4", "annotator": "bob", "t": 3, "src": "x"},
    ]
    ratings = load_ratings(config(write_jsonl(tmp_path / "r.jsonl", rows)), "train")
    assert ratings == [
        Rating(
            "p",
            "c",
            2.5,
            (1.0, 4.0),
            "",
            meta={"t": (1, 3), "src": "x", "annotators": ("ann", "bob")},
        ),
        Rating("p", "d", 2.0, (2.0,), "ann", meta={"t": 2, "src": "x"}),
    ]


def rated(prompt: str, *scores: float) -> list[Rating]:
    return [Rating(prompt, f"{prompt} text {i}", s, (s,)) for i, s in enumerate(scores)]


def test_pairs_from_ratings_keep_order_gap_and_prompt():
    ratings = rated("p", 0, 1, 2, 3, 3, 4) + rated("q", -2, 2)
    by_text = {r.completion: r for r in ratings}
    pairs = pairs_from_ratings(ratings, min_gap=1.0, pairs_per_text=3, seed=0)
    assert pairs == pairs_from_ratings(ratings, min_gap=1.0, pairs_per_text=3, seed=0)
    unordered = [frozenset((p.chosen, p.rejected)) for p in pairs]
    assert len(unordered) == len(set(unordered))
    for pair in pairs:
        chosen, rejected = by_text[pair.chosen], by_text[pair.rejected]
        assert chosen.prompt == rejected.prompt == pair.prompt
        assert pair.margin == chosen.rating - rejected.rating >= 1.0
        assert pair.meta["chosen_ratings"] == chosen.ratings
        assert pair.meta["rejected_ratings"] == rejected.ratings
    assert Pair("q", "q text 1", "q text 0", 4.0, meta=pairs[-1].meta) == pairs[-1]
    every_pair = pairs_from_ratings(ratings, min_gap=0.0, pairs_per_text=5, seed=1)
    assert len(every_pair) == 14 + 1  # all 15 + 1 pairs but the 3-3 tie
    assert {
        frozenset((p.chosen, p.rejected)) for p in pairs_from_ratings(ratings, 2.5, 5, seed=2)
    } == {frozenset(("p text 0", t)) for t in ("p text 3", "p text 4", "p text 5")} | {
        frozenset(("p text 1", "p text 5")),
        frozenset(("q text 0", "q text 1")),
    }


def test_pairs_from_a_ratings_file_and_too_large_a_gap(tmp_path):
    rows = [{"prompt": "p", "completion": c, "rating": r} for c, r in (("bad", -1), ("ok", 2))]
    cfg = config(write_jsonl(tmp_path / "r.jsonl", rows))
    assert [(p.chosen, p.rejected) for p in load_pairs(cfg, "train")] == [("ok", "bad")]
    with pytest.raises(DataError, match=r"ratings at least 4 apart.*lower --data.min_gap"):
        load_pairs(config(tmp_path / "r.jsonl", min_gap=4.0), "train")


def test_labels_from_label_files_pairs_and_ratings(tmp_path):
    labels = [
        {"prompt": "p", "completion": f"c{i}", "label": value}
        for i, value in enumerate([True, 0, "Yes", "bad", "GOOD ", 1.0, "false"])
    ]
    path = write_jsonl(tmp_path / "l.jsonl", labels)
    assert [row.desirable for row in load_labeled(config(path), "train")] == [
        True,
        False,
        True,
        False,
        True,
        True,
        False,
    ]
    pairs = load_labeled(config(write_jsonl(tmp_path / "p.jsonl", PAIRS[:1])), "train")
    assert pairs == [
        Labeled("Say hi", "Hello!", True, meta={"id": "a"}),
        Labeled("Say hi", "Go away.", False, meta={"id": "a"}),
    ]
    ratings = [{"prompt": "", "completion": f"t{r}", "rating": r} for r in (-2, -0.4, 0, 0.5, 3)]
    path = write_jsonl(tmp_path / "r.jsonl", ratings)
    with pytest.warns(
        UserWarning,
        match=r"left out 2 of 5 train texts of .*r.jsonl rated near "
        r"neutral \(\|rating\| < 0.5\)",
    ):
        labeled = load_labeled(config(path), "train")
    assert [(row.completion, row.desirable) for row in labeled] == [
        ("t-2", False),
        ("t0.5", True),
        ("t3", True),
    ]
    uncentred = write_jsonl(
        tmp_path / "u.jsonl",
        [
            {"completion": "a", "rating": 2, "prompt": ""},
            {"completion": "b", "rating": 5, "prompt": ""},
        ],
    )
    with pytest.raises(DataError, match=r"give only desirable labels.*centred on 0"):
        load_labeled(config(uncentred), "train")


def test_inverse_frequency_balance(tmp_path):
    labels = [
        {"prompt": "p", "completion": f"c{i}", "label": i < 3, "weight": w}
        for i, w in enumerate([1, 1, 2, 1])
    ]
    path = write_jsonl(tmp_path / "l.jsonl", labels)
    cfg = config(path, balance="inverse-frequency")
    # N = 4 rows, K = 2 classes: each class totals 2. Desirable own weights 1, 1, 2 (sum 4).
    assert [row.weight for row in load_labeled(cfg, "train")] == [0.5, 0.5, 1.0, 2.0]
    assert [row.weight for row in load_labeled(config(path), "train")] == [1, 1, 2, 1]
    ratings = [{"prompt": "", "completion": f"t{r}", "rating": r} for r in (0.5, 1.4, -0.5, -3)]
    cfg = config(write_jsonl(tmp_path / "r.jsonl", ratings), balance="inverse-frequency")
    # buckets (rounded half up): 1, 1, 0, -3 -> weights 4 / 3 / count
    assert [r.weight for r in load_ratings(cfg, "train")] == pytest.approx(
        [2 / 3, 2 / 3, 4 / 3, 4 / 3]
    )


# --- built-in sets (load_vader faked: the real data are not in the test cache) ------------------


def fake_vader(calls):
    texts = [
        RatedText("movies", str(i), f"text {i}", mean, 1.0, (mean - 1, mean + 1))
        for i, mean in enumerate([-3.0, -1.0, 0.2, 2.0, 3.5])
    ]

    def load_vader(corpora, split=None):
        calls.append((tuple(corpora), split))
        return texts

    return load_vader


def test_builtin_ratings_pairs_and_splits(monkeypatch):
    calls = []
    monkeypatch.setattr("rlhfkit.data.vader.load_vader", fake_vader(calls))
    cfg = FeedbackDataCfg(path="vader:movies", min_gap=2.0, pairs_per_text=4)
    ratings = load_ratings(cfg, "eval")
    assert ratings[0] == Rating("", "text 0", -3.0, (-4.0, -2.0), meta={"id": "movies:0"})
    pairs = load_pairs(cfg, "test", seed=3)
    assert pairs and all(p.meta["chosen_rating"] - p.meta["rejected_rating"] >= 2 for p in pairs)
    assert load_demonstrations(cfg, "train")[3] == Demonstration(
        "", "text 3", meta={"id": "movies:3", "rating": 2.0}
    )
    assert calls == [(("movies",), "validation"), (("movies",), "test"), (("movies",), "train")]


# --- text joining and agreement ------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt, completion, text",
    [
        ("", "Just a text.", "Just a text."),
        ("The film was", " a delight.", "The film was a delight."),
        ("Q: 2 + 2?\n", "4", "Q: 2 + 2?\n4"),
        ("2 + 2?", "4", "2 + 2?\n4"),
    ],
)
def test_join_text(prompt, completion, text):
    assert join_text(prompt, completion) == text


def test_agreement_on_hand_computed_ratings():
    pairs = [
        Pair("", "a", "b", meta={"chosen_ratings": (2, 1), "rejected_ratings": (1, 0)}),
        Pair("", "c", "d", meta={"chosen_ratings": (1,), "rejected_ratings": (0, 2)}),
    ]
    # p1: (2>1, 2>0, 1=1, 1>0) -> 3.5 / 4 = 0.875; p2: (1>0, 1<2) -> 0.5
    assert single_rater_accuracy(pairs) == pytest.approx((0.875 + 0.5) / 2)
    assert rater_agreement(pairs) == pytest.approx((0.875**2 + 0.125**2 + 0.5) / 2)
    assert agreement_ceiling(pairs) == pytest.approx((0.6875, 0.640625, 2))
    with pytest.raises(DataError, match=r"pair 0 has no individual ratings"):
        single_rater_accuracy([Pair("", "a", "b")])


# --- config --------------------------------------------------------------------------------------


def test_config_checks_the_sources(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "plain_dir").mkdir()
    pairs = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    assert validate(FeedbackDataCfg(path=str(pairs), eval_path="vader:nyt")) == []
    problems = {
        "vader:movie": "path = 'vader:movie': is not a built-in set; did you mean 'vader:movies'?",
        "vadr:tweets": "is neither a file nor a built-in set; did you mean 'vader:tweets'?",
        str(tmp_path / "notes.txt"): "is not a .jsonl, .json, .csv or .parquet file",
        str(tmp_path / "plain_dir"): "is a directory but not a dataset saved by datasets'",
    }
    for path, message in problems.items():
        [problem] = validate(FeedbackDataCfg(path=path))
        assert message in problem
    [problem] = validate(FeedbackDataCfg(eval_path=str(tmp_path / "missing.jsonl")))
    assert problem.startswith("eval_path = ") and "check the path" in problem


@pytest.mark.slow
def test_real_vader_movies_pairs_and_rater_ceiling():
    pairs = load_pairs(FeedbackDataCfg(path="vader:movies", min_gap=2.0), "test")
    assert len(pairs) > 100
    assert 0.6 < single_rater_accuracy(pairs) < 1
