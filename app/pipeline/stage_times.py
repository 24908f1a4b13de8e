"""How long each stage of a resumable run took: timed as it runs, kept in OUT/timings.json.

A stage that a later run skips (its result was kept) keeps the seconds it took when it ran, so the
summary at the end of `jumpscope demo` always shows the whole first run, with the stages this run
did marked as such.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

TIMINGS_FILE = "timings.json"
"""Seconds per stage, beside the run's stages (merged over runs: a stage's latest measured time)."""


@dataclass
class StageTimes:
    """Wall time per named stage; `start` a stage, `stop` (or start the next) to record it."""

    folder: Path
    """Where TIMINGS_FILE is read from and written to."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Every stage's latest measured time, this run's and earlier runs'."""
    this_run: list[str] = field(default_factory=list)
    """The stages measured in this run, in order."""
    _current: str | None = None
    _started: float = 0.0

    @classmethod
    def load(cls, folder: Path) -> StageTimes:
        path = folder / TIMINGS_FILE
        try:
            seconds = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            seconds = {}  # an unreadable file only loses earlier runs' figures
        valid = {k: float(v) for k, v in seconds.items() if isinstance(k, str) and isinstance(v, int | float)}
        return cls(folder=folder, seconds=valid)

    def start(self, stage: str) -> None:
        """Begin timing `stage` (ending the stage before it)."""
        self.stop()
        self._current, self._started = stage, time.perf_counter()

    def stop(self) -> None:
        """End the current stage, if any, and save every stage's time."""
        if self._current is None:
            return
        self.seconds[self._current] = time.perf_counter() - self._started
        self.this_run.append(self._current)
        self._current = None
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / TIMINGS_FILE).write_text(json.dumps(self.seconds, indent=2) + "\n")

    def rows(self, order: list[str]) -> list[tuple[str, float | None, bool]]:
        """(stage, seconds or None if never measured, measured in this run) for each stage of `order`."""
        return [(stage, self.seconds.get(stage), stage in self.this_run) for stage in order]
