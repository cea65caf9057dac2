"""Atomic replacement of a whole directory (standard library only, for every layer)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def old_prefix(name: str) -> str:
    """How an old directory named ``name`` is called while it waits aside to be deleted (a
    crash there leaves it: whoever owns ``name`` may sweep ``old_prefix(name) + "*"``)."""
    return f".old-{name}."


def replace_dir(staging: Path, final: Path) -> None:
    """Put a finished directory in ``final``'s place; an old one is moved aside first and
    deleted only after. Nothing is ever half-written or half-deleted in ``final``'s place: a
    crash leaves the old directory or the new one there whole, or, between the two renames,
    the old one whole aside (``old_prefix``) and the new one whole in ``staging``."""
    if final.exists():
        aside = Path(tempfile.mkdtemp(dir=final.parent, prefix=old_prefix(final.name)))
        os.replace(final, aside / final.name)
        os.replace(staging, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staging, final)
