"""What a person reads at the end of a run: tables on the terminal, curves as a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def print_summary(run: Any, summary: dict[str, Any]) -> None:
    table = Table(title=f"run {run.path}", show_header=False)
    for key, value in summary.items():
        if key != "eval":
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    if summary.get("eval"):
        print_held_out(summary["eval"])


def print_held_out(held_out: dict[str, Any]) -> None:
    """The held-out figures before and after training, with 95% intervals and the paired change."""
    from rlhfkit.eval.heldout import show

    first, last = held_out["steps"]
    table = Table(title=f"held out: {held_out['prompts']} prompts (95% intervals)")
    table.add_column("")
    table.add_column(f"step {first}", justify="right")
    table.add_column(f"step {last}", justify="right")
    table.add_column("change (paired)", justify="right")
    for name, before in held_out["before"].items():
        after = held_out["after"].get(name)
        table.add_row(name, show(before), show(after), show(held_out["change"].get(name)))
    console.print(table)


def plot_curves(
    metrics: list[dict[str, Any]], path: Path, keys: tuple[str, ...] = ("reward", "kl", "length")
) -> Path | None:
    """One panel per metric against the step; written atomically. None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = tuple(k for k in keys if any(k in row for row in metrics))
    if not metrics or not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2))
    axes = [axes] if len(keys) == 1 else list(axes)
    for ax, key in zip(axes, keys, strict=True):
        steps = [row["step"] for row in metrics if key in row]
        values = [row[key] for row in metrics if key in row]
        ax.plot(steps, values, color="tab:blue", alpha=0.35, linewidth=1)
        if len(values) >= 5:  # a moving average shows the trend through the sampling noise
            window = max(3, len(values) // 10)
            smooth = [
                sum(values[max(0, i - window + 1) : i + 1])
                / len(values[max(0, i - window + 1) : i + 1])
                for i in range(len(values))
            ]
            ax.plot(steps, smooth, color="tab:blue", linewidth=2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
