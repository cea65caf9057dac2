"""``rlhfkit report RUN [RUN ...]``: a run's report.html, or several runs side by side (docs/report.md).

    rlhfkit report runs/grpo                      # (re)writes runs/grpo/report.html
    rlhfkit report runs/grpo runs/ppo --open      # ./report.html, the two side by side

Training writes report.html into every run directory at its end; this command rewrites it
(say for a run stopped by Ctrl-C, or after an upgrade) and compares runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import Problem, is_run_dir

COMPARED_NAME = "report.html"


@dataclass(frozen=True)
class Config:
    """Write a run's HTML report, or several runs side by side (report RUN [RUN ...])."""

    runs: tuple[str, ...] = ()
    """Run directories (also the first arguments); one writes RUN/report.html, several write
    one page with them side by side."""
    output: str = ""
    """Where to write the page; empty: RUN/report.html for one run, ./report.html for several."""
    open: bool = False
    """Open the page in the default web browser once written."""

    def check(self) -> Iterable[Problem]:
        if not self.runs:
            yield Problem("runs", "", "is empty; give one or more run directories: report RUN")
        for run in self.runs:
            if not is_run_dir(Path(run).expanduser()):
                yield Problem(
                    "runs",
                    run,
                    "is not an rlhfkit run directory (no config.toml written by a training "
                    "command); give the --run.output_dir of a run",
                )


def run(argv: list[str]) -> int:
    """``rlhfkit report RUN [RUN ...] [--KEY VALUE ...]``: the leading names are --runs."""
    from rlhfkit import config_io

    if "-h" in argv or "--help" in argv:
        print(config_io.render_help(Config, "report"), end="")
        return 0
    leading = []
    while argv and not argv[0].startswith("--"):
        leading += ["--runs", argv.pop(0)]
    main(config_io.load(Config, [*leading, *argv], command="report"))
    return 0


def main(cfg: Config) -> None:
    from rlhfkit.eval.run_report import REPORT_FILE, load_run, write_report

    runs = [load_run(Path(run).expanduser()) for run in cfg.runs]
    default = runs[0].path / REPORT_FILE if len(runs) == 1 else Path(COMPARED_NAME)
    output = write_report(runs, Path(cfg.output).expanduser() if cfg.output else default)
    print(f"report: {output}")
    if cfg.open:
        import webbrowser

        webbrowser.open(output.resolve().as_uri())
