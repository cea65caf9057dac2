"""Rich progress bars shared by every long step (asset preparation, generation, training)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)
_enabled = True


def set_enabled(enabled: bool) -> None:
    """Turn bars off (``--log.progress false``); they are also off when stderr is no terminal."""
    global _enabled
    _enabled = enabled


def alert(message: str) -> None:
    """An alert line (a reward-hacking monitor firing) above any live bar, on stderr: shown
    even when the bars are off, since a log must carry it too."""
    from rich.markup import escape

    console.print(f"[bold red]alert[/] {escape(message)}", highlight=False, soft_wrap=True)


@contextmanager
def progress(description: str, total: float | None) -> Iterator[tuple[Progress, TaskID]]:
    """A progress bar and its task; move it with ``bar.advance(task, n)`` or ``bar.update``.

    Usage::

        with progress("generating", total=len(prompts)) as (bar, task):
            bar.advance(task, n)
    """
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not (_enabled and sys.stderr.isatty()),
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total, info="")
        yield bar, task


@contextmanager
def steps(description: str, total: int) -> Iterator[Callable[[str], None]]:
    """A bar over ``total`` named steps: call ``step("what starts now")`` as each one begins.

    Usage::

        with steps("preparing smollm2", total=2) as step:
            step("verifying sha256")
            step("converting")
    """
    with progress(description, total=total) as (bar, task):
        done = -1

        def step(what: str) -> None:
            nonlocal done
            done += 1
            bar.update(task, completed=done, info=what)

        yield step
        bar.update(task, completed=total, info="done")
