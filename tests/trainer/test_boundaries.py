"""The trainer stands alone: it never imports the app, a database or a web framework."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import trainer


def test_importing_every_trainer_module_loads_no_app_sql_or_web_module() -> None:
    # Every module at every depth (the layering itself is import-linter's contract in pyproject.toml;
    # this checks what the imports load at run time, lazy imports included).
    modules = sorted(m.name for m in pkgutil.walk_packages(trainer.__path__, "trainer."))
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'app', 'sqlalchemy', 'fastapi', 'starlette'})\n"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert len(modules) >= 20, modules
    assert result.stdout.strip() == ""
