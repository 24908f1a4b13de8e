"""Atomic file writes: a crash mid-write never leaves a half-written file behind.

The new content goes to a temp file beside the target, is fsynced, then renamed over the
target (a rename within one folder is atomic on POSIX and Windows). Used by the SAE formats,
training checkpoints and metrics, and the converted-model cache.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write_bytes(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp) on a temp file beside `path`, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically (see atomic_write_bytes)."""
    atomic_write_bytes(path, lambda tmp: tmp.write_text(text))
