"""The error of an LLM answer that holds no usable result."""

from __future__ import annotations


class ParseError(ValueError):
    """An LLM answer had no usable content; `raw` keeps the answer as written, `reason` says why."""

    def __init__(self, reason: str, raw: str) -> None:
        super().__init__(f"{reason}; the answer was: {raw[:200]!r}")
        self.reason = reason
        """What was wrong with the answer, in a few words."""
        self.raw = raw
        """The answer's full text."""
