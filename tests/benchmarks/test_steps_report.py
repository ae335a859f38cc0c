"""`benchmarks/steps_report.py` on results a run left: the in-process long stories' table
(`engine_turns`), from the CPU run recorded under benchmarks/results."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

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


def test_the_roofline_uses_the_bandwidth_of_the_gpu_the_log_names(tmp_path: Path) -> None:
    """An H100's call is measured against 3.35 TB/s, not the H200's 4.8: the same step is a
    larger share of the smaller bandwidth. Without a log, the H200."""
    assert steps_report.gpu(tmp_path) == ("H200", 4.8e12)
    (tmp_path / "device.log").write_text(
        "name, memory.total [MiB]\nNVIDIA H100 80GB HBM3, 81559 MiB, 580.159.04\n", encoding="utf-8"
    )
    name, bandwidth = steps_report.gpu(tmp_path)
    assert (name, bandwidth) == ("H100", 3.35e12)
    h100 = steps_report.roofline_share("llama-1b", 16, 0.003, 64, 256, bandwidth)
    h200 = steps_report.roofline_share("llama-1b", 16, 0.003, 64, 256, 4.8e12)
    assert h100 == pytest.approx(h200 * 4.8 / 3.35)


@pytest.mark.integration
def test_a_steps_run_cut_short_keeps_what_finished_and_reports_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`engine_steps` writes its file after every variant, so a device call's deadline keeps what
    finished; the report shows the variants that did not finish as "-" instead of failing."""
    from benchmarks import engine_steps
    from server.bundled import locate
    from tests.support.servers import BUNDLED

    real, calls = engine_steps.engine_run, []

    def cut_after_one(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) > 3:  # the second level's second variant
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_steps, "engine_run", cut_after_one)
    out = tmp_path / "steps-smollm2.json"
    args = ["--model", str(locate(BUNDLED)), "--levels", "2,3", "--prompt", "8", "--gen", "8"]
    args += ["--n-ctx", "64", "--threads", "1", "--variants", "engine-batched,engine-batched#2"]
    with pytest.raises(KeyboardInterrupt):
        engine_steps.main([*args, "--out", str(out)])
    levels = json.loads(out.read_text(encoding="utf-8"))["levels"]
    assert {n: list(row) for n, row in levels.items()} == {
        "2": ["engine-batched", "engine-batched#2"],
        "3": ["engine-batched"],
    }
    rows = [line for line in steps_report.report(tmp_path).splitlines() if line.startswith("| 3 |")]
    assert rows[0] == "| 3 | - | ..."  # no batched-bench on the CPU
    # The per-step table: engine-batched's step, engine-batched#2 never ran, no roofline reference.
    assert re.fullmatch(r"\| 3 \| [\d.]+ / [\d.]+ / [\d.]+ \(nan%\) \| - \| - \|", rows[2])
