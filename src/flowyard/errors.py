"""One error type for everything a user can fix: it names the thing and the fix."""

from __future__ import annotations


class FlowyardError(Exception):
    """An error with a message written for the person at the terminal.

    `fix` says what to do about it; the CLI prints both and exits non-zero, without a
    traceback, because the traceback would bury the one line that matters. `details` (a
    child process's whole output, say) is printed too, indented, when FLOWYARD_DEBUG=1.
    """

    def __init__(self, message: str, fix: str | None = None, details: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.details = details

    def __str__(self) -> str:
        text = self.message
        if self.fix:
            text += f"\nFix: {self.fix}"
        return text
