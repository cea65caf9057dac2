"""Rollout batches, the hf generation backend and ``rlhfkit generate``, on the tiny random Llama."""

from __future__ import annotations

import functools
import json
import re
import time

import pytest
import torch

from rlhfkit.batch import Rollout
from rlhfkit.config import GenCfg, ModelCfg
from rlhfkit.errors import ConfigError, DataError, RlhfkitError
from rlhfkit.generation import get_backend
from rlhfkit.models import token_logprobs

PROMPTS = ["The movie", "What is two plus three? The answer is", "A", "Please write a short poem"]


def generate(tiny_lm, prompts=PROMPTS, seed=0, **gen):
    model, tokenizer = tiny_lm
    cfg = GenCfg(**{"max_new_tokens": 10, "batch_size": 3, **gen})
    return get_backend("hf", model, tokenizer).generate(prompts, cfg, seed)


def manual_rollout(prompt_rows, response_rows):
    """A rollout from plain lists: prompts left-padded with 0, responses right-padded with 0."""
    prompt_width = max(map(len, prompt_rows))
    response_width = max(map(len, response_rows))
    prompt_ids = torch.tensor([[0] * (prompt_width - len(r)) + r for r in prompt_rows])
    response_ids = torch.tensor([r + [0] * (response_width - len(r)) for r in response_rows])
    response_mask = torch.tensor(
        [[1] * len(r) + [0] * (response_width - len(r)) for r in response_rows]
    )
    return Rollout(
        prompts=[f"p{i}" for i in range(len(prompt_rows))],
        completions=[f"c{i}" for i in range(len(prompt_rows))],
        prompt_ids=prompt_ids,
        prompt_mask=(prompt_ids != 0).long(),
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=-response_ids.float() * response_mask,
        finished=torch.tensor([len(r) < response_width for r in response_rows]),
    )


# --- Rollout -------------------------------------------------------------------------------------


def test_rollout_concat_repads_and_indexing_selects_rows():
    first = manual_rollout([[5, 6], [7]], [[8, 9, 10], [11]])
    second = manual_rollout([[1, 2, 3]], [[4]])
    both = Rollout.concat([first, second])
    assert both.prompt_ids.tolist() == [[0, 5, 6], [0, 0, 7], [1, 2, 3]]
    assert both.response_ids.tolist() == [[8, 9, 10], [11, 0, 0], [4, 0, 0]]
    assert both.attention_mask.tolist() == [
        [0, 1, 1, 1, 1, 1],
        [0, 0, 1, 1, 0, 0],
        [1, 1, 1, 1, 0, 0],
    ]
    assert both.input_ids.shape == (3, 6)
    assert both.response_lengths.tolist() == [3, 1, 1]
    assert both.logprobs.tolist() == [[-8, -9, -10], [-11, 0, 0], [-4, 0, 0]]
    assert both.prompts == ["p0", "p1", "p0"] and len(both) == 3

    picked = both[torch.tensor([2, 1])]
    assert picked.prompt_ids.tolist() == [[1, 2, 3], [0, 0, 7]]
    assert picked.completions == ["c0", "c1"] and picked.finished.tolist() == [False, True]
    assert both[1:].response_ids.tolist() == both[[1, 2]].response_ids.tolist()
    assert both.to("cpu").response_mask.equal(both.response_mask)


def test_rollout_rejects_fields_that_disagree():
    good = manual_rollout([[5]], [[8, 9]])
    with pytest.raises(ValueError, match="batch size"):
        Rollout(**{**good.__dict__, "completions": ["a", "b"]})
    with pytest.raises(ValueError, match="logprobs"):
        Rollout(**{**good.__dict__, "logprobs": torch.zeros(1, 3)})


# --- the hf backend ------------------------------------------------------------------------------


def test_rollout_shapes_masks_and_padding(tiny_lm):
    _, tokenizer = tiny_lm
    rollout = generate(tiny_lm, temperature=1.0)
    batch, prompt_width = rollout.prompt_ids.shape
    assert batch == len(PROMPTS) and rollout.response_ids.shape[1] <= 10
    assert rollout.input_ids.shape == (batch, prompt_width + rollout.response_ids.shape[1])
    for row in range(batch):  # left padding: zeros then ones; right padding: ones then zeros
        prompt_mask = rollout.prompt_mask[row].tolist()
        assert prompt_mask == sorted(prompt_mask)
        response_mask = rollout.response_mask[row].tolist()
        assert response_mask == sorted(response_mask, reverse=True) and response_mask[0] == 1
    pad = tokenizer.pad_token_id
    assert (rollout.prompt_ids[rollout.prompt_mask == 0] == pad).all()
    assert (rollout.response_ids[rollout.response_mask == 0] == pad).all()
    assert (rollout.logprobs[rollout.response_mask == 0] == 0).all()
    assert (rollout.logprobs[rollout.response_mask == 1] < 0).all()
    assert rollout.logprobs.dtype == torch.float32 and rollout.finished.dtype == torch.bool
    # the prompt columns hold exactly the chat-templated prompts
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPTS[2]}], add_generation_prompt=True, tokenize=False
    )
    expected = tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert rollout.prompt_ids[2][rollout.prompt_mask[2] == 1].tolist() == expected
    for row in range(batch):
        kept = rollout.response_ids[row, : rollout.response_lengths[row]].tolist()
        assert tokenizer.decode(kept, skip_special_tokens=True) == rollout.completions[row]


def test_same_seed_same_rollout_and_global_rng_untouched(tiny_lm):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = generate(tiny_lm, seed=7, top_p=0.9, top_k=40)
    assert torch.get_rng_state().equal(before)
    again = generate(tiny_lm, seed=7, top_p=0.9, top_k=40)
    other = generate(tiny_lm, seed=8, top_p=0.9, top_k=40)
    assert again.response_ids.equal(first.response_ids) and again.completions == first.completions
    assert not other.response_ids.equal(first.response_ids)


def test_greedy_equals_argmax_decoding_without_padding_or_cache(tiny_lm):
    model, tokenizer = tiny_lm
    rollout = generate(tiny_lm, temperature=0.0, max_new_tokens=8)
    for row in range(len(PROMPTS)):
        ids = rollout.prompt_ids[row][rollout.prompt_mask[row] == 1][None]  # (1, P_row)
        expected = []
        with torch.no_grad():
            for _ in range(int(rollout.response_lengths[row])):
                next_id = int(model(ids).logits[0, -1].argmax())
                expected.append(next_id)
                ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
        assert rollout.response_ids[row, : len(expected)].tolist() == expected


@pytest.mark.parametrize(
    "gen",
    [dict(temperature=0.7, top_k=30, top_p=0.9), dict(temperature=1.3), dict(temperature=0.0)],
)
def test_recorded_logprobs_match_token_logprobs(tiny_lm, gen):
    model, _ = tiny_lm
    rollout = generate(tiny_lm, **gen)  # two batches (3 + 1), re-padded by concat
    with torch.no_grad():
        recomputed = token_logprobs(
            model,
            rollout.input_ids,
            rollout.attention_mask,
            rollout.prompt_ids.shape[1],
            temperature=gen["temperature"],
        )
    mask = rollout.response_mask.bool()
    torch.testing.assert_close(rollout.logprobs[mask], recomputed[mask], rtol=0, atol=1e-4)


def test_compiled_decoding_matches_eager_and_records_the_same_logprobs(tiny_lm):
    """gen.compile on: a static cache, a compiled step, the last batch (1 of 3 rows) filled
    with copies and the prompts padded to a multiple of 64; none of it shows in the rollout."""
    model, _ = tiny_lm
    eager = generate(tiny_lm, temperature=0.0, compile="off")
    compiled = generate(tiny_lm, temperature=0.0, compile="on")
    assert compiled.completions == eager.completions
    assert compiled.response_ids.equal(eager.response_ids)
    assert compiled.prompt_ids.shape == eager.prompt_ids.shape  # the extra padding is dropped
    assert compiled.prompt_ids.equal(eager.prompt_ids)
    sampled = generate(tiny_lm, temperature=1.0, compile="on")
    with torch.no_grad():
        recomputed = token_logprobs(
            model, sampled.input_ids, sampled.attention_mask, sampled.prompt_ids.shape[1]
        )
    mask = sampled.response_mask.bool()
    torch.testing.assert_close(sampled.logprobs[mask], recomputed[mask], rtol=0, atol=1e-4)


def test_repeated_prompts_are_prefilled_once_and_sample_as_if_each_ran(tiny_lm, monkeypatch):
    """GRPO's batches repeat each prompt G times: the cache of its columns but the last is
    computed for each distinct prompt only (here 2 of 6 rows; "A" is padding in all those
    columns), copied to its rows, and the rollout is the one every row running its own gives."""
    from rlhfkit.generation.hf import HFBackend

    model, _ = tiny_lm
    prompts = [p for p in PROMPTS[1:3] for _ in range(3)]
    prefill_rows = []
    decoder_forward = type(model.get_decoder()).forward

    @functools.wraps(decoder_forward)  # keeps the signature the backend reads
    def counting_forward(self, input_ids=None, **kwargs):
        prefill_rows.append(input_ids.shape[0])
        return decoder_forward(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(type(model.get_decoder()), "forward", counting_forward)
    plain = dict(batch_size=6, chat_template="off")
    shared = {t: generate(tiny_lm, prompts, temperature=t, **plain) for t in (0.0, 1.0)}
    assert prefill_rows[0] == 2 and prefill_rows[1] == 6  # the prefill, then generate's first step
    assert shared[0.0].prompt_mask[3, :-1].eq(0).all()  # "A": one token, left-padded
    monkeypatch.setattr(HFBackend, "_prefill_once_per_prompt", lambda self, ids, mask: {})
    for temperature, rollout in shared.items():
        alone = generate(tiny_lm, prompts, temperature=temperature, **plain)
        assert rollout.prompt_ids.equal(alone.prompt_ids)
        assert rollout.response_ids.equal(alone.response_ids)
        assert rollout.completions == alone.completions
        torch.testing.assert_close(rollout.logprobs, alone.logprobs, rtol=0, atol=1e-5)
    distinct = generate(tiny_lm, PROMPTS, temperature=0.0, batch_size=4)
    with torch.no_grad():
        recomputed = token_logprobs(
            model,
            distinct.input_ids,
            distinct.attention_mask,
            distinct.prompt_ids.shape[1],
            temperature=0.0,
        )
    mask = distinct.response_mask.bool()
    torch.testing.assert_close(distinct.logprobs[mask], recomputed[mask], rtol=0, atol=1e-4)


def test_sampling_under_autocast_decodes_in_bfloat16_and_records_float32_logprobs(tiny_model_dir):
    from rlhfkit.config import ModelCfg
    from rlhfkit.models import load_causal_lm

    model, tokenizer = load_causal_lm(
        ModelCfg(path=str(tiny_model_dir), device="cpu", autocast="bfloat16")
    )
    seen = set()
    model.get_decoder().layers[0].mlp.up_proj.register_forward_hook(
        lambda m, args, out: seen.add(out.dtype)
    )
    prompts = [p for p in PROMPTS[1:3] for _ in range(2)]  # repeats: the shared prefill runs too
    rollout = generate(
        (model, tokenizer), prompts, temperature=1.0, batch_size=4, chat_template="off"
    )
    assert seen == {torch.bfloat16}
    assert rollout.logprobs.dtype == torch.float32
    with torch.no_grad():
        recomputed = token_logprobs(
            model, rollout.input_ids, rollout.attention_mask, rollout.prompt_ids.shape[1]
        )
    mask = rollout.response_mask
    # incremental decoding and a packed forward round differently in bfloat16, a little
    assert ((rollout.logprobs - recomputed).abs() * mask).max() < 0.05


def test_compiled_decoding_refuses_a_model_under_autocast(tiny_model_dir):
    """A static KV cache holds one dtype; under autocast keys come out float32 (rotary in float32)
    and values bfloat16, which on an H200 failed deep in transformers' cache update."""
    from rlhfkit.models import load_causal_lm

    lm = load_causal_lm(ModelCfg(path=str(tiny_model_dir), device="cpu", autocast="bfloat16"))
    with pytest.raises(
        ConfigError,
        match="gen.compile = 'on' cannot decode a model under model.autocast.*set gen.compile auto",
    ):
        generate(lm, compile="on")


@pytest.mark.parametrize("autocast", ["off", "bfloat16"])
def test_auto_compiles_in_training_loops_on_cuda_only(tiny_model_dir, monkeypatch, autocast):
    """rollout.sample (every RL and hindsight loop) turns auto on for CUDA, unless the model runs
    under autocast; one-shot sampling and a CPU stay eager."""
    from types import SimpleNamespace

    from rlhfkit.models import load_causal_lm
    from rlhfkit.train import rollout

    model, _ = load_causal_lm(ModelCfg(path=str(tiny_model_dir), device="cpu", autocast=autocast))
    asked = []
    backend = SimpleNamespace(generate=lambda prompts, gen, seed: asked.append(gen.compile))
    rollout.sample(model, backend, PROMPTS, GenCfg(), seed=0)
    monkeypatch.setattr(type(model), "device", property(lambda self: torch.device("cuda")))
    # with the `kernels` package installed, transformers' train()/eval() look up kernels for the
    # model's device, which a CPU-only torch cannot do for a faked CUDA device
    monkeypatch.setattr(
        type(model), "train", lambda self, mode=True: torch.nn.Module.train(self, mode)
    )
    monkeypatch.setattr(type(model), "eval", lambda self: torch.nn.Module.train(self, False))
    rollout.sample(model, backend, PROMPTS, GenCfg(), seed=0)
    rollout.sample(model, backend, PROMPTS, GenCfg(compile="off"), seed=0)
    assert asked == ["auto", "on" if autocast == "off" else "auto", "off"]
    assert model.training  # sample puts the policy back in training mode


def test_eos_ends_a_completion_and_is_kept_in_the_mask(tiny_lm, monkeypatch):
    """Declare a token the greedy model emits mid-way an extra EOS (as chat models have several)."""
    model, tokenizer = tiny_lm
    plain = generate(tiny_lm, temperature=0.0)
    row0 = plain.response_ids[0].tolist()
    stop_token = next(t for i, t in enumerate(row0) if i >= 2 and t not in row0[:i])
    monkeypatch.setattr(
        model.generation_config, "eos_token_id", [tokenizer.eos_token_id, stop_token]
    )
    ended = generate(tiny_lm, temperature=0.0)
    for row in range(len(PROMPTS)):
        tokens = plain.response_ids[row, : plain.response_lengths[row]].tolist()
        length = tokens.index(stop_token) + 1 if stop_token in tokens else len(tokens)
        assert ended.response_lengths[row] == length
        assert ended.response_ids[row, :length].tolist() == tokens[:length]
        assert bool(ended.finished[row]) == (stop_token in tokens or bool(plain.finished[row]))
        text_tokens = tokens[: length - 1] if stop_token in tokens else tokens
        assert ended.completions[row] == tokenizer.decode(text_tokens, skip_special_tokens=True)
    assert ended.response_lengths[0] == row0.index(stop_token) + 1


def test_stop_strings_cut_text_and_tokens(tiny_lm):
    _, tokenizer = tiny_lm
    plain = generate(tiny_lm, temperature=0.0, max_new_tokens=16)
    text = plain.completions[1]
    stop = text[6:8]
    assert stop.strip(), f"greedy text too short to test: {text!r}"
    stopped = generate(tiny_lm, temperature=0.0, max_new_tokens=16, stop=(stop, "never-seen"))

    for row in range(len(PROMPTS)):
        tokens = plain.response_ids[row, : plain.response_lengths[row]].tolist()
        full = plain.completions[row]
        if stop not in full:  # untouched
            assert stopped.completions[row] == full
            assert stopped.response_lengths[row] == len(tokens)
            continue
        # the fewest tokens whose text holds the stop string, found by a plain scan
        needed = next(
            k
            for k in range(1, len(tokens) + 1)
            if stop in tokenizer.decode(tokens[:k], skip_special_tokens=True)
        )
        assert stopped.completions[row] == full[: full.index(stop)]
        assert stopped.response_lengths[row] == needed
        assert stopped.response_ids[row, :needed].tolist() == tokens[:needed]
        assert stopped.finished[row]
    assert stopped.completions[1] == text[: text.index(stop)]


def test_stop_strings_match_generated_text_only(tiny_lm):
    """The chat prompt ends in "assistant\\n": a stop string straddling it must not match."""
    plain = generate(tiny_lm, prompts=PROMPTS[:1], temperature=0.0)
    text = plain.completions[0]
    stop = "\n" + text[:2]
    assert stop not in text
    stopped = generate(tiny_lm, prompts=PROMPTS[:1], temperature=0.0, stop=(stop,))
    assert stopped.completions == [text]
    assert stopped.response_ids.equal(plain.response_ids)


def test_too_long_prompt_names_index_and_lengths(tiny_lm):
    long_prompt = "The movie was a delight from start to finish. " * 20
    with pytest.raises(
        DataError,
        match=r"prompt 1 is \d+ tokens.*context of 128 tokens minus "
        r"gen.max_new_tokens 10 leaves room for 118",
    ):
        generate(tiny_lm, prompts=["fine", long_prompt])
    with pytest.raises(ConfigError, match="gen.max_new_tokens 128 leaves no room"):
        generate(tiny_lm, max_new_tokens=128)


def test_chat_prompts_and_template_modes(tiny_lm):
    _, tokenizer = tiny_lm
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The sea"}]
    rollout = generate(tiny_lm, prompts=[chat, "The sea"], chat_template="on")
    expected = tokenizer(
        tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False),
        add_special_tokens=False,
    )
    assert rollout.prompt_ids[0][rollout.prompt_mask[0] == 1].tolist() == expected["input_ids"]
    assert rollout.prompts[0] == chat

    plain = generate(tiny_lm, prompts=["The sea"], chat_template="off")
    assert plain.prompt_ids[0].tolist() == tokenizer("The sea")["input_ids"]
    with pytest.raises(DataError, match="prompt 0 is a chat.*chat_template is off"):
        generate(tiny_lm, prompts=[chat], chat_template="off")


def test_response_prefix_ends_the_prompt_tokens_and_is_not_in_the_completion(tiny_lm):
    model, tokenizer = tiny_lm
    backend = get_backend("hf", model, tokenizer)
    chat = [{"role": "user", "content": "The sea"}]
    prefixed = backend.generate(
        [chat], GenCfg(max_new_tokens=6, chat_template="on"), 0, response_prefix="The movie"
    )
    rendered = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    expected = tokenizer(rendered + "The movie", add_special_tokens=False)["input_ids"]
    assert prefixed.prompt_ids[0][prefixed.prompt_mask[0] == 1].tolist() == expected
    # the completion is what follows the prefix: greedy decoding from the prefixed text
    greedy = GenCfg(max_new_tokens=6, temperature=0, chat_template="off")
    plain = backend.generate(["The movie"], greedy, 0, response_prefix=" was")
    assert plain.prompt_ids[0].tolist() == tokenizer("The movie was")["input_ids"]
    same = backend.generate(["The movie was"], greedy, 0)
    assert plain.completions == same.completions and plain.prompts == ["The movie"]
    assert plain.response_ids.equal(same.response_ids)


def test_generate_conditioned_asks_with_the_words_and_keeps_the_original_prompts(tiny_lm):
    from rlhfkit.conditioning import Conditioning
    from rlhfkit.generation import describe_conditioning, generate_conditioned

    model, tokenizer = tiny_lm
    backend = get_backend("hf", model, tokenizer)
    cfg = GenCfg(max_new_tokens=6, temperature=0, chat_template="off")
    asked = Conditioning("coh", instruction="The movie {prompt}", response_prefix=" was")
    rollout = generate_conditioned(backend, ["said the"], cfg, 0, asked)
    direct = backend.generate(["The movie said the was"], cfg, 0)
    assert rollout.prompts == ["said the"]  # rewards and output files see the original
    assert rollout.completions == direct.completions
    assert rollout.prompt_ids.equal(direct.prompt_ids)  # the model saw the conditioned text
    assert generate_conditioned(backend, ["A"], cfg, 0, None).prompts == ["A"]
    assert describe_conditioning(asked) == (
        "conditioning.json (coh): prompts as 'The movie {prompt}', answers start with ' was'"
    )


def test_unknown_backend_suggests_the_closest_name(tiny_lm):
    model, tokenizer = tiny_lm
    with pytest.raises(ConfigError, match="gen.backend 'hff'.*did you mean 'hf'"):
        get_backend("hff", model, tokenizer)


# --- rlhfkit generate ----------------------------------------------------------------------------


def test_generate_command_writes_jsonl(tiny_model_dir, tmp_path, capsys):
    from rlhfkit.commands.generate import Config, main

    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "The movie", "id": 1},
        {"messages": [{"role": "user", "content": "Count the legs"}], "id": 2},
        {"prompt": "not used: beyond the limit", "id": 3},
    ]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "out" / "completions.jsonl"
    cfg = Config(
        prompts=str(prompts),
        output=str(output),
        limit=2,
        samples_per_prompt=2,
        seed=3,
        model=ModelCfg(path=str(tiny_model_dir), device="cpu"),
        gen=GenCfg(max_new_tokens=6, batch_size=3),
    )
    assert list(cfg.check()) == []
    main(cfg)

    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(r["id"], r["sample"]) for r in written] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert written[0]["prompt"] == "The movie" and written[2]["prompt"] == rows[1]["messages"]
    assert "messages" not in written[2]
    for record in written:
        assert 1 <= record["completion_tokens"] == len(record["logprobs"]) <= 6
        assert record["prompt_tokens"] > 0 and isinstance(record["finished"], bool)
        assert all(lp <= 0 for lp in record["logprobs"])
        assert record["model"] == str(tiny_model_dir)
    assert re.search(r"wrote 4 completions to .*tokens/s", capsys.readouterr().out)

    # an existing output is refused, before and after loading; with overwrite the same seed
    # writes the same file
    problems = list(cfg.check())
    assert [p.field for p in problems] == ["output"] and "--overwrite" in problems[0].message
    with pytest.raises(RlhfkitError, match="already exists"):
        main(cfg)
    before = output.read_text()
    main(Config(**{**cfg.__dict__, "overwrite": True}))
    assert output.read_text() == before


def test_generate_command_applies_the_model_directorys_conditioning(
    tiny_model_dir, tmp_path, capsys
):
    import shutil

    from rlhfkit.commands.generate import Config, main
    from rlhfkit.conditioning import Conditioning

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "coh-model")
    Conditioning("coh", instruction="The movie was {prompt}").save(model_dir)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a delight\n")

    def run(model_path, name):
        cfg = Config(
            prompts=str(prompts),
            output=str(tmp_path / name),
            seed=0,
            model=ModelCfg(path=str(model_path), device="cpu"),
            gen=GenCfg(max_new_tokens=5, temperature=0, chat_template="off"),
        )
        main(cfg)
        return json.loads((tmp_path / name).read_text())

    conditioned = run(model_dir, "conditioned.jsonl")
    assert "conditioning.json (coh): prompts as 'The movie was {prompt}'" in capsys.readouterr().out
    plain = run(tiny_model_dir, "plain.jsonl")
    assert "conditioning" not in capsys.readouterr().out
    assert conditioned["prompt"] == plain["prompt"] == "a delight"  # the original prompt
    assert conditioned["prompt_tokens"] > plain["prompt_tokens"]


def test_generate_command_requires_prompts():
    from rlhfkit.commands.generate import Config

    assert [p.field for p in Config().check()] == ["prompts"]


# --- the real model ------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_answers_chat_prompts_in_english():
    from rlhfkit.models import load_causal_lm

    model, tokenizer = load_causal_lm(ModelCfg(path="smollm2", device="cpu"))
    prompts = [
        "What is the capital of France? Answer in one sentence.",
        "Give me one tip for sleeping better.",
    ]
    backend = get_backend("hf", model, tokenizer)
    started = time.perf_counter()
    rollout = backend.generate(prompts, GenCfg(max_new_tokens=40, temperature=0.0), seed=0)
    seconds = time.perf_counter() - started
    print(f"smollm2: {int(rollout.response_lengths.sum())} tokens in {seconds:.1f} s")
    for completion in rollout.completions:
        letters = sum(c.isascii() and (c.isalpha() or c.isspace()) for c in completion)
        assert len(completion.split()) >= 4, completion
        assert letters / len(completion) > 0.85, completion
    assert "paris" in rollout.completions[0].lower()
    # a one-sentence answer ends with the chat model's end-of-turn token, kept in the mask
    end = int(rollout.response_lengths[0]) - 1
    assert rollout.finished[0] and rollout.response_ids[0, end] == tokenizer.eos_token_id
