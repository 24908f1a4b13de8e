"""benchmarks/massive_tokens.py, the README's batch-by-batch check of massive activations, runs with --tiny.

The real run is by hand on the sweep's cache; this keeps the script working (the census, two sweep
points logged every step, the clipped run meeting every injected outlier once per epoch).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks.runner import run_benchmark


@pytest.mark.slow
def test_the_tiny_massive_token_check_finds_and_clips_every_injected_outlier(tmp_path: Path) -> None:
    result = run_benchmark("massive_tokens.py", "--tiny", "--out", str(tmp_path))
    doc = json.loads((tmp_path / "results.json").read_text())
    census, (as_is, clipped) = doc["census"], doc["runs"]
    assert census["tokens"] == 16_384 and census["over"]["4x"] == len(range(0, 16_384, 300))  # one in 300 injected
    assert as_is["ratio"] is None and sum(as_is["clipped"]) == 0
    assert clipped["ratio"] == 4.0 and clipped["steps"] == 64  # one epoch of 16,384 tokens at batch 256
    assert sum(clipped["clipped"]) == census["over"]["4x"]  # every outlier, each once
    assert "massive tokens in the batch" in result.stdout
