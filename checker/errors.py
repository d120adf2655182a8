"""The exceptions crashcheck raises. One root; user mistakes are kept apart from bugs."""

from __future__ import annotations


class CrashcheckError(Exception):
    """Root of every error crashcheck reports to the user."""


class SpecError(CrashcheckError):
    """A mistake in a spec file: which file, which key, what is wrong."""

    def __init__(self, file: str, message: str, key: str = "") -> None:
        self.file = file
        self.key = key
        self.message = message
        super().__init__(f"{file}: {key + ': ' if key else ''}{message}")


class UsageError(CrashcheckError):
    """A mistake on the command line."""
