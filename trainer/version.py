"""The installed jumpscope version, written into every saved SAE and shown by the server."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def jumpscope_version() -> str:
    """The installed package's version; "0+unknown" when running from an uninstalled source tree."""
    try:
        return version("jumpscope")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "0+unknown"
