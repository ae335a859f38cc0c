"""The whole chain in the decode graph (`server/engine/graph_tail.py`): top-p, min-p, temperature
and the draw after the batched top-k, one token per row back.

It must pick what the CPU picks from the same candidates and the same uniform: the graph alone,
computed by ggml's CPU backend on synthetic rows with every setting, against `host_tail.finish`;
then the engine with the bundled model against llama.cpp's whole chain on the CPU, token for
token, both when the graph finishes the rows and when it leaves them to the CPU. Its speed is a
GPU benchmark (BENCHMARKS.md, issue 16).
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import numpy as np
import openai
import pytest

from server.config import ServerConfigError, load_config
from server.engine import graph_tail, graph_top_k, scheduler, tail_ops
from server.engine.host_tail import TailPlan, finish, penalize
from server.engine.sampling import build_chains
from server.engine.scheduler import Engine
from tests.engine.conftest import batched_entry, engine_on
from tests.engine.test_backend_sampling import Job
from tests.engine.test_engine import PROMPTS
from tests.engine.test_graph_top_k import PARAMS, job_params
from tests.support.servers import MAIN_MODEL, model_entry, start_server, write_config


def row_params(u: float, *args: Any) -> tuple[float, ...]:
    """One row's N_PARAMS values as the engine stages them: the uniform, then its settings."""
    return (u, *tail_ops.settings(*args))


def tail_on_cpu(
    ids: np.ndarray,
    vals: np.ndarray,
    params: np.ndarray,
    history: np.ndarray | None = None,
    k: int | None = None,
) -> np.ndarray:
    """`tail_ops.build_tail` (after `tail_ops.build_penalties` down to k candidates, given each
    row's `history`) in a ggml graph of its own, computed by ggml's CPU backend."""
    assert graph_tail.available()
    g = graph_top_k.loaded_ggml()
    lib, vp = g.lib, ctypes.c_void_p
    folder = Path(llama_cpp.__file__).parent / "lib"
    cpu = ctypes.CDLL(str(folder / "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    lib.ggml_new_graph.restype, lib.ggml_new_graph.argtypes = vp, [vp]
    lib.ggml_build_forward_expand.argtypes = [vp, vp]
    lib.ggml_free.argtypes = [vp]
    cpu.ggml_graph_compute_with_ctx.argtypes = [vp, vp, ctypes.c_int]
    ctx = g.init(graph_tail._InitParams(512 * 1024 * 1024, None, False))
    try:

        def tensor(a: np.ndarray, *shape: int) -> int:
            ne = shape or (a.shape[1], a.shape[0], 1)
            t = g.new_tensor_3d(ctx, graph_top_k.GGML_TYPE_F32, *ne)
            data = np.ascontiguousarray(a, np.float32)
            ctypes.memmove(graph_top_k._tensor(t).data, data.ctypes.data, data.nbytes)
            return int(t)

        m = len(ids)
        t_ids, t_vals = tensor(ids), tensor(vals)
        t_params = [tensor(params[:, c], 1, m, 1) for c in range(tail_ops.N_PARAMS)]
        if history is not None and k is not None:
            t_history = tensor(history, tail_ops.HISTORY, 1, m)
            t_ids, t_vals = tail_ops.build_penalties(g, ctx, t_ids, t_vals, t_params, t_history, k)
        tokens = tail_ops.build_tail(g, ctx, t_ids, t_vals, t_params)
        gf = lib.ggml_new_graph(ctx)
        lib.ggml_build_forward_expand(gf, tokens)
        cpu.ggml_graph_compute_with_ctx(ctx, gf, 2)
        out = (ctypes.c_int32 * len(ids)).from_address(graph_top_k._tensor(tokens).data)
        return np.ctypeslib.as_array(out).copy()
    finally:
        lib.ggml_free(ctx)


@pytest.mark.parametrize("k", [1, 2, 40, 256])
def test_the_graph_picks_what_the_cpu_tail_picks(k: int) -> None:
    """3,000 rows with every setting of the tail on and off, extreme temperatures, ties and
    uniforms at both ends: the graph's token is the CPU tail's for the same uniform."""
    rng = np.random.default_rng(k)
    m = 3000
    vals = (rng.standard_normal((m, k)) * 3).astype(np.float32)
    vals[::7] = np.round(vals[::7])  # ties
    vals = -np.sort(-vals, axis=1)
    ids = np.stack([rng.choice(128_000, size=k, replace=False) for _ in range(m)]).astype(np.int32)
    settings = [*PARAMS, (0.2, 0.5, 0.05), (0.999, 0.01, 1.0)]
    plans = [TailPlan(k, *settings[i % len(settings)], seed=i) for i in range(m)]
    u = rng.random(m)
    u[:5] = [0.0, 1e-9, 0.5, 1 - 1e-9, np.nextafter(1.0, 0.0)]
    params = np.array([row_params(u[i], p.top_p, p.min_p, p.temperature) for i, p in enumerate(plans)])
    ours = tail_on_cpu(ids, vals, params)
    theirs = np.array(finish(ids, vals, plans, u.tolist()))
    near = boundary_rows(vals, plans, u)
    assert len(near) < m // 40  # the comparison below covers nearly every row
    exact = np.setdiff1d(np.arange(m), near)
    assert (ours[exact] == theirs[exact]).all()
    for r in near:  # summed in another order: at most the neighbouring candidate
        assert abs(ids[r].tolist().index(ours[r]) - ids[r].tolist().index(theirs[r])) <= 1
    assert len(set(theirs.tolist())) > m // 4  # the rows did not all collapse to one candidate


def boundary_rows(vals: np.ndarray, plans: list[TailPlan], u: np.ndarray, within: float = 2e-6) -> np.ndarray:
    """Rows where float32 sums in another order could change the pick: a running sum of the
    softmax within `within` of top-p, or a running sum of what is kept within `within` (relative)
    of the draw's target. (min-p's floor is one float32 addition, the same on both sides.)"""
    near = []
    for r, p in enumerate(plans):
        row = vals[r].astype(np.float64)
        probs = np.exp(row - row[0])
        cum = np.cumsum(probs) / probs.sum()
        keep = len(row)
        if p.top_p < 1:
            if np.abs(cum - p.top_p).min() < within:
                near.append(r)
                continue
            keep = min(keep, int((cum < p.top_p).sum()) + 1)
        if p.min_p > 0:
            keep = min(keep, max(int((vals[r] >= vals[r, 0] + np.log(np.float32(p.min_p))).sum()), 1))
        weights = np.exp((row[:keep] - row[0]) / p.temperature)
        run = np.cumsum(weights)[:-1] / weights.sum()  # the last is 1: never a boundary
        if len(run) and np.abs(run - u[r]).min() < within:
            near.append(r)
    return np.array(near, dtype=int)


@pytest.mark.parametrize("penalties", [(1.1, 0.0, 0.0), (1.3, 0.4, 0.2), (1.0, 0.0, 0.0)])
def test_penalties_in_the_graph_pick_what_the_cpu_picks(penalties: tuple[float, float, float]) -> None:
    """k + 64 candidates before the penalties and a history of up to 64 tokens (repeats,
    candidates and others, positive and negative logits): after the penalties the graph keeps
    what llama.cpp's penalties and top-k keep (`host_tail.penalize`) and draws what the tail draws."""
    rng = np.random.default_rng(int(penalties[0] * 100))
    m, k = 1500, 40
    n = k + tail_ops.HISTORY
    vals = -np.sort(-(rng.standard_normal((m, n)) * 3).astype(np.float32), axis=1)
    ids = np.stack([rng.choice(128_000, size=n, replace=False) for _ in range(m)]).astype(np.int32)
    history = np.full((m, tail_ops.HISTORY), -1, np.int32)
    for r in range(m):
        size = int(rng.integers(0, tail_ops.HISTORY + 1))
        pool = np.concatenate([ids[r, : k + 10], rng.integers(0, 128_000, 20)])
        history[r, :size] = rng.choice(pool, size=size)  # repeats included
    plans = [TailPlan(k, 0.95, 0.05, 0.8, seed=r) for r in range(m)]
    for p, h in zip(plans, history, strict=True):
        p.penalties, p.history = penalties, h
    u = rng.random(m)
    params = np.array([row_params(u[r], 0.95, 0.05, 0.8, penalties) for r in range(m)])
    ours = tail_on_cpu(ids, vals, params, history, k)
    top_ids, top_vals = penalize(ids, vals, plans)
    theirs = np.array(finish(top_ids, top_vals, plans, u.tolist()))
    near = boundary_rows(top_vals, plans, u)
    assert len(near) < m // 40
    exact = np.setdiff1d(np.arange(m), near)
    assert (ours[exact] == theirs[exact]).all()
    if penalties != tail_ops.NO_PENALTIES:  # the penalties changed what is kept
        assert (top_ids != ids[:, :k]).any(axis=1).mean() > 0.5


@pytest.fixture(params=[True, False], ids=["packed", "row-by-row"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Engine]:
    """An engine whose graphs write the tokens into one array of ours (`PACKED`), or give them
    back as llama.cpp's sampled tokens, one per row."""
    monkeypatch.setattr(graph_tail, "PACKED", request.param)
    folder = tmp_path_factory.mktemp("graph-tail")
    with engine_on(folder, n_ctx=512, n_parallel=4, n_threads_sampling=2, backend_sampling=True) as running:
        yield running


# Repetition, frequency and presence penalties per request: llama-cpp-python's default (1.1),
# all three, and none.
PENALTIES = [(1.1, 0.0, 0.0), (1.3, 0.4, 0.2), (1.0, 0.0, 0.0), (1.1, 0.0, 0.0)]


def run_jobs(
    engine: Engine, backend: bool, whole: bool, n: int = 4, tokens: int = 40, penalties: bool = False
) -> list[list[int]]:
    """`n` requests admitted together: submitted while the test holds the engine's lock (its
    condition's lock is reentrant), so the engine thread cannot start a step until all are in.
    Two runs then share every step's rows, and so llama.cpp's kernels and their rounding:
    submitted one by one, a request could start a step before the next arrived, and the two runs
    compared could differ by a token at a near tie."""
    jobs = []
    with engine._cond:
        for i in range(n):
            params = job_params(i)
            if penalties:
                params.repeat_penalty, params.frequency_penalty, params.presence_penalty = PENALTIES[i]
            chains = build_chains(engine.model.model, params, backend, in_graph_tail=whole)
            jobs.append(Job(engine, PROMPTS[i], tokens, params, chains=chains))
    return [job.wait().gen.tokens for job in jobs]


def test_the_engine_samples_in_the_graph_what_llama_cpps_cpu_chain_samples(engine: Engine) -> None:
    """Four requests together, each with other settings (k = 40 and 20 in one step): the tokens
    llama.cpp's whole chain gives on the CPU. The graph picks all of them but the first token of
    each request: the first step evaluates four prompts of different lengths, which llama.cpp
    splits into micro-batches of one sequence each, so that step's graphs leave their rows' top-k."""
    stats = engine.stats
    before, rows, cpu_rows = graph_tail.counts(), stats.graph_tail_rows, stats.graph_tail_cpu_rows
    ours = run_jobs(engine, backend=True, whole=True)
    after = graph_tail.counts()
    assert after["matrices"] > before["matrices"]
    assert (after["packed"] > before["packed"]) == graph_tail.PACKED
    in_graph, on_cpu = stats.graph_tail_rows - rows, stats.graph_tail_cpu_rows - cpu_rows
    assert in_graph + on_cpu == sum(len(t) for t in ours) + sum(len(t) < 40 for t in ours)
    assert on_cpu <= 4
    assert ours == run_jobs(engine, backend=False, whole=False)
    assert all(len(t) >= 8 for t in ours)


def test_penalised_requests_sampled_in_the_graph_match_llama_cpps_cpu_chain(engine: Engine) -> None:
    """Repetition penalties (llama-cpp-python's default request has 1.1), with frequency and
    presence too: the graph keeps k + 64 candidates, applies each request's penalties from the
    history the engine keeps, and picks what llama.cpp's chain picks with its own penalties."""
    stats = engine.stats
    rows, cpu_rows, backend = stats.graph_tail_rows, stats.graph_tail_cpu_rows, stats.backend_sampled
    ours = run_jobs(engine, backend=True, whole=True, penalties=True)
    in_graph, on_cpu = stats.graph_tail_rows - rows, stats.graph_tail_cpu_rows - cpu_rows
    assert in_graph + on_cpu == stats.backend_sampled - backend  # llama.cpp's penalties never ran
    assert on_cpu <= 4 and in_graph >= 100
    assert ours == run_jobs(engine, backend=False, whole=False, penalties=True)
    assert ours != run_jobs(engine, backend=False, whole=False)  # the penalties mattered


@pytest.mark.parametrize("tail_from", [0, 1000], ids=["tail-over-rows", "tail-row-by-row"])
def test_penalised_requests_get_the_batched_top_k_without_graph_tail(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, tail_from: int
) -> None:
    """Without `graph_tail` too: the graph keeps each row's k + 64 largest with the batched top-k
    (`graph_top_k`, no llama.cpp penalties over the whole row), and the CPU applies the penalties
    and the rest, over all rows with numpy or row by row with llama.cpp's chain: llama.cpp's whole
    chain's tokens either way."""
    monkeypatch.setattr(scheduler, "HOST_TAIL_MIN_ROWS", tail_from)
    folder = tmp_path_factory.mktemp("penalties-host")
    with engine_on(folder, n_ctx=512, n_parallel=4, n_threads_sampling=2, backend_sampling=True) as fresh:
        before = graph_top_k.counts()
        ours = run_jobs(fresh, backend=True, whole=False, penalties=True)
        after = graph_top_k.counts()
        assert after["matrices"] > before["matrices"]  # the batched top-k, for every request
        assert after["lone_rows"] - before["lone_rows"] <= 4  # llama.cpp's probes of new chains only
        assert (fresh.stats.tail_rows > 0) == (tail_from == 0)
        assert fresh.stats.graph_tail_rows == 0
        assert ours == run_jobs(fresh, backend=False, whole=False, penalties=True)


@pytest.mark.parametrize("whole", [True, False], ids=["graph-tail", "top-k-only"])
def test_an_idle_slots_chain_of_another_kind_builds_nothing(
    tmp_path_factory: pytest.TempPathFactory, whole: bool
) -> None:
    """A slot keeps its chain after its request, and llama.cpp applies the samplers of idle
    sequences too: one whose kind (penalties, k) no running request has must not add its own
    top-k to every step's graph, whether the graph finishes the chain (`graph_tail`) or only
    takes the top-k (`graph_top_k`: k + 64 with penalties, k without). The running request still
    samples what llama.cpp's chain does."""
    counts = graph_tail.counts if whole else graph_top_k.counts
    folder = tmp_path_factory.mktemp("graph-tail-idle")
    with engine_on(folder, n_ctx=256, n_parallel=2, n_threads_sampling=1, backend_sampling=True) as fresh:
        run_jobs(fresh, backend=True, whole=whole, n=2, tokens=8, penalties=True)  # both slots: penalised
        before = counts()
        ours = run_jobs(fresh, backend=True, whole=whole, n=1, tokens=16)  # one slot, another kind
        after = counts()
        assert after["idle"] > before["idle"]
        # Each graph built met the idle sampler once and holds one top-k, the running request's
        # (without the check: two, the idle kind's too). `graph_tail` counts only the graph
        # whose rows it finished, reused every step; the others left the top-k (rows not yet
        # staged as built), as in the test below.
        builds = after["idle"] - before["idle"]
        assert after["matrices"] - before["matrices"] == (1 if whole else builds)
        assert ours == run_jobs(fresh, backend=False, whole=False, n=1, tokens=16)


@pytest.mark.parametrize("penalties", [False, True], ids=["plain", "penalised"])
def test_rows_not_staged_as_built_are_finished_on_the_cpu_with_the_same_draws(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, penalties: bool
) -> None:
    """When the graph cannot tell which sequence a row is (here: nothing staged, as when
    llama.cpp splits the outputs over micro-batches) it leaves each row's top-k (before the
    penalties: k + 64), and the CPU finishes the row with the uniform already drawn for it: the
    same tokens."""
    real = graph_tail.stage
    monkeypatch.setattr(graph_tail, "stage", lambda seqs, *rest: real(None, *rest))
    folder = tmp_path_factory.mktemp("graph-tail-cpu")
    with engine_on(folder, n_ctx=256, n_parallel=2, n_threads_sampling=1, backend_sampling=True) as fresh:
        before = graph_tail.counts()["top_k_only"]
        ours = run_jobs(fresh, backend=True, whole=True, n=2, tokens=16, penalties=penalties)
        assert graph_tail.counts()["top_k_only"] > before
        assert fresh.stats.graph_tail_rows == 0
        assert fresh.stats.graph_tail_cpu_rows == fresh.stats.backend_sampled >= sum(len(t) for t in ours)
        assert ours == run_jobs(fresh, backend=False, whole=False, n=2, tokens=16, penalties=penalties)


def test_graph_tail_is_a_batched_engine_setting(tmp_path: Path) -> None:
    on = load_config(write_config(tmp_path / "a.json", [batched_entry(graph_tail=True)])).models[0]
    assert on.entry.graph_tail is True
    off = load_config(write_config(tmp_path / "b.json", [batched_entry()])).models[0]
    assert off.entry.graph_tail is False
    with pytest.raises(ServerConfigError, match='field "graph_tail": only used by "engine": "batched"'):
        load_config(write_config(tmp_path / "c.json", [model_entry(MAIN_MODEL, graph_tail=True)]))
    with pytest.raises(ServerConfigError, match='field "graph_tail": .* needs backend sampling'):
        no_graph = batched_entry(graph_tail=True, backend_sampling=False)
        load_config(write_config(tmp_path / "d.json", [no_graph]))


@pytest.mark.integration
def test_the_server_samples_in_the_graph_when_configured(tmp_path: Path) -> None:
    """`"graph_tail": true` reaches the engine through the HTTP API: concurrent seeded chats with
    the default settings (llama-cpp-python's repetition penalty 1.1 among them) are picked in the
    graph (the server's own counters say so), and a seed replays its answer (alone both times:
    llama.cpp's logits depend on what else is in the batch, whatever samples them)."""
    entry = batched_entry(n_ctx=512, n_parallel=4, backend_sampling=True, graph_tail=True)
    server = start_server(write_config(tmp_path / "c.json", [entry]), tmp_path / "server.log")
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)

        def chat(seed: int) -> str:
            resp = client.chat.completions.create(
                model=MAIN_MODEL,
                messages=[{"role": "user", "content": f"Tell a story about a lighthouse, take {seed}."}],
                max_tokens=24,
                temperature=0.9,
                seed=seed,
            )
            return resp.choices[0].message.content or ""

        with ThreadPoolExecutor(4) as pool:
            first = list(pool.map(chat, range(4)))
        alone, again = chat(7), chat(7)
        with httpx.Client(base_url=server.root, timeout=30) as http:
            settings = http.get("/storybench/models").json()["loaded_model_settings"]
        assert settings["graph_tail"] is True
        assert settings["stats"]["graph_tail_rows"] >= 3 * 20  # most tokens of the four chats
        assert all(first) and alone and again == alone
    finally:
        assert server.stop() == 0, server.log()
