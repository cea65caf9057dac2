"""report.html: one self-contained page about one run, or several side by side.

It reads only what a run directory holds (config.toml, metrics.jsonl, heldout.json,
monitors.json, summary.json, tokens.json) and shows: the monitors' alerts, the held-out figures
before and after training with 95% intervals, the curves of whatever the run logged (training
reward, held-out reward and judge with their intervals, KL, length, entropy, loss, gradient
norm, learning rate ...), before/after completions of the same held-out prompts, an online RL
run's completions token by token with each token's advantage and KL, the summary and the
config. The page needs nothing from the network: the curves are matplotlib PNGs inlined as
base64, the style is inline, there is no script, and every text from the run is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.eval.heldout import show

REPORT_FILE = "report.html"
SAMPLES_SHOWN = 8
CURVES: tuple[tuple[str, str], ...] = (
    ("reward", "training reward"),
    ("eval/reward", "held-out reward"),
    ("eval/judge", "held-out judge"),
    ("kl", "KL to the reference"),
    ("eval/kl", "held-out KL"),
    ("length", "length (tokens)"),
    ("eval/length", "held-out length"),
    ("eval/distinct_2", "held-out distinct-2"),
    ("entropy_proxy", "entropy (sampled tokens)"),
    ("loss", "loss"),
    ("grad_norm", "gradient norm"),
    ("lr", "learning rate"),
)
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1280px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f4f4f4}td.num{text-align:right;
font-variant-numeric:tabular-nums;white-space:nowrap}.runs{display:grid;gap:1.2em;
grid-template-columns:repeat(var(--runs),minmax(0,1fr))}.alert{color:#a40000;font-weight:600}
.ok{color:#176117}.muted{color:#666}pre{background:#f7f7f7;padding:.6em;overflow:auto;
font-size:12px}img{max-width:100%}.sample td{white-space:pre-wrap;word-break:break-word}
"""


@dataclass
class RunRecord:
    """What a run directory holds, read back (absent files give empty parts)."""

    path: Path
    command: str = ""
    config: str = ""
    metrics: list[dict[str, Any]] = field(default_factory=list)
    held_out: dict[str, Any] = field(default_factory=dict)
    monitors: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    tokens: list[dict[str, Any]] = field(default_factory=list)  # tokens.json: online RL
    classification: dict[str, Any] = field(default_factory=dict)  # rlhfkit classify's report


def load_run(path: Path) -> RunRecord:
    """Read a run directory (a line of metrics.jsonl cut off by a crash is left out)."""
    record = RunRecord(path)
    if (config := path / "config.toml").is_file():
        record.config = config.read_text(encoding="utf-8")
        first = record.config.splitlines()[0] if record.config else ""
        record.command = first.removeprefix("# rlhfkit ").strip()
    if (metrics := path / "metrics.jsonl").is_file():
        for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record.metrics.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    for name, attribute in (
        ("heldout.json", "held_out"),
        ("monitors.json", "monitors"),
        ("summary.json", "summary"),
        ("tokens.json", "tokens"),
        ("classification.json", "classification"),
    ):
        if (file := path / name).is_file():
            setattr(record, attribute, json.loads(file.read_text(encoding="utf-8")))
    return record


def write_run_report(run_dir: Path) -> Path:
    """``report.html`` in ``run_dir``, replaced atomically."""
    return write_report([load_run(Path(run_dir))], Path(run_dir) / REPORT_FILE)


def write_report(runs: list[RunRecord], output: Path) -> Path:
    from rlhfkit.data.files import atomic_file

    with atomic_file(output) as f:
        f.write(render(runs))
    return output


# --- the page ------------------------------------------------------------------------------------


def render(runs: list[RunRecord]) -> str:
    """The whole page: one column per run where runs sit side by side."""
    title = "rlhfkit run report: " + ", ".join(str(run.path) for run in runs)
    sections = [
        ("monitors", "Reward-hacking monitors", [_monitors(run) for run in runs]),
        ("heldout", "Held out: before and after (95% intervals)", [_held_out(r) for r in runs]),
        ("curves", "Curves", None),
        ("samples", "Sample pairs: the same held-out prompts", [_samples(r) for r in runs]),
        ("tokens", "Token by token: advantage and KL", [_tokens(r) for r in runs]),
        ("summary", "Summary", [_summary(run) for run in runs]),
        ("config", "Config", [_config(run) for run in runs]),
    ]
    if any(run.classification for run in runs):
        classified = [_classification(run) for run in runs]
        sections.insert(1, ("classification", "Classification (held out)", classified))
    body = [f"<h1>{_e(title)}</h1>", _header(runs)]
    for anchor, heading, columns in sections:
        body.append(f'<section id="{anchor}"><h2>{_e(heading)}</h2>')
        body.append(_curves(runs) if columns is None else _side_by_side(runs, columns))
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{_e(title)}</title><style>{STYLE}</style>'
        f"</head><body>{''.join(body)}</body></html>\n"
    )


def _header(runs: list[RunRecord]) -> str:
    rows = []
    for i, run in enumerate(runs):
        summary = run.summary
        state = (
            f'<span class="alert">{_e("stopped " + summary["stopped_early"])}</span>'
            if "stopped_early" in summary
            else ("finished" if summary else '<span class="muted">not finished</span>')
        )
        fired = run.monitors.get("fired") or []
        alerts = (
            f'<span class="alert">{_e(", ".join(fired))}</span>'
            if fired
            else '<span class="ok">none</span>'
        )
        rows.append(
            f"<tr><td>{_swatch(i)} {_e(run.path)}</td><td>{_e(run.command)}</td>"
            f"<td>{state}</td><td>{alerts}</td></tr>"
        )
    return (
        "<table><tr><th>run</th><th>command</th><th>state</th><th>alerts</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _side_by_side(runs: list[RunRecord], columns: list[str]) -> str:
    if len(runs) == 1:
        return columns[0]
    cells = "".join(
        f"<div><h3>{_swatch(i)} {_e(run.path.name)}</h3>{column}</div>"
        for i, (run, column) in enumerate(zip(runs, columns, strict=True))
    )
    return f'<div class="runs" style="--runs:{len(runs)}">{cells}</div>'


def _monitors(run: RunRecord) -> str:
    monitors = run.monitors
    if not monitors:
        off = "the run has no monitors.json (monitors off, or the run predates them)"
        return f'<p class="muted">{_e(off)}</p>'
    parts = []
    alerts = monitors.get("alerts", [])
    if alerts:
        rows = "".join(
            f'<tr><td class="num">{a["step"]}</td><td class="alert">{_e(a["monitor"])}</td>'
            f"<td>{_e(a['reason'])}</td><td class=num>{a.get('studio_tasks', '')}</td></tr>"
            for a in alerts
        )
        parts.append(
            "<table><tr><th>step</th><th>alert</th><th>why</th><th>studio tasks</th></tr>"
            f"{rows}</table>"
        )
    else:
        parts.append('<p class="ok">No alerts.</p>')
    latest = monitors.get("latest", {})
    if latest:
        rows = "".join(
            f"<tr><td>{_e(name)}</td><td class=num>{v['step']}</td>"
            f'<td class=num>{_number(v["value"])}</td><td class="{"alert" if v["fired"] else "ok"}">'
            f"{'firing' if v['fired'] else 'quiet'}</td><td>{_e(v['reason'])}</td></tr>"
            for name, v in sorted(latest.items())
        )
        parts.append(
            "<table><tr><th>monitor</th><th>last checked</th><th>value</th><th>state</th>"
            f"<th>rule</th></tr>{rows}</table>"
        )
    off = monitors.get("off", {})
    if off:
        items = "".join(f"<li>{_e(name)}: {_e(why)}</li>" for name, why in sorted(off.items()))
        parts.append(f'<p class="muted">Not run:</p><ul class="muted">{items}</ul>')
    return "".join(parts)


def _held_out(run: RunRecord) -> str:
    evaluations = run.held_out.get("evaluations", [])
    if not evaluations:
        return '<p class="muted">No held-out evaluation in this run.</p>'
    first, last = evaluations[0], evaluations[-1]
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td class=num>{_e(show(before))}</td>"
        f"<td class=num>{_e(show(last['figures'].get(name)))}</td>"
        f"<td class=num>{_e(show(last['change'].get(name)))}</td></tr>"
        for name, before in first["figures"].items()
    )
    prompts = len(run.held_out.get("prompts", []))
    return (
        f"<p>{prompts} held-out prompts; scores: "
        f"{_e(', '.join(f'{k} = {v}' for k, v in run.held_out.get('scores', {}).items()))}</p>"
        f"<table><tr><th>figure</th><th>step {first['step']}</th><th>step {last['step']}</th>"
        f"<th>change (paired)</th></tr>{rows}</table>"
    )


def _samples(run: RunRecord) -> str:
    evaluations = run.held_out.get("evaluations", [])
    if len(evaluations) < 2:
        return '<p class="muted">Needs a held-out evaluation before and after training.</p>'
    first, last = evaluations[0], evaluations[-1]
    prompts = run.held_out["prompts"]
    scores = [name for name in ("reward", "judge") if name in last["values"]]
    rows = []
    for i in range(min(SAMPLES_SHOWN, len(prompts))):
        shown = "".join(
            f"<br><span class=muted>{_e(name)} {first['values'][name][i]:+.3f} → "
            f"{last['values'][name][i]:+.3f}</span>"
            for name in scores
        )
        rows.append(
            f'<tr class="sample"><td>{_e(prompts[i])}{shown}</td>'
            f"<td>{_e(first['completions'][i])}</td><td>{_e(last['completions'][i])}</td></tr>"
        )
    return (
        f"<table><tr><th>prompt</th><th>step {first['step']}</th><th>step {last['step']}</th>"
        f"</tr>{''.join(rows)}</table>"
    )


def _tokens(run: RunRecord) -> str:
    """The completions the policy learned from at the first and the last recorded step, each
    token shaded by its advantage (green pushed up, red pushed down), then by its KL to the
    reference (orange), the strongest of the step at full colour; the figures on hover."""
    if not run.tokens:
        return '<p class="muted">Online RL runs (grpo, ppo) record this.</p>'
    parts = []
    for entry in [run.tokens[0], run.tokens[-1]] if len(run.tokens) > 1 else run.tokens:
        tokens = [t for sample in entry["samples"] for t in sample["tokens"]]
        top_advantage = max((abs(t[1]) for t in tokens), default=0.0) or 1.0
        top_kl = max((abs(t[2]) for t in tokens), default=0.0) or 1.0
        rows = []
        for sample in entry["samples"]:
            hover = [
                f"advantage {a:+.3f} · KL {k:+.4f} · log p {lp:.2f}"
                for _, a, k, lp in sample["tokens"]
            ]
            by_advantage = "".join(
                _shade(text, a / top_advantage, title)
                for (text, a, _, _), title in zip(sample["tokens"], hover, strict=True)
            )
            by_kl = "".join(
                _shade(text, k / top_kl, title, "230,120,0")
                for (text, _, k, _), title in zip(sample["tokens"], hover, strict=True)
            )
            rows.append(
                f'<tr class="sample"><td>{_e(sample["prompt"])}<br><span class=muted>reward '
                f"{sample['score']:+.3f}</span></td><td>{by_advantage}</td><td>{by_kl}</td></tr>"
            )
        parts.append(
            f"<p><b>step {entry['step']}</b></p><table><tr><th>prompt</th><th>by advantage</th>"
            f"<th>by KL to the reference</th></tr>{''.join(rows)}</table>"
        )
    return "".join(parts)


def _shade(text: str, strength: float, title: str, colour: str | None = None) -> str:
    """A token on a background: ``colour`` (RGB) at ``|strength|`` (<= 1), or green / red by
    the sign of ``strength`` when no colour is given."""
    rgb = colour or ("0,160,60" if strength >= 0 else "220,40,40")
    alpha = min(abs(strength), 1.0) * 0.6
    return f'<span style="background:rgba({rgb},{alpha:.2f})" title="{_e(title)}">{_e(text)}</span>'


def _classification(run: RunRecord) -> str:
    """Accuracy and macro-F1, each class's precision/recall/F1, and the confusion matrix."""
    result = run.classification
    if not result:
        return '<p class="muted">No classification.json.</p>'
    head = (
        f"<p>{_e(result.get('split', ''))} split, {result['texts']} texts: accuracy "
        f"<b>{result['accuracy']:.3f}</b>, macro-F1 <b>{result['macro_f1']:.3f}</b></p>"
    )
    rows = "".join(
        f"<tr><th>{_e(name)}</th>"
        + "".join(f'<td class="num">{c[k]:.3f}</td>' for k in ("precision", "recall", "f1"))
        + f'<td class="num">{int(c["support"])}</td></tr>'
        for name, c in result["classes"].items()
    )
    per_class = (
        "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
        f"<th>texts</th></tr>{rows}</table>"
    )
    labels, matrix = result["confusion"]["labels"], result["confusion"]["matrix"]
    cells = "".join(
        f"<tr><th>{_e(label)}</th>" + "".join(f'<td class="num">{v}</td>' for v in row) + "</tr>"
        for label, row in zip(labels, matrix, strict=True)
    )
    columns = "".join(f"<th>{i}</th>" for i in range(len(labels)))
    confusion = (
        "<p>Confusion: rows the true class, columns the predicted one (in the order of the "
        f"rows)</p><table><tr><th></th>{columns}</tr>{cells}</table>"
    )
    return head + per_class + confusion


def _summary(run: RunRecord) -> str:
    rows = "".join(
        f"<tr><td>{_e(key)}</td><td class=num>{_e(_number(value))}</td></tr>"
        for key, value in run.summary.items()
        if not isinstance(value, (dict, list))
    )
    return f"<table>{rows}</table>" if rows else '<p class="muted">No summary.json yet.</p>'


def _config(run: RunRecord) -> str:
    return f"<details><summary>config.toml</summary><pre>{_e(run.config)}</pre></details>"


# --- curves --------------------------------------------------------------------------------------


def _curves(runs: list[RunRecord]) -> str:
    """One panel per logged metric, each run a colour; held-out panels with their intervals,
    alerts as dashed red lines. Inlined as a base64 PNG."""
    keys = [(k, label) for k, label in CURVES if any(k in row for r in runs for row in r.metrics)]
    if not keys:
        return '<p class="muted">Nothing logged yet.</p>'
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(keys))
    rows = -(-len(keys) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 2.9 * rows), squeeze=False)
    for ax, (key, label) in zip(axes.flat, keys, strict=False):
        for i, run in enumerate(runs):
            _panel(ax, run, key, COLOURS[i % len(COLOURS)], len(runs) > 1)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    shown = ", ".join(label for _, label in keys)
    return f'<img alt="{_e("curves: " + shown)}" src="data:image/png;base64,{data}">'


def _panel(ax: Any, run: RunRecord, key: str, colour: str, label: bool) -> None:
    steps = [row["step"] for row in run.metrics if key in row]
    values = [row[key] for row in run.metrics if key in row]
    if not steps:
        return
    name = run.path.name if label else None
    marker = "o" if key.startswith("eval/") else None
    ax.plot(steps, values, color=colour, linewidth=1.4, marker=marker, markersize=3, label=name)
    figure = key.removeprefix("eval/")
    intervals = [
        (e["step"], e["figures"][figure])
        for e in run.held_out.get("evaluations", [])
        if key.startswith("eval/") and figure in e["figures"]
    ]
    if intervals:
        ax.fill_between(
            [s for s, _ in intervals],
            [f["low"] for _, f in intervals],
            [f["high"] for _, f in intervals],
            color=colour,
            alpha=0.15,
            linewidth=0,
        )
    for alert in run.monitors.get("alerts", []):
        ax.axvline(alert["step"], color="tab:red", linestyle="--", linewidth=0.8, alpha=0.6)
    if label:
        ax.legend(fontsize=7)


# --- text ----------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def _swatch(i: int) -> str:
    colour = COLOURS[i % len(COLOURS)].removeprefix("tab:")
    return f'<span style="color:{colour}">■</span>'
