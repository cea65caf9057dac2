"""Project errors. The CLI prints any of them as one line, with no traceback."""

from __future__ import annotations

from collections.abc import Iterable


class RlhfkitError(Exception):
    """A problem the user can fix; the message says what and how. CLI exit code 1."""

    exit_code = 1


class ConfigError(RlhfkitError):
    """A bad configuration value, found before any model loads. CLI exit code 2.

    Carries one or more problems, each naming the field, the value and the fix.
    """

    exit_code = 2

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class DataError(RlhfkitError):
    """A data file that cannot be read as asked: names the file, the line and the fix."""

    exit_code = 2


class AssetError(RlhfkitError):
    """An embedded asset that cannot be located, verified or prepared."""


class RewardError(RlhfkitError):
    """A reward function that raised, or returned the wrong number or a non-finite score."""


class RlhfkitWarning(UserWarning):
    """Something the user should know that does not stop the command (a damaged checkpoint
    skipped, a cut-off metrics line dropped); the CLI prints it as one line."""


def did_you_mean(name: str, choices: Iterable[str], end: str = " ") -> str:
    """``"did you mean 'closest'?"`` + ``end`` for the choice closest to a mistyped ``name``,
    or "" when none is close (difflib's ratio of at least 0.6).

    Every "unknown name" message uses it, as in ``f"unknown asset {name!r}; {did_you_mean(name,
    ASSETS)}known assets: ..."``; with ``end=""`` it ends a message or gives way to another hint:
    ``did_you_mean(name, names, end="") or "see rlhfkit --help"``.
    """
    import difflib  # here: `rlhfkit --help` imports this module and never needs difflib

    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"did you mean {close[0]!r}?{end}" if close else ""
