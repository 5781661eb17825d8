"""One exception family: the message is exactly what the user sees.

The CLI prints ``str(exc)`` on stderr (one line per problem) and exits with
``exc.exit_code``; it never shows a traceback for these.
"""

from __future__ import annotations

# Exit codes (documented in README.md).
EXIT_OK = 0
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
