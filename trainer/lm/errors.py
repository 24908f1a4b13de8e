"""The error every model loader raises, and how a library's error becomes one line of it."""

from __future__ import annotations


class ModelError(ValueError):
    """A model name, folder, device or dtype that cannot be used, with the reason."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message, at most `limit` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
