"""The exceptions crashcheck raises. One root; user mistakes are kept apart from bugs."""

from __future__ import annotations

from models.errors import CrashcheckError  # the one root, shared with the models

__all__ = ["CrashcheckError", "SpecError", "UsageError", "one_line"]


class SpecError(CrashcheckError):
    """A mistake in a spec file: which file, which key, what is wrong."""

    def __init__(self, file: str, message: str, key: str = "") -> None:
        self.file = file
        self.key = key
        self.message = message
        super().__init__(f"{file}: {key + ': ' if key else ''}{message}")


class UsageError(CrashcheckError):
    """A mistake on the command line."""


def one_line(text: str) -> str:
    """`text` as one printable line: control characters (a newline, a NUL from a spec
    key) are shown as escapes, so an error is always exactly one line."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
