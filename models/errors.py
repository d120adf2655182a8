"""The root of every error crashcheck raises on purpose (the engine's `checker.errors`
builds on it): a model's POSIX error, a bad option, a broken plug-in, a spec mistake."""

from __future__ import annotations


class CrashcheckError(Exception):
    """Root of every error crashcheck reports to the user."""
