"""A trained model as a plain Hugging Face directory, written atomically."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any


def export_model(directory: Path, model: Any, tokenizer: Any) -> Path:
    """Save the trained policy as a plain Hugging Face model directory (LoRA merged in)."""
    from rlhfkit.models import quiet_transformers

    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".tmp-{directory.name}-"))
    try:
        # merging LoRA changes the model in place: merge a copy, keep training the original
        to_save = (
            copy.deepcopy(model).merge_and_unload() if hasattr(model, "peft_config") else model
        )
        to_save.config.use_cache = True
        with quiet_transformers():
            to_save.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory
