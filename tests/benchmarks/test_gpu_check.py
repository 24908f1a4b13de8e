"""benchmarks/gpu_check.py, the prepared one-shot GPU check, runs on the CPU with --tiny shapes.

The real run happens by hand on a GPU machine; this keeps the script from rotting between runs
(an architecture gaining a sparse step, a changed trainer or index-pass API).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks.runner import run_benchmark


@pytest.mark.slow
def test_the_tiny_gpu_check_runs_every_section_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    result = run_benchmark("gpu_check.py", "--tiny", "--device", "cpu", "--out", str(out), timeout=300)
    data = json.loads(out.read_text())
    sections = data["sections"]
    assert list(sections) == [
        "train_step", "same_results", "encode", "feature_stats", "lm_index_pass", "short_recipe_fit",
    ]  # fmt: skip
    for name, section in sections.items():
        assert "error" not in section, f"{name}: {section.get('traceback')}"
        assert not section.get("skipped"), name
    rows = sections["train_step"]["rows"]
    assert {row["arch"] for row in rows} == set(sections["train_step"]["architectures"])
    # Every step runs but the sparse one under bf16 autocast, which the trainer never takes.
    timed = [row for row in rows if not (row["step"] == "sparse" and row["mode"] == "bf16")]
    assert timed and all("tokens_per_s" in row for row in timed), [row.get("error") for row in timed]
    assert sections["same_results"]["all_pass"]
    assert all("error" not in row for row in sections["encode"]["rows"])
    assert sections["feature_stats"]["device_tokens_per_s"] > 0
    assert sections["lm_index_pass"]["index_pass"]["sequences"] > 0
    fits = sections["short_recipe_fit"]["rows"]
    assert len(fits) == 4 and all("error" not in row for row in fits), [row.get("error") for row in fits]
    assert all(row["finite"] and row["newly_dead_events"] > 0 for row in fits)  # latents died: seeding ran
    assert any(row["sparse_steps_logged"] > 0 for row in fits)  # step auto switched to the sparse step
    assert "SUMMARY" in result.stdout
