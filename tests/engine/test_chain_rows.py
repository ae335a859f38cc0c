"""Rows given to their llama.cpp chain directly (`server/engine/chain_rows.py`, the engine's
`direct_chains`): the same tokens as `llama_sampler_sample` and as llama.cpp's whole chain on the
CPU, with rows of two sizes of k in one step, with and without penalties after the batched
top-k; rows it cannot read go back to `llama_sampler_sample` untouched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.engine import chain_rows
from server.engine.scheduler import Engine
from tests.engine.conftest import engine_on
from tests.engine.test_graph_tail import run_jobs


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """Every generation finished by its chain (`host_tail_min_rows` above any step's rows)."""
    folder: Path = tmp_path_factory.mktemp("chain-rows")
    with engine_on(folder, n_ctx=512, n_parallel=4, n_threads_sampling=2, backend_sampling=True) as running:
        running.host_tail_min_rows = 1000
        yield running


@pytest.mark.parametrize("penalties", [False, True], ids=["plain", "penalized"])
def test_direct_chains_pick_what_llama_sampler_sample_picks(engine: Engine, penalties: bool) -> None:
    """Four requests with their own settings (k = 40 and 20 in one step): the tokens of the
    same engine through `llama_sampler_sample`, and of llama.cpp's whole chain on the CPU."""
    engine.direct_chains = False
    before = engine.stats.chain_rows
    through_sample = run_jobs(engine, backend=True, whole=False, tokens=60, penalties=penalties)
    assert engine.stats.chain_rows == before
    engine.direct_chains = True
    try:
        direct = run_jobs(engine, backend=True, whole=False, tokens=60, penalties=penalties)
    finally:
        engine.direct_chains = False
    given = engine.stats.chain_rows - before
    assert given >= sum(len(t) for t in direct) - 4  # all but a few first tokens (prompt steps)
    assert direct == through_sample
    assert direct == run_jobs(engine, backend=False, whole=False, tokens=60, penalties=penalties)
    assert all(len(t) >= 8 for t in direct)


def test_rows_it_cannot_read_go_to_llama_sampler_sample(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When llama.cpp's buffers are not laid out as expected (`read_rows` gives None), no chain
    is touched and every row is sampled the usual way: the same tokens."""
    monkeypatch.setattr(chain_rows, "read_rows", lambda *args: None)
    expected = run_jobs(engine, backend=False, whole=False, tokens=30)
    engine.direct_chains = True
    before, fallbacks = engine.stats.chain_rows, engine.stats.tail_fallbacks
    try:
        got = run_jobs(engine, backend=True, whole=False, tokens=30)
    finally:
        engine.direct_chains = False
    assert got == expected
    assert engine.stats.chain_rows == before
    assert engine.stats.tail_fallbacks > fallbacks


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
