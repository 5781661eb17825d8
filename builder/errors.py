"""One exception family: the message is exactly what the user sees.

The CLI prints ``str(exc)`` on stderr (one line per problem) and exits with
``exc.exit_code``; it never shows a traceback for these. ``Problem`` (one finding in an input
file) and ``did_you_mean`` live here too, so every layer can report without importing the
matrix loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

# Exit codes (each verb's --help and docs/cli.md, generated from it, list its own).
EXIT_FAILURE = 1  # the work itself failed (a build, a smoke check, a push)
EXIT_USAGE = 2  # bad input: matrix, options, names


class BuilderError(Exception):
    """An error whose message is fit for the user, with an exit code."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(BuilderError):
    """The user asked for something that cannot be: unknown image, bad option."""

    exit_code = EXIT_USAGE


class MatrixError(BuilderError):
    """The matrix (or an override of it) is invalid; carries every problem found."""

    exit_code = EXIT_USAGE

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Problem:
    """One thing wrong in an input file, shown as 'file:line: image 'NAME': key: message'."""

    file: str
    line: int
    image: str | None
    key: str | None
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        parts = [where]
        if self.image:
            parts.append(f"image '{self.image}'")
        if self.key:
            parts.append(self.key)
        return ": ".join(parts) + f": {self.message}"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when none is close."""
    import difflib  # local: only an error needs it, and every command imports this module

    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
