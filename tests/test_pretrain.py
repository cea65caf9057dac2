"""rlhfkit pretrain: reading raw text, packing, MLM masking, and tiny causal / masked runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import SENTENCES
from rlhfkit.config import LogCfg, ModelCfg, OptimCfg, RunCfg
from rlhfkit.data import raw_text
from rlhfkit.data.raw_text import Block
from rlhfkit.errors import ConfigError, DataError
from rlhfkit.train import offline, pretrain

REPO = Path(__file__).parent.parent

# --- packing ---------------------------------------------------------------------------------------


def test_packing_keeps_every_token_in_order_and_the_boundaries():
    documents = [[1, 1, 1, 1, 9], [2, 2, 9], [3, 3, 3, 3, 3, 3, 9], [4, 9]]
    blocks = raw_text.pack(documents, block_size=4)
    assert blocks == [
        Block((1, 1, 1, 1), (4,)),
        Block((9, 2, 2, 9), (1, 3)),  # document 1 ends here, document 2 starts whole
        Block((3, 3, 3, 3), (4,)),
        Block((3, 3, 9, 4), (3, 1)),  # document 3 continues from the block before
        Block((9,), (1,)),  # the rest: a short last block, not dropped
    ]
    assert [t for b in blocks for t in b.ids] == [t for d in documents for t in d]
    assert raw_text.summary(documents, blocks) == {
        "documents": 4,
        "tokens": 17,
        "blocks": 5,
        "continued_pieces": 3,
    }
    assert [raw_text.predicted_tokens(b) for b in blocks] == [3, 2, 3, 2, 0]


def test_pieces_run_as_separate_rows_so_attention_stays_in_a_document():
    ids, mask = raw_text.piece_rows([Block((9, 2, 2, 9), (1, 3)), Block((5, 6), (2,))], pad_id=0)
    assert ids.tolist() == [[9, 0, 0], [2, 2, 9], [5, 6, 0]]
    assert mask.tolist() == [[1, 0, 0], [1, 1, 1], [1, 1, 0]]


def test_documents_end_in_one_boundary_token(tiny_lm):
    _, tokenizer = tiny_lm
    eos = tokenizer.eos_token_id
    tokens = raw_text.tokenize_documents(tokenizer, ["The sea.", f"The sky.{tokenizer.eos_token}"])
    assert tokens[0] == [*tokenizer("The sea.")["input_ids"], eos]
    assert tokens[1][-1] == eos and tokens[1][-2] != eos  # already ended: not doubled


# --- reading raw text ------------------------------------------------------------------------------


def test_each_input_format_gives_its_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = "First paragraph,\nstill the first.\n\n\nSecond one.\n"
    (tmp_path / "a.txt").write_text(text)
    assert raw_text.read_file(tmp_path / "a.txt", "text", "paragraph") == [
        "First paragraph,\nstill the first.",
        "Second one.",
    ]
    assert raw_text.split_text(text, "line") == [
        "First paragraph,",
        "still the first.",
        "Second one.",
    ]
    assert raw_text.split_text(text, "file") == [text.strip()]
    rows = [{"text": "one", "id": 1}, {"text": "two", "id": 2}]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    assert raw_text.read_file(tmp_path / "b.jsonl", "text", "paragraph") == ["one", "two"]
    assert raw_text.read_file(tmp_path / "c.parquet", "text", "paragraph") == ["one", "two"]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.txt").write_text("Deeper.")
    (tmp_path / "notes.md").write_text("not read")
    assert raw_text.read_documents(str(tmp_path), "text", "paragraph", "train") == [
        "First paragraph,\nstill the first.",
        "Second one.",
        "one",
        "two",
        "one",
        "two",
        "Deeper.",
    ]


def test_bad_input_names_the_file_and_the_row(tmp_path):
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataError, match=r"empty\.txt: holds no text"):
        raw_text.read_file(tmp_path / "empty.txt", "text", "paragraph")
    (tmp_path / "rows.jsonl").write_text('{"text": "fine"}\n{"body": "where"}\n')
    with pytest.raises(
        DataError, match=r"rows\.jsonl: row 2 has no 'text' column \(columns: body\)"
    ):
        raw_text.read_file(tmp_path / "rows.jsonl", "text", "paragraph")
    (tmp_path / "blank.jsonl").write_text('{"text": "fine"}\n{"text": "  "}\n')
    with pytest.raises(DataError, match=r"blank\.jsonl: row 2: 'text' is empty"):
        raw_text.read_file(tmp_path / "blank.jsonl", "text", "paragraph")
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no .txt, .jsonl, .json, .parquet files"):
        raw_text.read_documents(str(tmp_path / "none"), "text", "paragraph", "train")
    from rlhfkit import config_io

    with pytest.raises(ConfigError, match="missing.txt.*no such file or directory"):
        config_io.load(pretrain.Config, ["--data", str(tmp_path / "missing.txt")])
    with pytest.raises(ConfigError, match="vader:films.*unknown corpus"):
        config_io.load(pretrain.Config, ["--data", "vader:films"])


def test_held_out_documents_are_fixed_by_their_text(tmp_path):
    texts = [f"document number {i}" for i in range(400)]
    (tmp_path / "docs.txt").write_text("\n".join(texts))
    kwargs = dict(eval_fraction=0.1, txt_documents="line")
    train = raw_text.load_documents(str(tmp_path / "docs.txt"), "train", **kwargs)
    held = raw_text.load_documents(str(tmp_path / "docs.txt"), "eval", **kwargs)
    assert sorted(train + held) == sorted(texts) and not set(train) & set(held)
    assert 20 <= len(held) <= 60
    (tmp_path / "docs.txt").write_text("\n".join(reversed(texts)))  # order does not matter
    assert set(raw_text.load_documents(str(tmp_path / "docs.txt"), "eval", **kwargs)) == set(held)


# --- masking ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer random BertModel (no MLM head, as MiniLM ships) with a word-piece vocabulary."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w.strip(".,?:!").lower() for s in SENTENCES for w in s.split()} - {""})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", ":", "!", *words]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    torch.manual_seed(0)
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    model = BertModel(BertConfig(vocab_size=len(vocab), max_position_embeddings=64, **size))
    path = tmp_path_factory.mktemp("tiny-bert-encoder")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_masking_chooses_15_percent_then_80_10_10(tiny_bert_dir):
    from transformers import AutoTokenizer

    from rlhfkit.models.masked_lm import mask, masker

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(10, len(tokenizer), (200, 100), generator=generator)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    attention = torch.ones_like(ids)
    attention[:50, 80:] = 0  # padding, never chosen
    inputs, labels = mask(masker(tokenizer, 0.15, seed=1), ids, attention)
    chosen = labels != -100
    eligible = attention.bool() & (ids != tokenizer.cls_token_id) & (ids != tokenizer.sep_token_id)
    assert not chosen[~eligible].any() and (inputs[~eligible] == ids[~eligible]).all()
    assert (labels[chosen] == ids[chosen]).all()
    count = int(chosen.sum())  # ~2,600 of 17,600 eligible: sd ~0.27 points of the rate
    assert abs(count / int(eligible.sum()) - 0.15) < 0.01
    as_mask = (inputs[chosen] == tokenizer.mask_token_id).float().mean()
    kept = (inputs[chosen] == ids[chosen]).float().mean()  # 10%, plus random draws of itself
    assert abs(float(as_mask) - 0.8) < 0.025
    assert abs(float(kept) - 0.1) < 0.02
    assert abs(1 - float(as_mask) - float(kept) - 0.1) < 0.02  # replaced by another token


# --- runs ------------------------------------------------------------------------------------------

DOCUMENTS = [f"{s} {t}" for s in SENTENCES for t in SENTENCES[:3]]


def config(tmp_path, model_dir, steps=8, **train) -> pretrain.Config:
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCUMENTS))
    return pretrain.Config(
        model=ModelCfg(path=str(model_dir), device="cpu"),
        data=pretrain.TextDataCfg(path=str(data), eval_path=str(data)),
        train=offline.TrainCfg(
            **{"max_steps": steps, "batch_size": 4, "max_length": 24, "eval_every": 0, **train}
        ),
        optim=OptimCfg(lr=1e-2, warmup_steps=0),
        log=LogCfg(tensorboard=False, progress=False),
        run=RunCfg(output_dir=str(tmp_path / "run"), checkpoint_every=0),
    )


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_resume_matches_an_uninterrupted_run(
    kind, tmp_path, tiny_model_dir, tiny_bert_dir, monkeypatch
):
    model_dir = tiny_model_dir if kind == "causal" else tiny_bert_dir
    base = config(tmp_path, model_dir, steps=6)
    base = replace(base, run=replace(base.run, checkpoint_every=3))
    whole = pretrain.train(replace(base, run=replace(base.run, output_dir=str(tmp_path / "whole"))))
    assert whole.summary["objective"] == kind

    real = offline.Fitting.end_step

    def interrupted(self, step, *args):
        if step == 5:
            raise KeyboardInterrupt
        return real(self, step, *args)

    parts = replace(base, run=replace(base.run, output_dir=str(tmp_path / "parts")))
    monkeypatch.setattr(offline.Fitting, "end_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain.train(parts)
    monkeypatch.setattr(offline.Fitting, "end_step", real)
    resumed = pretrain.train(replace(parts, run=replace(parts.run, resume=True)))
    rounded = [
        [{k: round(v, 5) for k, v in row.items() if k != "time"} for row in run.run.metrics()]
        for run in (resumed, whole)
    ]
    assert rounded[0] == rounded[1]


def test_causal_run_learns_the_text_and_saves_a_plain_model(tmp_path, tiny_model_dir):
    from rlhfkit.commands import dispatch

    cfg = config(tmp_path, tiny_model_dir, steps=30)
    args = ["--model", cfg.model.path, "--model.device", "cpu", "--data", cfg.data.path]
    args += ["--data.eval_path", cfg.data.eval_path, "--train.max_steps", "30"]
    args += ["--train.batch_size", "4", "--train.max_length", "24", "--optim.lr", "1e-2"]
    args += ["--log.tensorboard", "false", "--run.output_dir", cfg.run.output_dir]
    assert dispatch(["pretrain", *args]) == 0
    summary = json.loads((Path(cfg.run.output_dir) / "summary.json").read_text())
    assert summary["train_documents"] == len(DOCUMENTS)
    assert summary["train_blocks"] == -(-summary["train_tokens"] // 24)  # nothing dropped
    assert summary["eval_perplexity_after"] < 0.5 * summary["eval_perplexity_before"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(summary["model"])  # a plain Hugging Face directory


def test_masked_run_learns_and_its_encoder_loads_as_a_reward_trunk(tmp_path, tiny_bert_dir):
    from rlhfkit.models.masked_lm import load_masked_lm
    from rlhfkit.models.reward_model import RewardModel

    model, _ = load_masked_lm(str(tiny_bert_dir), "cpu", "float32")
    head = model.cls.predictions
    assert head.decoder.weight is model.bert.embeddings.word_embeddings.weight  # tied
    assert torch.equal(head.transform.dense.weight, torch.eye(32))  # a new head starts as identity

    result = pretrain.train(config(tmp_path, tiny_bert_dir, steps=30))
    summary = result.summary
    assert summary["objective"] == "masked"
    assert summary["eval_mlm_loss_after"] < 0.92 * summary["eval_mlm_loss_before"]
    assert summary["eval_masked_accuracy_after"] > summary["eval_masked_accuracy_before"]
    trunk = RewardModel.from_backbone(summary["model"], max_length=32, device="cpu")
    assert trunk.pooling == "mean"  # loaded as the encoder, its MLM head left aside
    trained, _ = load_masked_lm(summary["model"], "cpu", "float32")
    saved = result.model.cls.predictions.transform.dense.weight
    assert torch.equal(trained.cls.predictions.transform.dense.weight, saved)  # head kept


def test_recipes_run_at_tiny_scale(tmp_path, tiny_model_dir, tiny_bert_dir, monkeypatch):
    from rlhfkit import config_io
    from rlhfkit.data.vader import RatedText

    texts = [RatedText("movies", str(i), d, 0.0, 0.0, (0.0,)) for i, d in enumerate(DOCUMENTS)]
    monkeypatch.setattr("rlhfkit.data.vader.load_vader", lambda corpora, split=None: texts)
    for recipe, model_dir in (
        ("pretrain-vader", tiny_model_dir),
        ("pretrain-minilm-mlm", tiny_bert_dir),
    ):
        args = ["--config", str(REPO / "recipes" / f"{recipe}.toml"), "--model", str(model_dir)]
        args += ["--model.device", "cpu", "--train.max_steps", "2", "--train.max_length", "32"]
        args += ["--train.max_eval", "4", "--run.output_dir", str(tmp_path / recipe)]
        args += ["--run.checkpoint_every", "0", "--log.tensorboard", "false"]
        summary = pretrain.train(config_io.load(pretrain.Config, args)).summary
        assert summary["steps"] == 2 and summary["train_documents"] == len(DOCUMENTS)


def test_a_chat_template_option_is_refused(tmp_path):
    from rlhfkit import config_io
    from rlhfkit.errors import ConfigError
    from rlhfkit.train import pretrain

    (tmp_path / "a.txt").write_text("Some raw text.\n")
    with pytest.raises(ConfigError, match="train.chat_template = 'on': does nothing"):
        config_io.load(
            pretrain.Config, ["--data", str(tmp_path / "a.txt"), "--train.chat_template", "on"]
        )
