"""The engine's own top-k and greedy over a step's rows (`server/engine/host_sampling.py`).

It replaces llama.cpp's top-k for most requests, so it must pick exactly what llama.cpp's whole
chain picks: the same k candidates in the same order (the seeded draw depends on the order), and
so the same token for the same seed. Checked first on synthetic rows against llama.cpp's chain
(no model), then through the engine with the bundled model against the llama.cpp chain.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
from llama_cpp import _internals as internals

from server.config import load_config
from server.engine.host_sampling import TOKEN_DATA, HostSampler, make_plan, tail_chain, top_k_rows
from server.engine.sampling import SamplingParams, build_chains, host_plan
from server.engine.scheduler import Engine
from server.errors import ServerConfigError
from tests.engine.conftest import MAIN_MODEL, batched_entry
from tests.engine.test_backend_sampling import Job
from tests.engine.test_engine import PROMPTS, eog_tokens
from tests.support.servers import model_entry, write_config

VOCAB = 4099  # not a multiple of k: the last values fall outside the blocks


def reference_top_k(row: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-row, kind="stable")[:k]


@pytest.mark.parametrize("k", [1, 2, 40, 100, VOCAB])
def test_top_k_rows_finds_the_k_largest_in_order(k: int) -> None:
    rng = np.random.default_rng(k)
    rows = rng.standard_normal((9, VOCAB)).astype(np.float32) * 4
    rows[1] = np.round(rows[1])  # many ties: token order breaks them
    rows[2, :100] = -np.inf  # banned tokens
    rows[3, -3:] = 50.0  # the largest values in the tail outside the k blocks
    rows[4] = 0.0  # all equal
    ids, values = top_k_rows(rows, k)
    assert ids.shape == values.shape == (9, min(k, VOCAB))
    for r in range(9):
        want = reference_top_k(rows[r], k)
        assert ids[r].tolist() == want.tolist(), r
        assert values[r].tolist() == rows[r, want].tolist()


def full_chain(k: int, top_p: float, min_p: float, temp: float, seed: int) -> internals.LlamaSampler:
    chain = internals.LlamaSampler()
    chain.add_top_k(k)
    chain.add_top_p(top_p, 1)
    chain.add_min_p(min_p, 1)
    chain.add_temp(temp)
    chain.add_dist(seed)
    return chain


def llama_pick(chain: internals.LlamaSampler, row: np.ndarray) -> int:
    """llama.cpp's chain over the whole row, as `llama_sampler_sample` gives it one."""
    data = np.empty(len(row), TOKEN_DATA)
    data["id"], data["logit"], data["p"] = np.arange(len(row)), row, 0.0
    cur = llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
        size=len(row),
        selected=-1,
        sorted=False,
    )
    llama_cpp.llama_sampler_apply(chain.sampler, ctypes.byref(cur))
    token = int(data["id"][cur.selected])
    llama_cpp.llama_sampler_accept(chain.sampler, token)
    return token


def test_the_host_path_draws_what_llama_cpps_whole_chain_draws() -> None:
    """200 steps of 8 rows, each row its own seeded chain, temperatures that make the draw
    matter: every token equal; and a bias that bans a row's favourite moves it elsewhere."""
    rng = np.random.default_rng(3)
    settings = [(40, 0.95, 0.05, 0.7), (40, 1.0, 0.0, 1.5), (5, 0.9, 0.1, 1.0), (200, 0.99, 0.01, 2.0)]
    sampler = HostSampler()
    rows_n = 8
    ours_chains = [tail_chain(*settings[r % 4][1:], seed=100 + r) for r in range(rows_n)]
    their_chains = [full_chain(*settings[r % 4], seed=100 + r) for r in range(rows_n)]
    plans = [make_plan(settings[r % 4][0], {}) for r in range(rows_n)]
    differing = 0
    for _ in range(200):
        logits = (rng.standard_normal((rows_n, VOCAB)) * 3).astype(np.float32)
        want = [llama_pick(their_chains[r], logits[r].copy()) for r in range(rows_n)]
        rows = [(r, plans[r], ours_chains[r]) for r in range(rows_n)]
        got = sampler.sample(logits, rows, map, groups=3)
        assert got == want
        differing += len(set(got)) > 1
    assert differing > 150  # the rows are not all drawing the same token
    banned = make_plan(1, {7: float("-inf")})
    logits = np.zeros((1, VOCAB), np.float32)
    logits[0, 7], logits[0, 8] = 9.0, 8.0
    assert sampler.sample(logits, [(0, banned, tail_chain(1.0, 0.0, 1.0, 1))], map, 1) == [8]


def test_which_requests_take_the_host_path() -> None:
    assert host_plan(SamplingParams(temperature=0.0, mirostat_mode=2)) is not None  # greedy wins
    assert host_plan(SamplingParams(temperature=0.7, top_k=40)) is not None
    assert host_plan(SamplingParams(temperature=0.7, top_k=0)) is None  # no top-k: llama.cpp's chain
    assert host_plan(SamplingParams(temperature=0.7, repeat_penalty=1.1)) is None
    assert host_plan(SamplingParams(temperature=0.7, typical_p=0.9)) is None
    assert host_plan(SamplingParams(temperature=-1.0)) is None


@pytest.mark.integration
@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.9, top_k=40, top_p=0.95, min_p=0.05, seed=11),
    ],
    ids=["greedy", "top-k"],
)
def test_the_engine_samples_as_llama_cpps_chain(engine: Engine, params: SamplingParams) -> None:
    """The bundled model, one request at a time (the same batches, so the same logits): the host
    path and llama.cpp's chain give the same 32 tokens."""
    params.logit_bias = {t: -100.0 for t in eog_tokens(engine)}
    model = engine.model.model
    for prompt in PROMPTS[:2]:
        host = Job(engine, prompt, 32, params, chains=build_chains(model, params, False, host=True)).wait()
        llama = Job(engine, prompt, 32, params, chains=build_chains(model, params, False, host=False)).wait()
        assert host.gen.host is not None and llama.gen.host is None
        assert host.gen.tokens == llama.gen.tokens and len(host.gen.tokens) == 32


def test_host_top_k_is_a_batched_engine_setting(tmp_path: Path) -> None:
    on = load_config(write_config(tmp_path / "a.json", [batched_entry(host_top_k=True)])).models[0]
    assert on.entry.host_top_k is True
    assert (
        load_config(write_config(tmp_path / "b.json", [batched_entry()])).models[0].entry.host_top_k is False
    )
    with pytest.raises(ServerConfigError, match='field "host_top_k": only used by "engine": "batched"'):
        load_config(write_config(tmp_path / "c.json", [model_entry(MAIN_MODEL, host_top_k=True)]))
