"""`benchmarks/host_path.py` on tiny settings with the bundled model: the host's part of a step
with the decode skipped. It asserts what the run did and that its figures add up, not speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import host_path
from server.bundled import locate
from server.engine.scheduler import _Batch
from tests.support.servers import BUNDLED

pytestmark = pytest.mark.integration


def test_only_the_warm_up_decodes_and_the_timed_steps_are_the_hosts(tmp_path: Path) -> None:
    out = tmp_path / "host.json"
    decode = _Batch.decode
    args = ["--model", str(locate(BUNDLED)), "--levels", "2,3", "--prompt", "8", "--warmup", "3"]
    args += ["--steps", "40", "--n-ctx", "256", "--threads", "1", "--split", "--out", str(out)]
    assert host_path.main([*args, "--variants", "engine-batched,engine-batched-numpy"]) == 0
    assert _Batch.decode is decode  # put back
    levels = json.loads(out.read_text(encoding="utf-8"))["levels"]
    for n in ("2", "3"):
        for run in levels[n].values():
            assert run["steps"] == run["skipped_decodes"] == 40  # every timed step skipped its decode
            assert run["real_decodes"] == 1 + 3  # the prompts' step and the warm-up
            parts = run["sample_us_per_step"] + run["other_us_per_step"]
            assert run["host_us_per_step"] == pytest.approx(parts, abs=0.15)  # each rounded to 0.1
            split = run["split_us_per_step"]
            assert 0 < split["_sample"] <= run["sample_us_per_step"]
            # The engine's own count of the overlapped work is the time of `_overlapped`, once.
            assert 0 < run["overlapped_us_per_step"] <= split["_overlapped"] + 0.5


def test_without_a_file_the_results_go_to_stdout_once(capsys: pytest.CaptureFixture[str]) -> None:
    """Progress is written after each variant only into a file (`keep_progress`): stdout gets
    one JSON document, which a pipe can read."""
    args = ["--model", str(locate(BUNDLED)), "--levels", "2", "--prompt", "8", "--warmup", "2"]
    args += ["--steps", "5", "--n-ctx", "256", "--threads", "1"]
    args += ["--variants", "engine-batched,engine-batched-chain"]
    assert host_path.main(args) == 0
    document = json.loads(capsys.readouterr().out)  # one document, or this raises
    assert set(document["levels"]["2"]) == {"engine-batched", "engine-batched-chain"}
