"""`benchmarks/tail_host.py`: the sampling tail's host timings, on a tiny vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import tail_host


def test_tail_host_times_every_case_at_every_level(tmp_path: Path) -> None:
    out = tmp_path / "tail.json"
    assert (
        tail_host.main(
            ["--rows", "2,5", "--reps", "3", "--n-vocab", "4000", "--sweep-mb", "1", "--out", str(out)]
        )
        == 0
    )
    doc = json.loads(out.read_text())
    assert [level["rows"] for level in doc["microseconds"]] == [2, 5]
    for level in doc["microseconds"]:
        for case in ("penalize_matched", "penalize_counted", "finish_prepared"):
            assert level[case] > 0 and level[case + "_after_sweep"] > 0
    assert doc["settings"]["n_vocab"] == 4000
