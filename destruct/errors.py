"""Errors with an exit code: a user mistake (2) and a stage that is not built yet (3).

The CLI prints the message of these as one line and exits with the code; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of a library's exception message (or its type's name), for a one-line
    user error: libraries go on with advice that would not help here (plugins to install,
    remote code to allow)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class DestructError(Exception):
    """Base of the errors the CLI reports as one clear message."""

    exit_code = 1


class UserError(DestructError):
    """Bad input: a shot key, a mesh, a path, a flag. The message names the problem and the fix."""

    exit_code = 2


class StageNotBuilt(DestructError):
    """A pipeline stage that does not exist yet in this version of destruct."""

    exit_code = 3


class StageSkipped(Exception):
    """Raised by a stage that cannot run now for a reason a later run may fix (e.g. no weights)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
