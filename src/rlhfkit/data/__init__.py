"""Data: file readers, prompt datasets and the built-in human-rated datasets."""

from rlhfkit.data.files import column, read_rows, write_jsonl

__all__ = ["column", "read_rows", "write_jsonl"]
