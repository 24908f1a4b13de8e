"""Where jumpscope caches models it builds (the converted Gemma 3 270M, the tiny test model)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "JUMPSCOPE_CACHE_DIR"
"""Environment variable that overrides the user cache folder."""


def default_cache_dir() -> Path:
    """$JUMPSCOPE_CACHE_DIR, else the platform's user cache folder for jumpscope (~/.cache/jumpscope)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path.home() / ".cache" / "jumpscope"
    return Path(user_cache_dir("jumpscope", appauthor=False))
