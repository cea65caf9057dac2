"""The reward model: pooling, batching invariance, the save format, loading errors, ``rm``."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SENTENCES
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.models.reward_model import (
    FORMAT_VERSION,
    HEAD_FILE,
    MANIFEST,
    RewardModel,
    default_pooling,
    load_reward_model,
)
from rlhfkit.rewards import compute_rewards, list_rewards, load_reward, resolve_reward
from rlhfkit.rewards.learned import reward_model_reward

TEXTS = ["Hi.", SENTENCES[0], "no", SENTENCES[3] + " " + SENTENCES[4], SENTENCES[1], "the sea"]


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer random BERT encoder with a word-piece tokenizer over the test sentences."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    words = sorted({w.strip(".,?:!").lower() for s in SENTENCES for w in s.split()} - {""})
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", ":", "!", *words]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})
    assert tokenizer("The sea.")["input_ids"] == [2, tokens.index("the"), tokens.index("sea"), 5, 3]
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(params=["llama", "bert"])
def backbone_dir(request, tiny_model_dir, tiny_bert_dir):
    return {"llama": tiny_model_dir, "bert": tiny_bert_dir}[request.param]


def build(path, **options) -> RewardModel:
    torch.manual_seed(0)  # the head's random start
    return RewardModel.from_backbone(str(path), max_length=64, device="cpu", **options)


# --- pooling and scoring --------------------------------------------------------------------------


def test_pooling_follows_the_backbone(tiny_model_dir, tiny_bert_dir):
    from transformers import BertConfig, GPT2Config

    assert build(tiny_model_dir).pooling == "last"  # LlamaForCausalLM
    assert build(tiny_bert_dir).pooling == "mean"
    assert build(tiny_bert_dir, pooling="last").pooling == "last"
    assert default_pooling(GPT2Config()) == "last"  # by model type: no architecture saved
    assert default_pooling(BertConfig(is_decoder=True)) == "last"


def test_last_token_pooling_reads_the_last_real_token(tiny_model_dir):
    model = build(tiny_model_dir).eval()
    batch = model.encode([SENTENCES[0], "Hi."])
    assert sorted(batch) == ["attention_mask", "input_ids"]
    assert batch["attention_mask"][1, -1] == 0  # the short text is padded, on the right
    with torch.no_grad():
        batched = model(**batch)  # (2,)
        alone = torch.cat([model(**model.encode([text])) for text in (SENTENCES[0], "Hi.")])
        # left padding: the last real token is found from the mask as well
        ids, mask = batch["input_ids"][1], batch["attention_mask"][1]
        left = model(ids.roll(int((mask == 0).sum())).unsqueeze(0), mask.flip(0).unsqueeze(0))
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(left, alone[1:], rtol=0, atol=1e-5)
    assert batched[0] != batched[1]


def test_scores_do_not_depend_on_batching_and_keep_input_order(backbone_dir):
    model = build(backbone_dir)
    one_by_one = [model.score_texts([text])[0] for text in TEXTS]
    assert model.score_texts(TEXTS, batch_size=4) == pytest.approx(one_by_one, abs=1e-5)
    assert model.score_texts(TEXTS[::-1], batch_size=3) == pytest.approx(one_by_one[::-1], abs=1e-5)
    assert len(set(one_by_one)) == len(TEXTS)  # distinct, so a shuffled order would show
    assert model.training  # score_texts restored the mode it found
    assert model.score_texts([]) == []


def test_autocast_runs_the_backbone_in_bfloat16_and_scores_stay_close(backbone_dir):
    exact, mixed = build(backbone_dir), build(backbone_dir, autocast="bfloat16")
    seen = set()
    linear = next(m for m in mixed.backbone.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, args, out: seen.add(out.dtype))
    scores = mixed.score_texts(TEXTS)
    assert seen == {torch.bfloat16}
    assert scores != exact.score_texts(TEXTS)  # bfloat16 did round ...
    assert scores == pytest.approx(exact.score_texts(TEXTS), abs=0.05)  # ... a little


def test_offset_and_scale_normalise_scores(tiny_bert_dir):
    model = build(tiny_bert_dir)
    raw = model.score_texts(TEXTS)
    model.offset, model.scale = 0.5, 2.0
    assert model.score_texts(TEXTS) == pytest.approx([(r - 0.5) / 2.0 for r in raw], abs=1e-6)
    assert model.score_texts(TEXTS, normalised=False) == pytest.approx(raw, abs=1e-6)


def test_a_pairwise_step_raises_the_chosen_margin(tiny_model_dir):
    model = build(tiny_model_dir)
    chosen, rejected = (
        model.encode([SENTENCES[0], SENTENCES[2]]),
        model.encode([SENTENCES[1], SENTENCES[3]]),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    margin = model(**chosen) - model(**rejected)  # (2,)
    loss = -torch.nn.functional.logsigmoid(margin).mean()  # Bradley–Terry
    loss.backward()
    assert model.backbone.embed_tokens.weight.grad.abs().sum() > 0  # not the head alone
    optimizer.step()
    with torch.no_grad():
        new_margin = model(**chosen) - model(**rejected)
    assert (new_margin > margin.detach()).all()


def test_bad_options_are_refused(tiny_bert_dir):
    with pytest.raises(ConfigError, match="pooling 'cls': use auto, last"):
        build(tiny_bert_dir, pooling="cls")
    with pytest.raises(ConfigError, match="max_length 65: .* reads 1 to 64 tokens"):
        RewardModel.from_backbone(str(tiny_bert_dir), max_length=65, device="cpu")


# --- save and load --------------------------------------------------------------------------------


def test_save_and_load_give_the_same_model(backbone_dir, tmp_path):
    model = build(backbone_dir)
    model.offset, model.scale = 0.25, 3.0
    info = {"data": "pairs.jsonl", "metrics": {"accuracy": 0.75}}
    model.save(tmp_path / "rm", info=info)
    loaded = load_reward_model(tmp_path / "rm", device="cpu")
    assert loaded.score_texts(TEXTS) == pytest.approx(model.score_texts(TEXTS), abs=1e-6)
    assert (loaded.offset, loaded.scale, loaded.info) == (0.25, 3.0, info)
    assert (loaded.pooling, loaded.max_length, loaded.source) == (
        model.pooling,
        64,
        str(backbone_dir),
    )
    assert not loaded.training


def test_a_lora_backbone_is_saved_merged_and_stays_wrapped(tiny_model_dir, tmp_path):
    from rlhfkit.config import LoraCfg
    from rlhfkit.models.lora import attach_lora

    model = build(tiny_model_dir)
    model.backbone = attach_lora(model.backbone, LoraCfg(rank=4), task_type=None)
    with torch.no_grad():  # peft starts B at zero: move it so the adapters change the scores
        for name, parameter in model.backbone.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)
    model.save(tmp_path / "rm")
    assert hasattr(model.backbone, "peft_config")  # merged a copy, not the model in training
    loaded = load_reward_model(tmp_path / "rm", device="cpu")
    assert not hasattr(loaded.backbone, "peft_config")
    assert loaded.score_texts(TEXTS) == pytest.approx(model.score_texts(TEXTS), abs=1e-5)


def test_saving_replaces_an_old_model_whole(tiny_bert_dir, tmp_path):
    model = build(tiny_bert_dir)
    model.save(tmp_path / "rm")
    (tmp_path / "rm" / "stale.bin").write_bytes(b"from an older save")
    model.offset = 1.0
    model.save(tmp_path / "rm")
    assert not (tmp_path / "rm" / "stale.bin").exists()
    assert load_reward_model(tmp_path / "rm", device="cpu").offset == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]  # no temp dirs left


def test_a_failed_save_leaves_the_old_model(tiny_bert_dir, tmp_path, monkeypatch):
    import safetensors.torch

    model = build(tiny_bert_dir)
    model.save(tmp_path / "rm", info={"version": "old"})

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    model.offset = 5.0
    with pytest.raises(OSError, match="No space"):
        model.save(tmp_path / "rm", info={"version": "new"})
    monkeypatch.undo()
    old = load_reward_model(tmp_path / "rm", device="cpu")
    assert (old.offset, old.info) == (0.0, {"version": "old"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]


def test_saving_over_a_directory_that_is_not_a_reward_model_is_refused(tiny_bert_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(RlhfkitError, match="holds something other than a reward model"):
        build(tiny_bert_dir).save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_load_errors_say_what_to_do(tiny_bert_dir, tmp_path):
    with pytest.raises(RlhfkitError, match="no such directory"):
        load_reward_model(tmp_path / "missing")
    with pytest.raises(
        RlhfkitError,
        match="not a reward model directory saved by rlhfkit reward; train one with rlhfkit reward",
    ):
        load_reward_model(tiny_bert_dir)  # a plain model directory
    build(tiny_bert_dir).save(tmp_path / "rm")
    manifest_path = tmp_path / "rm" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "format": FORMAT_VERSION + 1}))
    with pytest.raises(RlhfkitError, match=f"format {FORMAT_VERSION + 1}, but this rlhfkit reads"):
        load_reward_model(tmp_path / "rm")
    manifest_path.write_text("{not json")
    with pytest.raises(RlhfkitError, match="unreadable"):
        load_reward_model(tmp_path / "rm")
    manifest_path.write_text(json.dumps(manifest))
    (tmp_path / "rm" / HEAD_FILE).unlink()
    with pytest.raises(RlhfkitError, match=f"{HEAD_FILE} missing"):
        load_reward_model(tmp_path / "rm")


# --- the rm reward --------------------------------------------------------------------------------


def test_rm_reward_scores_prompt_and_completion(tiny_model_dir, tmp_path):
    model = build(tiny_model_dir)
    model.offset, model.scale = 0.1, 2.0
    model.save(tmp_path / "rm")
    reward = load_reward(f"rm:{tmp_path / 'rm'}")
    prompts, completions = ["The movie was", "", "Q: "], [" great.", "Hi.", "four"]
    scores = compute_rewards(reward, prompts, completions)
    assert scores == pytest.approx(
        model.score_texts(["The movie was great.", "Hi.", "Q: four"]), abs=1e-5
    )


def test_rm_spec_errors_name_the_fix(tmp_path):
    assert "rm" in list_rewards()
    assert resolve_reward("rm:some/dir") == (reward_model_reward, "some/dir")
    with pytest.raises(ConfigError, match="give the reward model directory: rm:PATH"):
        load_reward("rm")
    with pytest.raises(ConfigError, match=f"reward 'rm:{tmp_path}': .*not a reward model"):
        load_reward(f"rm:{tmp_path}")
