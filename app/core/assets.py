"""Where jumpscope's non-Python files are: templates/, static/ and migrations/.

In a source checkout (and an editable install) they sit beside the packages. A wheel installs
them as data files under PREFIX/share/jumpscope/ (pyproject.toml, [tool.setuptools.data-files]),
where PREFIX is the environment's (or, for `pip install --user`, the user's) data directory.
"""

from __future__ import annotations

import site
import sys
import sysconfig
from pathlib import Path

ASSETS = ("templates", "static", "migrations")
SOURCE_ROOT = Path(__file__).resolve().parents[2]
SHARE = Path("share") / "jumpscope"


def prefixes() -> list[Path]:
    """Data directories a wheel may have installed into, most specific first."""
    found = [Path(sysconfig.get_path("data")), Path(sys.prefix)]
    user_base = site.getuserbase()
    if user_base:
        found.append(Path(user_base))
    return list(dict.fromkeys(found))


def asset_dir(name: str, source_root: Path = SOURCE_ROOT, search: list[Path] | None = None) -> Path:
    """The folder of one asset kind: the checkout's if there is one, else the installed copy."""
    if name not in ASSETS:
        raise ValueError(f"unknown asset folder {name!r}: one of {', '.join(ASSETS)}")
    candidates = [source_root / name] + [prefix / SHARE / name for prefix in (search or prefixes())]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"jumpscope's {name}/ folder is missing (looked in {tried}); reinstall jumpscope")
