"""The batched top-k in the decode graph (`server/engine/graph_top_k.py`) and the chain after it
over all rows at once (`server/engine/host_tail.py`), the engine's GPU sampling path.

Both replace llama.cpp's own code on the hot path, so both must pick what llama.cpp picks:
the tail against llama.cpp's chain on synthetic rows (every parameter, seeded draws in
sequence, no model), and the whole path through the engine with the bundled model against
llama.cpp's whole chain on the CPU, token for token. On the CPU backend the graph runs the same
ggml operations as on a GPU, so this pins its result; its speed is a GPU benchmark
(BENCHMARKS.md, issue 16).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from llama_cpp import _internals as internals

from server.config import load_config
from server.engine import graph_top_k
from server.engine.host_sampling import TOKEN_DATA
from server.engine.host_tail import TailPlan, finish
from server.engine.model import BatchedModel
from server.engine.sampling import SamplingParams, build_chains
from server.engine.scheduler import Engine
from tests.engine.conftest import batched_entry, engine_on
from tests.engine.test_backend_sampling import Job
from tests.engine.test_engine import PROMPTS
from tests.support.servers import write_config

# (top_p, min_p, temperature): each step of the tail on and off, and extreme temperatures.
PARAMS = [
    (0.95, 0.05, 0.8),
    (1.0, 0.0, 1.0),  # neither top-p nor min-p: the draw alone
    (0.5, 0.0, 1.5),
    (1.0, 0.2, 0.3),
    (0.9, 0.1, 5.0),
]


def llama_tail(top_p: float, min_p: float, temp: float, seed: int) -> internals.LlamaSampler:
    chain = internals.LlamaSampler()
    chain.add_top_p(top_p, 1)
    chain.add_min_p(min_p, 1)
    chain.add_temp(temp)
    chain.add_dist(seed)
    return chain


def llama_pick(chain: internals.LlamaSampler, ids: np.ndarray, logits: np.ndarray) -> int:
    data = np.zeros(len(ids), TOKEN_DATA)
    data["id"], data["logit"] = ids, logits
    array = llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(ids), selected=-1, sorted=False
    )
    llama_cpp.llama_sampler_apply(chain.sampler, ctypes.byref(array))
    return int(data["id"][array.selected])


Rows = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]


def assert_tail_draws_as_llama(
    settings: list[tuple[float, float, float]], k: int, seed: int, rows: Rows
) -> None:
    """Steps of one row per setting (`rows(rng, step, k)`: ids and logits, each row sorted):
    every token `finish` picks equals llama.cpp's chain's, so the per-request generators stay in
    step with llama.cpp's `std::mt19937` draw after draw."""
    rng = np.random.default_rng(seed)
    plans = [TailPlan(k, p, m, t, seed=seed + i) for i, (p, m, t) in enumerate(settings)]
    chains = [llama_tail(p, m, t, seed + i) for i, (p, m, t) in enumerate(settings)]
    try:
        for step in range(200):
            ids, logits = rows(rng, step, k)
            assert finish(ids, logits, plans) == [
                llama_pick(c, ids[r], logits[r]) for r, c in enumerate(chains)
            ]
    finally:
        for c in chains:
            c.close()


@pytest.mark.parametrize("k", [1, 2, 40])
def test_the_tail_draws_what_llama_cpps_chain_draws(k: int) -> None:
    """200 steps of 5 rows with different settings."""

    def rows(rng: np.random.Generator, _step: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        logits = -np.sort(-(rng.standard_normal((len(PARAMS), k)) * 3).astype(np.float32), axis=1)
        if k == 1:
            return rng.integers(0, 50_000, size=(len(PARAMS), 1)).astype(np.int32), logits
        return rng.choice(50_000, size=(len(PARAMS), k), replace=False).astype(np.int32), logits

    assert_tail_draws_as_llama(PARAMS, k, 100, rows)


# Settings at the edges of each step: top-p of 0 (keep one), 1 and past 1 (off: llama.cpp keeps
# every candidate even where the running sum reaches 1 early, as it does in float32 on a steep
# row), min-p of 1 (only the largest) and below 0 (off), a near-greedy and a flat temperature.
EDGES = [(0.0, 0.0, 1.0), (1.5, 1.0, 0.7), (0.3, -0.5, 0.05), (1.0, 0.99, 2.0), (1.0, 0.0, 50.0)]


@pytest.mark.parametrize("k", [1, 3, 40])
def test_the_tail_at_the_edges_of_its_settings_draws_what_llama_cpps_chain_draws(k: int) -> None:
    """The tail finds where each step stops from sorted rows and rising sums (`finish_prepared`):
    settings that keep one candidate, all of them, or switch a step off pick llama.cpp's token.
    The values of a row are distinct: llama.cpp's top-p sorts the candidates again, and puts
    equal logits in an order of its own."""

    def rows(rng: np.random.Generator, step: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        spread = (0.01, 0.2, 2.0)[step % 3]  # many candidates near the top, few, or one
        values = np.stack([rng.choice(1000, k, replace=False) * spread for _ in EDGES]) - 5
        ids = np.stack([rng.permutation(50_000)[:k] for _ in EDGES]).astype(np.int32)
        return ids, -np.sort(-values.astype(np.float32), axis=1)

    assert_tail_draws_as_llama(EDGES, k, 300, rows)


def job_params(i: int) -> SamplingParams:
    top_p, min_p, temp = PARAMS[i % len(PARAMS)]
    top_k = (40, 20)[i % 2]  # rows of one step with different k
    return SamplingParams(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p, seed=7 + i)


@pytest.fixture(scope="module")
def four_slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    folder = tmp_path_factory.mktemp("graph-top-k")
    with engine_on(folder, n_ctx=512, n_parallel=4, n_threads_sampling=2, backend_sampling=True) as running:
        yield running


def run_jobs(
    engine: Engine, backend: bool, n: int = 4, tokens: int = 40, batched: bool = True
) -> list[list[int]]:
    jobs = []
    for i in range(n):
        params = job_params(i)
        chains = build_chains(engine.model.model, params, backend, batched_top_k=batched)
        jobs.append(Job(engine, PROMPTS[i], tokens, params, chains=chains))
    return [job.wait().gen.tokens for job in jobs]


@pytest.mark.parametrize("tail_from", [0, 1000], ids=["tail-over-rows", "tail-row-by-row"])
def test_the_engine_samples_what_llama_cpps_cpu_chain_samples(
    four_slots: Engine, tail_from: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four requests together, each with other settings: the batched top-k in the graph, then
    the tail over all rows at once (or, below `host_tail_min_rows` generations, llama.cpp's chain
    row by row) give, token for token, what llama.cpp's whole chain gives on the CPU."""
    monkeypatch.setattr(four_slots, "host_tail_min_rows", tail_from)
    stats = four_slots.stats
    before, sampled, tail_rows = graph_top_k.counts(), stats.backend_sampled, stats.tail_rows
    ours = run_jobs(four_slots, backend=True)
    after = graph_top_k.counts()
    assert after["matrices"] > before["matrices"]  # the step's matrix, not row by row
    assert after["build_us"] > before["build_us"]  # Python's share of those graph builds, timed
    assert stats.backend_sampled - sampled == sum(len(t) for t in ours)
    assert (stats.tail_rows - tail_rows == stats.backend_sampled - sampled) == (tail_from == 0)
    assert stats.tail_fallbacks == 0
    reference = run_jobs(four_slots, backend=False)
    assert ours == reference
    assert all(len(t) >= 8 for t in ours)


class _Params(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def graph_top_k_on_cpu(rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Build the sampler's top-k over `rows` in a ggml graph of its own and compute it with
    ggml's CPU backend: (ids, values), each (rows, k)."""
    assert graph_top_k.available()
    ggml = graph_top_k._Ggml()
    lib = ggml.lib
    folder = Path(llama_cpp.__file__).parent / "lib"
    cpu = ctypes.CDLL(str(folder / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    vp = ctypes.c_void_p
    lib.ggml_init.restype, lib.ggml_init.argtypes = vp, [_Params]
    lib.ggml_new_tensor_2d.restype = vp
    lib.ggml_new_tensor_2d.argtypes = [vp, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    lib.ggml_new_graph.restype, lib.ggml_new_graph.argtypes = vp, [vp]
    lib.ggml_build_forward_expand.argtypes = [vp, vp]
    lib.ggml_free.argtypes = [vp]
    cpu.ggml_graph_compute_with_ctx.argtypes = [vp, vp, ctypes.c_int]
    ctx = lib.ggml_init(_Params(256 * 1024 * 1024, None, False))
    try:
        m, v = rows.shape
        x = lib.ggml_new_tensor_2d(ctx, graph_top_k.GGML_TYPE_F32, v, m)
        ctypes.memmove(graph_top_k._tensor(x).data, rows.ctypes.data, rows.nbytes)
        ids, vals = graph_top_k.build_top_k(ggml, ctx, x, k)
        gf = lib.ggml_new_graph(ctx)
        lib.ggml_build_forward_expand(gf, ids)
        lib.ggml_build_forward_expand(gf, vals)
        cpu.ggml_graph_compute_with_ctx(ctx, gf, 2)
        n = graph_top_k._tensor(ids).ne[0]
        out_ids = np.ctypeslib.as_array(
            (ctypes.c_int32 * (n * m)).from_address(graph_top_k._tensor(ids).data)
        )
        out_vals = np.ctypeslib.as_array(
            (ctypes.c_float * (n * m)).from_address(graph_top_k._tensor(vals).data)
        )
        return out_ids.reshape(m, n).copy(), out_vals.reshape(m, n).copy()
    finally:
        lib.ggml_free(ctx)


@pytest.mark.parametrize("preselect", [256, 0], ids=["preselect", "sort-all"])
@pytest.mark.parametrize(
    ("vocab", "block", "k"),
    [
        (49_152, 1024, 40),  # the bundled vocabulary: 48 whole blocks
        (128_256, 1024, 40),  # Llama 3's: 256 values past the last whole block
        (49_152, 1000, 40),  # values past the last block in the first round
        (49_152, 300, 40),  # three rounds
        (49_152, 1024, 1),
        (128_256, 1024, 256),  # MAX_K
        (700, 1024, 40),  # one block: a single sort
        (50_000, 1024, 40),  # values past the last block of the first pass (`PRESELECT`)
    ],
)
def test_the_graph_keeps_the_k_largest_of_every_row(
    vocab: int, block: int, k: int, preselect: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exactly the k largest values of each row, largest first, each with its own token id;
    ties (their order is not fixed, as in llama.cpp's top-k), banned tokens and large values at
    the very end of the row included."""
    monkeypatch.setattr(graph_top_k, "BLOCK", block)
    monkeypatch.setattr(graph_top_k, "PRESELECT", preselect)
    rng = np.random.default_rng(vocab + block + k)
    rows = (rng.standard_normal((6, vocab)) * 3).astype(np.float32)
    rows[1, -5:] = 100.0  # the largest values past the last whole block
    rows[2] = np.round(rows[2])  # many ties
    rows[3, : vocab // 2] = -np.inf  # banned tokens
    rows[4, 500:520] = 50.0  # tied maxima inside one block
    ids, vals = graph_top_k_on_cpu(rows, k)
    assert ids.shape == vals.shape == (6, k)
    for r in range(6):
        assert vals[r].tolist() == (-np.sort(-rows[r]))[:k].tolist(), r  # the k largest, in order
        assert len(set(ids[r].tolist())) == k  # distinct tokens
        assert rows[r, ids[r]].tolist() == vals[r].tolist()  # each value is its token's


def test_a_lone_row_sorts_every_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first pass pays only with several rows (on an H200 it cost a lone sequence 5-7%):
    one row goes straight to the block sorts, and still gets its exact k largest."""
    monkeypatch.setattr(graph_top_k, "PRESELECT", 256)

    def refuse(*_: object) -> None:
        raise AssertionError("the first pass ran on one row")

    row = (np.random.default_rng(7).standard_normal((1, 49_152)) * 3).astype(np.float32)
    monkeypatch.setattr(graph_top_k, "_preselect", refuse)
    ids, vals = graph_top_k_on_cpu(row, 40)
    assert vals[0].tolist() == (-np.sort(-row[0]))[:40].tolist()
    assert row[0, ids[0]].tolist() == vals[0].tolist()


def test_threads_racing_to_load_the_sampler_get_one_set_of_callbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server builds chains on worker threads: requests arriving together once loaded two
    sets of callbacks, and the first set, freed, crashed the server in llama.cpp's next graph
    build (seen on the H200 with 16 conversations at once)."""
    made: list[object] = []
    real = graph_top_k._Sampler

    class Slow(real):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            time.sleep(0.05)  # widen the window two threads could both enter
            super().__init__()
            made.append(self)

    monkeypatch.setattr(graph_top_k, "_Sampler", Slow)
    monkeypatch.setattr(graph_top_k, "_SAMPLER", None)
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(lambda _: graph_top_k.available(), range(8)))
    assert len(made) == 1 and graph_top_k._SAMPLER is made[0]


def test_a_graph_that_cannot_be_built_falls_back_to_llama_cpps_top_k(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error while adding the batched top-k to a graph cannot cross into llama.cpp: the row
    gets llama.cpp's own top-k in the graph instead, and the tokens that gives."""

    def broken(*_args: object) -> tuple[int, int]:
        raise RuntimeError("simulated")

    monkeypatch.setattr(graph_top_k, "build_top_k", broken)
    tmp = tmp_path_factory.mktemp("fallback")
    entry = batched_entry(n_ctx=256, n_parallel=2, n_threads_sampling=1, backend_sampling=True)
    model = BatchedModel(load_config(write_config(tmp / "c.json", [entry])).models[0])
    engine = Engine(model)
    try:
        before = graph_top_k.counts()["fallbacks"]
        ours = run_jobs(engine, backend=True, n=2, tokens=16)
        assert graph_top_k.counts()["fallbacks"] > before
        assert ours == run_jobs(engine, backend=True, n=2, tokens=16, batched=False)
    finally:
        engine.close()
        model.close()
