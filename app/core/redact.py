"""Host paths out of texts shown to people who may not see them.

A job's error text, or an encoder worker's reply, often names files of the host it ran on
(`/srv/data/saes/x/cfg.json: ...`). `redact_paths` replaces every absolute path (POSIX, `~/...`
or `C:\\...`) with `<path>`, keeping the rest of the message: what went wrong stays readable, where
on the host does not. Relative names (`owner/name` Hub ids, `runs/jobs/job-3`) and URLs are kept.
"""

from __future__ import annotations

import re
from typing import Any

PATH_PLACEHOLDER = "<path>"

_STOP = r"""\s'"`()\[\]{},;<>|"""
_ABSOLUTE = re.compile(
    rf"(?<![\w.:/~\\-])(?:~[\w.-]*)?/[^{_STOP}]+"  # /abs/path, ~/path, ~user/path (not the // of a URL)
    rf"|(?<![\w])[A-Za-z]:\\[^{_STOP}]*"  # C:\\Windows\\path
)


_TRAILING = re.compile(r"[:.,!?]+$")
"""Punctuation that ends a sentence rather than a path ("/x/cfg.json: missing field")."""


def _replace(match: re.Match[str]) -> str:
    trailing = _TRAILING.search(match.group())
    return PATH_PLACEHOLDER + (trailing.group() if trailing else "")


def redact_paths(text: str) -> str:
    """`text` with every absolute path replaced by `<path>`."""
    return _ABSOLUTE.sub(_replace, text)


def redact_value(value: Any) -> Any:
    """`redact_paths` applied to every string inside a JSON-like value (dicts, lists, strings)."""
    if isinstance(value, str):
        return redact_paths(value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(item) for item in value]
    return value
