"""The load-time warm-up (`BatchedModel.warm_up`, the `warm_up` entry field): it must leave
nothing behind. Its throwaway tokens go into real sequences, so a cache it failed to clear
would be served as a conversation's prefix, or fill a shared pool. On the CPU it is off unless
asked, so these tests ask for it."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest

from server import config as config_module
from server.check import model_report
from server.config import load_config
from server.engine.lanes import Lanes, start_engine
from server.engine.model import BatchedModel
from server.engine.scheduler import Engine
from tests.engine.conftest import batched_entry, engine_on
from tests.engine.test_engine import PROMPTS, Run
from tests.support.servers import write_config

pytestmark = pytest.mark.integration


def _empty(engine: Engine) -> list[int]:
    """The highest cached position of every sequence (-1: none)."""
    model = engine.model
    return [llama_cpp.llama_memory_seq_pos_max(model.memory, s) for s in range(model.n_parallel)]


def _answers(engine: Engine) -> list[str]:
    runs = [Run(engine, prompt, 12) for prompt in PROMPTS[:3]]
    return [run.wait().text for run in runs]


def test_warm_up_leaves_an_empty_cache_and_changes_no_answer(tmp_path: Path) -> None:
    (tmp_path / "cold").mkdir()
    (tmp_path / "warm").mkdir()
    with engine_on(tmp_path / "cold", n_ctx=512, n_parallel=4) as cold:
        assert cold.model.warm_up_ms is None  # the CPU's default: off
        expected = _answers(cold)
    with engine_on(tmp_path / "warm", n_ctx=512, n_parallel=4, warm_up=True) as warm:
        assert warm.model.warm_up_ms is not None and warm.model.warm_up_ms > 0
        assert _empty(warm) == [-1, -1, -1, -1]
        assert all(len(slot.cache) == 0 for slot in warm.slots)
        assert _answers(warm) == expected


def test_warm_up_fits_a_shared_pool_and_leaves_it_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pool only as large as one slot's context: the chunk leaves room for every slot's row,
    so neither decode fails, and afterwards a prompt of nearly the whole pool still fits (cells
    the warm-up left would make its decode fail)."""
    entry = dict(n_ctx=256, n_parallel=4, kv_unified=True, kv_pool=256, warm_up=True)
    with caplog.at_level("WARNING", logger="storybench.server"), engine_on(tmp_path, **entry) as warm:
        assert _empty(warm) == [-1, -1, -1, -1]
        assert "warm-up decode" not in caplog.text
        words = ["word"]
        while len(warm.model.completion_prompt(" ".join(words))) < 240:
            words.append("word")
        run = Run(warm, " ".join(words), 8).wait()
        assert run.gen.finish_reason == "length", run.events[-1]


def test_every_lane_warms_up_its_own_context(tmp_path: Path) -> None:
    """A lane is a context of its own (`BatchedModel.lane`): it warms up and is emptied too."""
    entry = batched_entry(n_ctx=256, n_parallel=4, lanes=2, warm_up=True)
    running = start_engine(BatchedModel(load_config(write_config(tmp_path / "c.json", [entry])).models[0]))
    assert isinstance(running, Lanes)
    try:
        assert all(e.model.warm_up_ms is not None for e in running.engines)
        assert [_empty(e) for e in running.engines] == [[-1, -1], [-1, -1]]
    finally:
        running.close()
        running.close_models()


def test_warm_up_is_on_by_default_only_with_gpu_layers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_module, "gpu_offload_supported", lambda: True)
    entries = [
        batched_entry("gpu", n_gpu_layers=-1),
        batched_entry("cpu", n_gpu_layers=0),
        batched_entry("gpu-off", n_gpu_layers=-1, warm_up=False),
        batched_entry("cpu-on", n_gpu_layers=0, warm_up=True),
    ]
    models = load_config(write_config(tmp_path / "c.json", entries)).models
    assert [m.warm_up for m in models] == [True, False, False, True]
    engine_lines = [next(line for line in model_report(m, False)[0] if "engine" in line) for m in models]
    assert ["a warm-up decode at load" in line for line in engine_lines] == [True, False, False, True]
