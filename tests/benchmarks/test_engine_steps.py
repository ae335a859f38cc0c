"""`benchmarks/engine_steps.py` on tiny settings with the bundled model: what a variant's name
switches. It asserts what the run did (the counters it reports), not its speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import engine_steps
from server.bundled import locate
from server.engine import graph_tail
from tests.support.servers import BUNDLED

pytestmark = pytest.mark.integration


def test_packed_and_unpacked_variants_alternate_in_one_process(tmp_path: Path) -> None:
    """`-packed` makes that run's graphs write their tokens into one array of ours, the other
    runs keep the module's default (row by row), and the default is back after the runs."""
    out = tmp_path / "steps.json"
    default = graph_tail.PACKED
    args = ["--model", str(locate(BUNDLED)), "--levels", "2", "--prompt", "8", "--gen", "8"]
    args += ["--n-ctx", "128", "--threads", "1", "--backend-sampling", "1", "--out", str(out)]
    variants = "engine-sampled-packed,engine-sampled,engine-sampled-unpacked"
    assert engine_steps.main([*args, "--variants", variants]) == 0
    assert graph_tail.PACKED is default is False
    runs = json.loads(out.read_text(encoding="utf-8"))["levels"]["2"]
    assert runs["engine-sampled-packed"]["graph_tail_builds"]["packed"] > 0
    assert runs["engine-sampled"]["graph_tail_builds"]["packed"] == 0
    assert runs["engine-sampled-unpacked"]["graph_tail_builds"]["packed"] == 0
    for run in runs.values():  # every token picked in the graph, packed or not, but the first
        assert run["tokens"] == 2 * 8
        assert run["graph_tail_rows"] >= 2 * 7
