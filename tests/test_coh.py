"""Chain of Hindsight: sequence builders, random past-token masking, config checks, and a tiny
model that learns to tell good from bad outputs by their phrase."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from itertools import pairwise

import pytest
import torch

from rlhfkit.config import FeedbackDataCfg
from rlhfkit.data import chain_of_hindsight as coh
from rlhfkit.data.feedback import Pair, Rating
from rlhfkit.errors import ConfigError, DataError

PHRASES = coh.Phrases(positive=("Good:",), negative=("Bad:",))


@pytest.fixture(scope="module")
def byte_tokenizer():
    """A byte-level BPE that holds every byte (so text round-trips exactly), EOS ``<|im_end|>``
    and the tests' ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from conftest import CHAT_TEMPLATE, SENTENCES

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|im_end|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(SENTENCES, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE
    )


def decode_parts(tokenizer, sequence: coh.CohSequence) -> tuple[str, str]:
    """(the whole sequence, only its loss-carrying tokens) as text."""
    kept = [t for t, m in zip(sequence.ids, sequence.loss_mask, strict=True) if m]
    return tokenizer.decode(sequence.ids), tokenizer.decode(kept)


GOOD = coh.Judged("The movie", " was a delight.", True)
BAD = coh.Judged("The movie", " was boring.", False)


# --- chains from feedback ------------------------------------------------------------------------


def test_pairs_give_both_orders_and_single_outputs():
    pair = Pair("The movie", " was a delight.", " was boring.", weight=2.0)
    chains = coh.chains_from_pairs([pair])
    assert [[(j.output, j.good) for j in c] for c in chains] == [
        [(" was a delight.", True), (" was boring.", False)],
        [(" was boring.", False), (" was a delight.", True)],
        [(" was a delight.", True)],
        [(" was boring.", False)],
    ]
    assert all(j.weight == 2.0 and j.prompt == "The movie" for c in chains for j in c)
    assert len(coh.chains_from_pairs([pair], chains=False)) == 2
    assert [len(c) for c in coh.chains_from_pairs([pair], singles=False)] == [2, 2]


def test_ratings_split_by_threshold_and_pair_good_with_bad_of_the_same_prompt():
    ratings = [
        Rating("p", "great", 2.0),
        Rating("p", "fine", 0.2),
        Rating("p", "awful", -3.0),
        Rating("q", "lovely", 1.0),
    ]
    judged = coh.judged_from_ratings(ratings, good_min=0.5, bad_max=-0.5)
    assert [(j.output, j.good) for j in judged] == [
        ("great", True),
        ("awful", False),
        ("lovely", True),
    ]  # "fine" is neither
    chains = coh.chains_from_judged(judged, random.Random(0))
    pairs = [tuple(j.output for j in c) for c in chains if len(c) == 2]
    assert pairs == [("great", "awful"), ("awful", "great")]  # "lovely" has no bad partner
    assert [c[0].output for c in chains if len(c) == 1] == ["great", "awful", "lovely"]
    with pytest.raises(ConfigError, match="good_min = -1 is below bad_max = 0"):
        coh.judged_from_ratings(ratings, good_min=-1, bad_max=0)


# --- tokens: where phrases go and which tokens carry loss ----------------------------------------


def test_plain_prompt_chain_puts_each_phrase_before_its_prompt_and_loss_on_outputs(byte_tokenizer):
    sequence = coh.encode_chain(
        byte_tokenizer, (GOOD, BAD), PHRASES, random.Random(0), chat=False, max_length=200
    )
    whole, trained = decode_parts(byte_tokenizer, sequence)
    assert whole == (
        "Good:\nThe movie was a delight.<|im_end|>Bad:\nThe movie was boring.<|im_end|>"
    )
    assert trained == " was a delight.<|im_end|> was boring.<|im_end|>"
    # the loss mask is two runs: each output and its EOS, nothing of the phrases or prompts
    mask = sequence.loss_mask
    assert sum(a != b for a, b in pairwise(mask)) == 3 and mask[-1] and not mask[0]

    reversed_order = coh.encode_chain(
        byte_tokenizer, (BAD, GOOD), PHRASES, random.Random(0), chat=False, max_length=200
    )
    assert decode_parts(byte_tokenizer, reversed_order)[0] == (
        "Bad:\nThe movie was boring.<|im_end|>Good:\nThe movie was a delight.<|im_end|>"
    )

    # a cut-off output (sampled up to max_new_tokens) did not end: no EOS follows it
    cut = coh.encode_chain(
        byte_tokenizer,
        (GOOD, replace(BAD, finished=False)),
        PHRASES,
        random.Random(0),
        chat=False,
        max_length=200,
    )
    assert decode_parts(byte_tokenizer, cut) == (
        "Good:\nThe movie was a delight.<|im_end|>Bad:\nThe movie was boring.",
        " was a delight.<|im_end|> was boring.",
    )


def test_chat_prompt_phrase_opens_the_assistant_turn(byte_tokenizer):
    sequence = coh.encode_chain(
        byte_tokenizer, (GOOD,), PHRASES, random.Random(0), chat=True, max_length=200
    )
    whole, trained = decode_parts(byte_tokenizer, sequence)
    assert whole == (
        "<|im_start|>user\nThe movie<|im_end|>\n<|im_start|>assistant\n"
        "Good:\n was a delight.<|im_end|>"
    )
    assert trained == " was a delight.<|im_end|>"


def test_segments_render_exactly_as_the_saved_conditioning_samples(byte_tokenizer, tiny_lm):
    """Training text == what the hf backend feeds the model when conditioning.json is applied."""
    from rlhfkit.generation.hf import HFBackend

    backend = HFBackend(tiny_lm[0], byte_tokenizer)
    for chat, template in ((False, "off"), (True, "on")):
        asked = coh.phrase_conditioning("Good:", chat)
        sampled = backend._encode([asked.apply("The movie")], template, asked.response_prefix)[0]
        trained = byte_tokenizer(
            coh.segment_context(byte_tokenizer, "The movie", "Good:", chat),
            add_special_tokens=False,
        )["input_ids"]
        assert sampled == trained
    assert coh.phrase_conditioning("Good:", False).instruction == "Good:\n{prompt}"
    assert coh.phrase_conditioning("Good:", True).response_prefix == "Good:\n"


def test_phrases_are_drawn_from_their_list_with_a_seeded_rng(byte_tokenizer):
    phrases = coh.Phrases(positive=("Good:", "Nice:", "Yes:"), negative=("Bad:", "Poor:"))

    def phrases_used(seed):
        rng = random.Random(seed)
        texts = [
            decode_parts(
                byte_tokenizer,
                coh.encode_chain(byte_tokenizer, (GOOD, BAD), phrases, rng, False, 200),
            )[0]
            for _ in range(20)
        ]
        return [(t.split("\n")[0], t.split("<|im_end|>")[1].split("\n")[0]) for t in texts]

    used = phrases_used(1)
    assert used == phrases_used(1)  # same seed, same phrases
    assert {good for good, _ in used} == {"Good:", "Nice:", "Yes:"}  # good outputs: positive only
    assert {bad for _, bad in used} == {"Bad:", "Poor:"}


def test_too_long_chain_drops_its_first_segment_then_cuts_the_prompt(byte_tokenizer):
    full = coh.encode_chain(byte_tokenizer, (GOOD, BAD), PHRASES, random.Random(0), False, 200)
    second = coh.encode_chain(byte_tokenizer, (BAD,), PHRASES, random.Random(0), False, 200)
    dropped = coh.encode_chain(
        byte_tokenizer, (GOOD, BAD), PHRASES, random.Random(0), False, len(full.ids) - 1
    )
    assert dropped.truncated and dropped.ids == second.ids and not full.truncated
    cut = coh.encode_chain(
        byte_tokenizer, (BAD,), PHRASES, random.Random(0), False, len(second.ids) - 2
    )
    assert cut.ids == second.ids[2:] and cut.loss_mask == second.loss_mask[2:]


# --- critiques -----------------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_critique_text_is_the_phrase(tmp_path, byte_tokenizer):
    data = write_jsonl(
        tmp_path / "critiques.jsonl",
        [
            {"prompt": "The movie", "completion": " was boring.", "critique": "Too negative."},
            {"prompt": "The movie", "completion": " was a delight.", "critique": " Warm, upbeat. "},
        ],
    )
    judged = coh.load_critiques(FeedbackDataCfg(path=str(data), eval_fraction=0.0), "train")
    assert [(j.critique, j.good) for j in judged] == [
        ("Too negative.", None),
        ("Warm, upbeat.", None),
    ]
    chains = coh.chains_from_judged(judged, random.Random(0))
    assert len(chains) == 4  # two singles, one pair in both orders
    sequence = coh.encode_chain(
        byte_tokenizer, chains[2], coh.Phrases(critiques=True), random.Random(0), False, 200
    )
    assert decode_parts(byte_tokenizer, sequence)[0] == (
        "Too negative.\nThe movie was boring.<|im_end|>"
        "Warm, upbeat.\nThe movie was a delight.<|im_end|>"
    )


def test_critique_row_without_critique_text_names_the_row(tmp_path):
    data = write_jsonl(
        tmp_path / "critiques.jsonl",
        [
            {"prompt": "a", "completion": "b", "critique": "Fine."},
            {"prompt": "a", "completion": "c", "critique": "  "},
            {"prompt": "a", "completion": "d"},
        ],
    )
    cfg = FeedbackDataCfg(path=str(data), eval_fraction=0.0)
    with pytest.raises(
        DataError,
        match=r"critiques.jsonl: row 2: an empty 'critique'.*"
        r"give each row its critique text",
    ):
        coh.load_critiques(cfg, "train")
    with pytest.warns(UserWarning, match="1 an empty 'critique' \\(row 2\\), 1 no 'critique'"):
        kept = coh.load_critiques(
            FeedbackDataCfg(path=str(data), eval_fraction=0.0, on_bad_row="skip"), "train"
        )
    assert [j.output for j in kept] == ["b"]
    with pytest.raises(DataError, match="built-in set holds ratings, not critiques"):
        coh.load_critiques(FeedbackDataCfg(path="vader:movies"), "train")


def test_config_checks_name_the_fix(tmp_path):
    from rlhfkit import config_io
    from rlhfkit.train.hindsight.coh import Config

    def problems(*args):
        with pytest.raises(ConfigError) as error:
            config_io.load(Config, list(args), command="hindsight-coh")
        return str(error.value)

    assert "set --coh.data critiques" in problems("--coh.phrases", "critique")
    assert "set --coh.phrases critique" in problems("--coh.data", "critiques")
    assert "coh.mask_fraction = 1.0" in problems("--coh.mask_fraction", "1")
    assert "--method hir" in problems("--method", "hir")
    assert "both off" in problems("--coh.chains", "false", "--coh.singles", "false")


# --- random masking of past tokens ---------------------------------------------------------------


def test_sample_hidden_never_hides_the_first_token_or_padding():
    attention_mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    generator = torch.Generator().manual_seed(0)
    assert not coh.sample_hidden(attention_mask, 0.0, generator).any()
    hidden = coh.sample_hidden(attention_mask, 0.999, generator)
    assert hidden.tolist() == [[False] + [True] * 7, [False] + [True] * 4 + [False] * 3]
    many = coh.sample_hidden(torch.ones(200, 50, dtype=torch.long), 0.1, generator)
    assert 0.08 < many.float().mean() < 0.12
    with pytest.raises(ConfigError, match="mask fraction 1"):
        coh.sample_hidden(attention_mask, 1.0)


def test_hide_removes_exactly_the_chosen_tokens_and_keeps_positions():
    batch = coh.collate(
        [
            coh.CohSequence([5, 6, 7, 8], [False, False, True, True]),
            coh.CohSequence([5, 6], [False, True]),
        ],
        pad_id=0,
    )
    hidden = torch.tensor([[False, True, False, False], [False, False, False, False]])
    attention_mask, position_ids = coh.hide(batch, hidden)
    assert attention_mask.tolist() == [[1, 0, 1, 1], [1, 1, 0, 0]]
    assert position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert batch.loss_mask.tolist() == [[False, False, True, True], [False, True, False, False]]


def test_a_hidden_token_is_still_predicted_but_unseen_by_later_positions(tiny_lm):
    from rlhfkit.data import sequences

    model, _ = tiny_lm
    batch = coh.collate([coh.CohSequence([5, 9, 14, 20, 31, 7], [False] + [True] * 5)], pad_id=0)
    plain, mask = coh.output_logprobs(model, batch)  # (1, 5): position t predicts token t + 1
    reference, _ = sequences.completion_logprobs(model, batch)
    assert torch.allclose(plain, reference, atol=1e-5)  # same as the shared log-prob path
    hidden = torch.tensor([[False, False, True, False, False, False]])  # hide token 14
    masked, masked_mask = coh.output_logprobs(model, batch, hidden)
    assert masked_mask.equal(mask)  # the hidden token stays a target
    assert torch.allclose(masked[0, :2], plain[0, :2], atol=1e-6)  # tokens up to 14: unchanged
    assert (masked[0, 2:] - plain[0, 2:]).abs().min() > 1e-6  # later ones no longer see it


# --- training ------------------------------------------------------------------------------------


def test_cli_help_lists_the_coh_options(capsys):
    from rlhfkit import commands

    assert commands.dispatch(["hindsight", "--method", "coh", "--help"]) == 0
    shown = capsys.readouterr().out
    assert "--coh.mask_fraction" in shown and "--coh.phrases {lists,critique}" in shown


@pytest.fixture
def coh_model_dir(tmp_path, byte_tokenizer):
    from conftest import build_tiny_llama

    path = tmp_path / "tiny-byte-llama"
    build_tiny_llama(len(byte_tokenizer), byte_tokenizer.eos_token_id).save_pretrained(path)
    byte_tokenizer.save_pretrained(path)
    return path


def test_tiny_model_learns_which_output_each_phrase_asks_for(tmp_path, coh_model_dir):
    from rlhfkit.conditioning import load_conditioning
    from rlhfkit.config import LogCfg, ModelCfg, OptimCfg, RunCfg
    from rlhfkit.models import load_causal_lm
    from rlhfkit.train.hindsight.coh import CohCfg, Config, phrase_margins, train
    from rlhfkit.train.offline import TrainCfg

    openings = ["The movie", "The food", "She said", "The sea", "A cat", "The poem"]
    rows = [
        {"prompt": p, "chosen": " was a delight.", "rejected": " was slow and boring."}
        for p in openings
    ]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    cfg = Config(
        model=ModelCfg(path=str(coh_model_dir), device="cpu"),
        data=FeedbackDataCfg(path=str(data), eval_path=str(data)),
        train=TrainCfg(max_steps=60, batch_size=8, chat_template="off", max_length=128),
        optim=OptimCfg(lr=1e-2, warmup_steps=0),
        log=LogCfg(every=1, tensorboard=False),
        run=RunCfg(output_dir=str(tmp_path / "run"), checkpoint_every=0, seed=1),
        coh=CohCfg(positive=("Good:",), negative=("Bad:",), mask_fraction=0.05, sft_weight=0.1),
    )
    result = train(cfg)
    run, summary = result.run, result.summary

    losses = [row["loss"] for row in run.metrics() if "loss" in row]
    assert losses[-1] < 0.05 * losses[0]
    assert summary["contrast_accuracy_before"] < 1.0 and summary["contrast_accuracy_after"] == 1.0
    assert summary["contrast_margin_after"] > summary["contrast_margin_before"] + 5
    assert all(row["hidden_tokens"] >= 0 for row in run.metrics() if "loss" in row)

    # asked with the positive phrase, the trained model prefers the good output
    conditioning = load_conditioning(summary["model"])
    assert conditioning.instruction == "Good:\n{prompt}" and conditioning.method == "coh"
    model, tokenizer = load_causal_lm(ModelCfg(path=summary["model"], device="cpu"))
    good = coh.Judged("The movie", " was a delight.", True)
    bad = coh.Judged("The movie", " was slow and boring.", True)  # both after "Good:"
    batch = coh.collate(
        [
            coh.encode_chain(
                tokenizer, (j,), coh.Phrases(("Good:",), ("Bad:",)), random.Random(0), False, 128
            )
            for j in (good, bad)
        ],
        tokenizer.eos_token_id,
    )
    with torch.no_grad():
        logprobs, mask = coh.output_logprobs(model, batch)
    good_logprob, bad_logprob = (logprobs * mask).sum(dim=1).tolist()
    assert good_logprob > bad_logprob + 5
    assert phrase_margins(model, tokenizer, [(good, bad)], "Good:", "Bad:", False, 128, 4)[0] > 0


def short_run(tmp_path, model_dir, path, **coh_options):
    from rlhfkit.config import LogCfg, ModelCfg, RunCfg
    from rlhfkit.train.hindsight.coh import CohCfg, Config, train
    from rlhfkit.train.offline import TrainCfg

    cfg = Config(
        model=ModelCfg(path=str(model_dir), device="cpu"),
        data=FeedbackDataCfg(path=str(path), eval_path=str(path)),
        train=TrainCfg(max_steps=2, batch_size=4, chat_template="on", max_length=128),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(tmp_path / "run"), checkpoint_every=0, overwrite=True),
        coh=CohCfg(**coh_options),
    )
    return train(cfg).summary


def test_single_outputs_only_still_evaluate_the_phrase_contrast(tmp_path, coh_model_dir):
    from rlhfkit.conditioning import load_conditioning

    data = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"prompt": "The movie", "chosen": " was a delight.", "rejected": " was boring."}],
    )
    summary = short_run(tmp_path, coh_model_dir, data, chains=False, sft_weight=0.5)
    assert summary["sequences"] == 2 and "contrast_accuracy_after" in summary
    assert load_conditioning(summary["model"]).response_prefix == "A good response:\n"  # chat


def test_critique_run_trains_on_critique_phrases(tmp_path, coh_model_dir):
    data = write_jsonl(
        tmp_path / "critiques.jsonl",
        [
            {"prompt": "The movie", "completion": " was boring.", "critique": "Too negative."},
            {"prompt": "The movie", "completion": " was a delight.", "critique": "Warm, upbeat."},
        ],
    )
    summary = short_run(
        tmp_path,
        coh_model_dir,
        data,
        data="critiques",
        phrases="critique",
        positive=("Warm, upbeat.",),
    )
    assert summary["sequences"] == 4 and summary["nll_after"] > 0
    assert "contrast_accuracy_after" not in summary  # critiques say neither good nor bad
    assert summary["asked_with"] == "Warm, upbeat."
