"""Translation: Django's human translations of its English interface strings (BSD-3).

``django==5.2.9`` ships gettext catalogs translated by people on Transifex:
``django/conf/locale/LANG/LC_MESSAGES/*.mo`` and ``django/contrib/APP/locale/LANG/LC_MESSAGES/
*.mo`` (admin, auth, sites, ...). ``build_translations`` (the ``django-locale`` entry of
``rlhfkit.assets``) reads the French, German and Spanish catalogs with the standard ``gettext``
module and writes ``rows.jsonl`` as ``{"lang", "source", "reference"}``:

- skipped: each catalog's metadata entry (msgid ""), and plural entries (two English forms);
- a message context (msgctxt, e.g. "month name" for "May") is dropped: the English is the input;
- a string with format placeholders (``%(name)s``, ``%s``, ``{}``) is kept only when its
  translation has the same placeholders, so a model can copy them (all but 2 German ones do);
- an English string in several catalogs is kept once, from the first catalog in path order.

About 790 pairs per language, ~165 of them 6 words or more; most are short interface labels
("Image" -> "Bild"). Splits by a hash of language and English string (``vader.split_of``).
"""

from __future__ import annotations

import gettext
import re
import tempfile
from pathlib import Path
from typing import Any

from rlhfkit import assets
from rlhfkit.data import task_sources
from rlhfkit.data.files import write_jsonl
from rlhfkit.data.vader import split_of
from rlhfkit.errors import AssetError, ConfigError
from rlhfkit.progress import steps

LANGUAGES = {"fr": "French", "de": "German", "es": "Spanish"}
CATALOG_GLOBS = ("conf/locale/{lang}/LC_MESSAGES/*.mo", "contrib/*/locale/{lang}/LC_MESSAGES/*.mo")
PROMPT = "Translate to {language}: {source}"
_PLACEHOLDER = re.compile(r"%(?:\(\w+\))?[-#0 +]*\d*(?:\.\d+)?[sdifrxX]|\{\w*\}")


def build_translations(asset: assets.Asset, out: Path) -> dict[str, Any]:
    """Read the fr/de/es catalogs of the django package into rows.jsonl."""
    with steps(f"preparing {asset.name}", total=2) as step:
        step("finding and verifying the catalogs")
        with tempfile.TemporaryDirectory(prefix="rlhfkit-django-") as scratch:
            root = assets.package_or_wheel(asset, "django", Path(scratch))
            catalogs = catalog_files(root)
            found = task_sources.digest_of_files(root, catalogs)
            if found != asset.sha256:
                raise AssetError(
                    f"asset {asset.name!r}: the {len(catalogs)} fr/de/es catalogs under {root} "
                    f"hash to {found}, expected {asset.sha256}; this is not {asset.source}: "
                    f"pip install --force-reinstall --no-deps {asset.source}"
                )
            rows, skipped = read_catalogs(root, catalogs)
        step("writing rows.jsonl")
        write_jsonl(out / task_sources.ROWS_FILE, rows)
    per_language = {lang: sum(r["lang"] == lang for r in rows) for lang in LANGUAGES}
    return {
        "catalogs": len(catalogs),
        "pairs": per_language,
        "skipped": skipped,
        "summary": "English -> "
        + ", ".join(f"{lang} {n} pairs" for lang, n in per_language.items()),
    }


def catalog_files(root: Path) -> list[Path]:
    """The compiled catalogs of every language in ``LANGUAGES``, in path order."""
    files = [
        file
        for lang in LANGUAGES
        for pattern in CATALOG_GLOBS
        for file in root.glob(pattern.format(lang=lang))
    ]
    if not files:
        raise AssetError(f"{root}: no fr/de/es .mo catalogs; this is not a django package")
    return sorted(files, key=lambda f: f.relative_to(root).as_posix())


def read_catalogs(root: Path, files: list[Path]) -> tuple[list[dict[str, str]], dict[str, int]]:
    """English -> translation pairs of ``files`` (see the module docstring for what is kept)."""
    rows: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    skipped = {"metadata": 0, "plural": 0, "placeholders differ": 0, "untranslated": 0}
    for file in files:
        lang = file.relative_to(root).parts[-3]
        try:
            with open(file, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog  # type: ignore[attr-defined]
        except (OSError, ValueError) as e:
            raise AssetError(f"{file}: not a gettext .mo catalog ({e})") from None
        for key, translated in catalog.items():
            if key == "":
                skipped["metadata"] += 1
                continue
            if isinstance(key, tuple):  # (msgid, n): one form of a plural entry
                skipped["plural"] += 1
                continue
            english = key.split("\x04")[-1]  # "context\x04msgid"
            if not translated.strip():
                skipped["untranslated"] += 1
            elif sorted(_PLACEHOLDER.findall(english)) != sorted(_PLACEHOLDER.findall(translated)):
                skipped["placeholders differ"] += 1
            elif (lang, english) not in seen:
                seen.add((lang, english))
                rows.append(
                    {
                        "lang": lang,
                        "source": task_sources.clean_text(english),
                        "reference": task_sources.clean_text(translated),
                    }
                )
    return rows, skipped


def split_of_row(row: dict[str, Any]) -> str:
    return split_of(f"django/{row['lang']}", row["source"])


def load_translations(lang: str, split: str | None = None) -> list[dict[str, Any]]:
    """The pairs ``{"lang", "source", "reference"}`` of one language and split (or all)."""
    if lang not in LANGUAGES:
        raise ConfigError(
            f"translation language {lang!r}: use one of {', '.join(LANGUAGES)} "
            f"(translation:{'|'.join(LANGUAGES)})"
        )
    task_sources.check_split(split, "translation")
    rows = task_sources.read_checked(
        "django-locale", {"lang": str, "source": str, "reference": str}
    )
    return [
        row for row in rows if row["lang"] == lang and (split is None or split_of_row(row) == split)
    ]


def prompt_rows(lang: str, split: str) -> list[dict[str, Any]]:
    """The built-in prompt set ``translation:LANG``: the prompt, the human ``reference`` (what
    the chrf and bleu rewards read) and ``completion`` (the reference, for sft)."""
    return [
        {
            "prompt": PROMPT.format(language=LANGUAGES[lang], source=row["source"]),
            "source": row["source"],
            "reference": row["reference"],
            "completion": row["reference"],
        }
        for row in load_translations(lang, split)
    ]
