"""Rows the batched top-k leaves to their request's llama.cpp chain, sampled on the engine's
sampling threads (`scheduler.POOL_CHAIN_MIN_ROWS`): the same tokens as one after another on the
engine's thread and as llama.cpp's whole chain on the CPU, with and without penalties after the
batched top-k; and the engine's own threshold between that chain and the tail over all rows."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from server.engine import scheduler
from server.engine.scheduler import Engine
from tests.engine.conftest import engine_on
from tests.engine.test_graph_tail import run_jobs


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """Every generation finished by its chain (`host_tail_min_rows` above any step's rows), with
    two sampling threads."""
    folder: Path = tmp_path_factory.mktemp("pooled-chains")
    with engine_on(folder, n_ctx=512, n_parallel=4, n_threads_sampling=2, backend_sampling=True) as running:
        running.host_tail_min_rows = 1000
        yield running


@pytest.fixture
def threads_seen(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The threads `llama_sampler_sample` ran on, by name prefix."""
    seen: Counter[str] = Counter()
    real = llama_cpp.llama_sampler_sample

    def counted(*args: Any) -> int:
        seen[threading.current_thread().name.split("_")[0].split(":")[0]] += 1
        return int(real(*args))

    monkeypatch.setattr(llama_cpp, "llama_sampler_sample", counted)
    return seen


@pytest.mark.parametrize("penalties", [False, True], ids=["plain", "penalized"])
def test_pooled_chains_pick_what_one_thread_picks(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, threads_seen: Counter[str], penalties: bool
) -> None:
    """Four requests with their own settings (k = 40 and 20 in one step), their rows shared by
    the engine's thread and a sampling thread: the tokens of the same engine one row after
    another, and of llama.cpp's whole chain on the CPU."""
    monkeypatch.setattr(scheduler, "POOL_ROWS_PER_THREAD", 1)
    engine.pool_chain_min_rows = None
    before = engine.stats.pooled_rows
    one_thread = run_jobs(engine, backend=True, whole=False, tokens=60, penalties=penalties)
    assert engine.stats.pooled_rows == before
    assert threads_seen["sampler"] == 0
    engine.pool_chain_min_rows = 2
    try:
        pooled = run_jobs(engine, backend=True, whole=False, tokens=60, penalties=penalties)
    finally:
        engine.pool_chain_min_rows = scheduler.POOL_CHAIN_MIN_ROWS
    assert engine.stats.pooled_rows - before >= sum(len(t) for t in pooled) - 8  # the prompt steps' rows
    assert threads_seen["sampler"] >= 40  # half the rows of the steps with four of them
    assert threads_seen["engine"] >= 40
    assert pooled == one_thread
    assert pooled == run_jobs(engine, backend=False, whole=False, tokens=60, penalties=penalties)
    assert all(len(t) >= 8 for t in pooled)


def test_few_rows_stay_on_the_engine_s_thread(engine: Engine, threads_seen: Counter[str]) -> None:
    """Below `pool_chain_min_rows` rows a step wakes no thread."""
    engine.pool_chain_min_rows = 5
    try:
        before = engine.stats.pooled_rows
        run_jobs(engine, backend=True, whole=False, tokens=20)
    finally:
        engine.pool_chain_min_rows = scheduler.POOL_CHAIN_MIN_ROWS
    assert engine.stats.pooled_rows == before
    assert threads_seen["sampler"] == 0 and threads_seen["engine"] > 0


def test_the_engine_s_own_threshold_picks_the_tail(engine: Engine) -> None:
    """`host_tail_min_rows` is read per engine at admission (a benchmark alternates it): at 0
    every generation's tail runs over all rows in numpy, and the tokens stay the chain's."""
    chained = run_jobs(engine, backend=True, whole=False, tokens=40, penalties=True)
    before = engine.stats.tail_rows
    engine.host_tail_min_rows = 0
    try:
        over_rows = run_jobs(engine, backend=True, whole=False, tokens=40, penalties=True)
    finally:
        engine.host_tail_min_rows = 1000
    assert engine.stats.tail_rows - before >= sum(len(t) for t in over_rows) - 4
    assert over_rows == chained
