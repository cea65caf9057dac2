"""A trained model as a plain Hugging Face directory, written atomically."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rlhfkit.atomic import replace_dir


def export_model(directory: Path, model: Any, tokenizer: Any) -> Path:
    """Save the trained policy as a plain Hugging Face model directory (LoRA merged in)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".tmp-{directory.name}-"))
    try:
        # merging LoRA changes the model in place: merge a copy, keep training the original
        to_save = (
            copy.deepcopy(model).merge_and_unload() if hasattr(model, "peft_config") else model
        )
        save_model_files(to_save, tokenizer, tmp)
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def save_model_files(model: Any, tokenizer: Any, directory: Path) -> None:
    """``save_pretrained`` of a plain (merged) model and its tokenizer (chat template included)
    into an existing ``directory``, with the KV cache on for whoever generates from it."""
    from rlhfkit.models import quiet_transformers

    model.config.use_cache = True
    with quiet_transformers():
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
