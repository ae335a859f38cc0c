"""`benchmarks/prompt_cost.py` on tiny settings with the bundled model. It asserts what the
benchmark relies on, not speed: each measurement is taken back out of the cache, so every one
sees the slots at the same depth, and the report names every shape that fits the slots."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import llama_cpp
import pytest

from benchmarks import prompt_cost
from benchmarks.engine_steps import _Batch, load_model
from server.bundled import locate
from tests.support.servers import BUNDLED

pytestmark = pytest.mark.integration


def test_every_measurement_leaves_the_slots_at_their_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompt_cost, "SHAPES", [(1, 8), (2, 4), (4, 2)])
    args = Namespace(
        model=locate(BUNDLED), n_ctx=256, n_batch=64, n_ubatch=64, gpu=False, threads=2, kv_unified=False,
        backend_sampling=None, sampling_threads=None, warm_up=None,
    )  # fmt: skip
    model = load_model(args, 3)
    try:
        prompt_cost._fill(model, _Batch(model.n_batch), 3, 0, 40)
        result = prompt_cost.measure(model, 3, 40, repeats=2)
        for seq in range(3):
            assert llama_cpp.llama_memory_seq_pos_max(model.memory, seq) == 39, seq
    finally:
        model.close()
    assert list(result["shapes"]) == ["1x8", "2x4"]  # four sequences do not fit three slots
    assert [r["tokens"] for r in result["shapes"].values()] == [8, 8]
    assert all(r["ms"] >= r["call_ms"] > 0 for r in result["shapes"].values())
    assert result["decode_step_ms"] > 0


def test_the_report_holds_each_depth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompt_cost, "SHAPES", [(1, 16), (2, 8)])
    out = tmp_path / "cost.json"
    args = ["--model", str(locate(BUNDLED)), "--slots", "2", "--n-ctx", "256", "--depths", "0,32"]
    assert prompt_cost.main([*args, "--repeats", "1", "--threads", "2", "--out", str(out)]) == 0
    depths = json.loads(out.read_text(encoding="utf-8"))["depths"]
    assert list(depths) == ["0", "32"]
    assert all(list(d["shapes"]) == ["1x16", "2x8"] for d in depths.values())


def test_depths_that_leave_no_room_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        prompt_cost.main(["--model", "none.gguf", "--n-ctx", "1024", "--depths", "0,700"])
    message = "--depths must rise and leave 512 tokens of the 1024-token context: 0,700"
    assert message in capsys.readouterr().err
