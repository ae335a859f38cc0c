"""`benchmarks/steps_report.py` on results a run left: the in-process long stories' table
(`engine_turns`), from the CPU run recorded under benchmarks/results."""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks import steps_report

RECORDED = Path(__file__).parents[2] / "benchmarks/results/issue16/s10-cpu/turns-smollm2.json"


def test_the_long_stories_table_has_a_row_per_variant(tmp_path: Path) -> None:
    shutil.copy(RECORDED, tmp_path / "turns-smollm2.json")
    text = steps_report.report(tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| engine-batched")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| engine-batched-plain",
        "| engine-batched-hold-separate",
        "| engine-batched-plain#2",
        "| engine-batched-hold-separate#2",
    ]
    assert "4 conversations x 4 turns" in text
    assert "| 27 | 125 / 124 | 27 | 0 |" in rows[1]  # graphs built, micro-batches / steps, held rows
