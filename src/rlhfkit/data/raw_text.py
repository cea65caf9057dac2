"""Raw text for continued pre-training: documents from files, packed into fixed-length blocks.

Documents come from a .txt file (one per paragraph, line or file: ``txt_documents``), the text
column of a .jsonl/.json/.parquet file (one per row), a directory of such files (every one under
it, in path order), or a built-in corpus (``vader:movies``: each human-rated snippet, split by
``rlhfkit.data.vader``'s fixed train / validation split).

Packing: each document's tokens end with a boundary token (the tokenizer's EOS, or [SEP] for a
BERT-style encoder, added when the tokenizer did not put it there), and the documents are laid
end to end and cut into blocks of ``block_size`` tokens. A document longer than what is left of
a block continues in the next one; the last block may be shorter. So every token of every
document is in exactly one block, in order, and nothing is truncated. A block remembers the
lengths of the document pieces it holds (``Block.pieces``), so a batch can run each piece as its
own row (``piece_rows``) and attention never crosses from one document into another.

    documents  [a a a a E] [b b E] [c c c c c c E]        block_size 4, E the boundary
    blocks     [a a a a | E b b E | c c c c | c c E]
    pieces     (4)      (1, 3)    (4)       (3)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.data.files import column, read_rows, read_text
from rlhfkit.errors import ConfigError, DataError

SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
"""Files a directory of raw text is read from; others beside them (a README.md) are skipped."""
TXT_DOCUMENTS = ("paragraph", "line", "file")
BUILTIN = "vader:"
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class Block:
    """A fixed-length window of the packed token stream."""

    ids: tuple[int, ...]  # (L,) L = block_size, or fewer for the last block
    pieces: tuple[int, ...]  # lengths of the document pieces in it, in order; they sum to L


def load_documents(
    path: str,
    split: str,
    *,
    eval_path: str = "",
    eval_fraction: float = 0.05,
    text_field: str = "text",
    txt_documents: str = "paragraph",
) -> list[str]:
    """The documents of ``split`` ("train" or "eval").

    Held out: ``eval_path``'s documents when given; else a built-in corpus's validation split;
    else the documents of ``path`` whose text hashes into ``eval_fraction`` (``held_out``), so
    the split never depends on a seed, the file order or which files sit beside it.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: use one of {SPLITS}")
    if split == "eval" and eval_path:
        return read_documents(eval_path, text_field, txt_documents, "validation")
    if path.startswith(BUILTIN):
        return read_documents(path, text_field, txt_documents, _VADER_SPLIT[split])
    documents = read_documents(path, text_field, txt_documents, "train")
    if eval_path:
        return documents  # all of path trains: eval_path is the held-out set
    return [text for text in documents if held_out(text, eval_fraction) == (split == "eval")]


_VADER_SPLIT = {"train": "train", "eval": "validation"}


def held_out(text: str, fraction: float) -> bool:
    """Whether a document is held out: the first 8 bytes of its text's SHA-256, read as a
    number in [0, 1), fall below ``fraction``. Identical documents land on the same side."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def read_documents(path: str, text_field: str, txt_documents: str, vader_split: str) -> list[str]:
    """Every document of a file, a directory of files or a built-in corpus, in order."""
    if path.startswith(BUILTIN):
        return _vader_texts(path.removeprefix(BUILTIN), vader_split)
    source = Path(path).expanduser()
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise DataError(
                f"{source}: a directory with no {', '.join(SUFFIXES)} files under it; "
                "put the text there or name a file"
            )
        return [text for file in files for text in read_file(file, text_field, txt_documents)]
    if not source.is_file():
        raise DataError(
            f"{source}: no such file or directory; give a text file, a directory of them "
            f"or a built-in corpus ({BUILTIN}movies)"
        )
    return read_file(source, text_field, txt_documents)


def read_file(path: Path, text_field: str, txt_documents: str) -> list[str]:
    """The documents of one file; an empty file, a row without the text column or with an
    empty or non-text value is a ``DataError`` naming the file and the row."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        documents = split_text(read_text(path), txt_documents)
    elif suffix in SUFFIXES:
        documents = _column_texts(read_rows(path), path, text_field)
    else:
        raise DataError(f"{path}: not a raw text file; use one of {', '.join(SUFFIXES)}")
    if not documents:
        raise DataError(f"{path}: holds no text; remove the empty file or fill it")
    return documents


def split_text(text: str, txt_documents: str) -> list[str]:
    """A text file's documents: its paragraphs (runs of lines between blank lines), its
    non-blank lines, or the whole file as one."""
    if txt_documents == "file":
        return [text.strip()] if text.strip() else []
    if txt_documents == "line":
        return [line.strip() for line in text.splitlines() if line.strip()]
    paragraphs, lines = [], []
    for line in [*text.splitlines(), ""]:
        if line.strip():
            lines.append(line.rstrip())
        elif lines:
            paragraphs.append("\n".join(lines))
            lines = []
    return paragraphs


def _column_texts(rows: list[dict[str, Any]], path: Path, text_field: str) -> list[str]:
    values = column(rows, text_field, path, "--data.text_field")
    for number, value in enumerate(values, start=1):
        if not isinstance(value, str) or not value.strip():
            what = "empty" if isinstance(value, str) or value is None else type(value).__name__
            raise DataError(
                f"{path}: row {number}: {text_field!r} is {what}, not text; fix or remove that row"
            )
    return values


def _vader_texts(corpus: str, split: str) -> list[str]:
    from rlhfkit.data.vader import CORPORA, load_vader

    if corpus not in CORPORA:
        raise ConfigError(
            f"data.path = '{BUILTIN}{corpus}': unknown corpus; use one of "
            + ", ".join(f"{BUILTIN}{c}" for c in CORPORA)
        )
    return [text.text for text in load_vader((corpus,), split=split)]


def boundary_id(tokenizer: Any) -> int:
    """The token that ends a document: EOS, or [SEP] for an encoder that has no EOS."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return int(token_id)
    raise ConfigError(
        "model.path: its tokenizer has neither an EOS nor a SEP token to mark where one "
        "document ends; add an eos_token to its tokenizer_config.json"
    )


def tokenize_documents(tokenizer: Any, documents: Iterable[str]) -> list[list[int]]:
    """Each document's token ids with the tokenizer's own special tokens (BOS, or [CLS] ...
    [SEP]), ending in ``boundary_id`` (added unless already there). Never truncated."""
    end = boundary_id(tokenizer)
    encoded = tokenizer(list(documents), add_special_tokens=True, truncation=False)["input_ids"]
    return [ids if ids and ids[-1] == end else [*ids, end] for ids in encoded]


def pack(documents: Sequence[Sequence[int]], block_size: int) -> list[Block]:
    """The documents' tokens end to end, cut into blocks of ``block_size`` (the last may be
    shorter); a document that does not fit continues in the next block."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    blocks: list[Block] = []
    ids: list[int] = []
    pieces: list[int] = []
    for document in documents:
        start = 0
        while start < len(document):
            take = min(block_size - len(ids), len(document) - start)
            ids.extend(document[start : start + take])
            pieces.append(take)
            start += take
            if len(ids) == block_size:
                blocks.append(Block(tuple(ids), tuple(pieces)))
                ids, pieces = [], []
    if ids:
        blocks.append(Block(tuple(ids), tuple(pieces)))
    return blocks


def piece_rows(blocks: Sequence[Block], pad_id: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask), each (R, W): one right-padded row per document piece of
    the blocks, so attention stays inside a document. W is the longest piece, at least 2 (a
    causal LM predicts from a row's second column)."""
    import torch

    rows = [
        block.ids[start : start + length]
        for block in blocks
        for start, length in zip(_starts(block.pieces), block.pieces, strict=True)
    ]
    width = max(2, *(len(row) for row in rows))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = torch.tensor(row)
        attention_mask[index, : len(row)] = 1
    return input_ids, attention_mask


def _starts(lengths: Sequence[int]) -> list[int]:
    starts, total = [], 0
    for length in lengths:
        starts.append(total)
        total += length
    return starts


def predicted_tokens(block: Block) -> int:
    """Tokens a causal LM predicts in a block: every token of a piece but its first."""
    return sum(length - 1 for length in block.pieces)


def summary(documents: Sequence[Sequence[int]], blocks: Sequence[Block]) -> dict[str, int]:
    """Counts for the log: documents, tokens, blocks, and pieces that carry a document on
    from the block before."""
    return {
        "documents": len(documents),
        "tokens": sum(len(d) for d in documents),
        "blocks": len(blocks),
        "continued_pieces": sum(len(b.pieces) for b in blocks) - len(documents),
    }
