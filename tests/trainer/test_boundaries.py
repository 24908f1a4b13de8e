"""The trainer stands alone: it never imports the app, a database or a web framework."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trainer


def test_importing_every_trainer_module_loads_no_app_sql_or_web_module() -> None:
    modules = sorted(f"trainer.{p.stem}" for p in Path(trainer.__file__).parent.glob("*.py") if p.stem != "__init__")
    code = (
        f"import sys\nfor m in {modules!r}: __import__(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'app', 'sqlalchemy', 'fastapi', 'starlette'})\n"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert len(modules) >= 6
    assert result.stdout.strip() == ""
