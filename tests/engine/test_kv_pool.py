"""A shared KV pool (`"kv_unified": true` with `kv_pool`): slots draw on one pool of cells, so a
conversation holds only its own tokens, and a request waits rather than let a running
conversation run out of cells mid-story (issue 16, item 4). The bundled model on the CPU: four
slots of 256 tokens in a pool of 512 cells, requests of ~240 tokens each.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.config import load_config
from server.engine.model import BatchedModel
from server.engine.sampling import SamplingParams, build_sampler
from server.engine.scheduler import Engine, Event, Generation
from server.errors import ServerConfigError
from tests.engine.conftest import batched_entry
from tests.engine.test_engine import PROMPTS, eog_tokens
from tests.support.servers import write_config

pytestmark = pytest.mark.integration

POOL, SLOT_CTX, ANSWER = 512, 256, 200


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    tmp = tmp_path_factory.mktemp("kv-pool")
    entry = batched_entry(n_ctx=SLOT_CTX, n_parallel=4, kv_unified=True, kv_pool=POOL)
    model = BatchedModel(load_config(write_config(tmp / "c.json", [entry])).models[0])
    running = Engine(model)
    yield running
    running.close()
    model.close()


class Tracked:
    """A greedy generation that records, at each of its events, the cells the engine holds."""

    def __init__(self, engine: Engine, prompt: list[int], held: list[int]) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()
        bias = {t: -100.0 for t in eog_tokens(engine)}
        self._engine, self._held = engine, held
        self.gen = Generation(
            prompt=prompt,
            max_tokens=ANSWER,
            sampler=build_sampler(engine.model.model, SamplingParams(temperature=0.0, logit_bias=bias)),
            sink=self._sink,
        )
        engine.submit(self.gen)

    def _sink(self, events: list[Event]) -> None:
        self._held.append(sum(len(s.cache) for s in self._engine.slots))  # engine thread: consistent
        self.events += events
        if any(kind in ("done", "error") for kind, _ in events):
            self.done.set()

    def wait(self) -> Tracked:
        assert self.done.wait(600), "generation did not finish"
        return self


def prompt_of(engine: Engine, k: int) -> list[int]:
    return engine.model.completion_prompt(f"Story {k}. {PROMPTS[k % len(PROMPTS)]}")


def test_requests_wait_for_cells_and_none_fails(pooled: Engine) -> None:
    held: list[int] = []
    jobs = [Tracked(pooled, prompt_of(pooled, k), held) for k in range(4)]  # 4 x ~240 > 512 cells
    for job in jobs:
        job.wait()
        assert job.events[-1] == ("done", "length"), job.events[-1]
        assert job.gen.predicted_n == ANSWER
    assert max(held) <= POOL
    assert pooled.stats.pool_waits > 0  # the third and fourth waited for the first two
    assert pooled.stats.pool_peak <= POOL
    starts = sorted(job.gen.t_admit or 0 for job in jobs)
    ends = sorted(job.gen.t_end or 0 for job in jobs)
    assert starts[2] >= ends[0]  # only two ran at a time


def test_idle_caches_make_room_least_recently_used_first(pooled: Engine) -> None:
    """After the first test four finished conversations sit in the slots (more than the pool
    holds beside a new one): a new request drops the oldest, and the newest keeps its cache,
    so its next turn is served from it."""
    held: list[int] = []
    before = pooled.stats.pool_evictions
    last = Tracked(pooled, prompt_of(pooled, 10), held).wait()
    assert pooled.stats.pool_evictions > before
    follow_up = last.gen.prompt + last.gen.tokens[:20]
    again = Tracked(pooled, follow_up, held).wait()
    assert again.gen.cache_n >= len(last.gen.prompt)  # its history stayed in the pool
    assert max(held) <= POOL


def test_the_pool_is_checked_in_the_config(tmp_path: Path) -> None:
    with pytest.raises(
        ServerConfigError, match='field "kv_pool": a shared pool of KV cells needs "kv_unified": true'
    ):
        load_config(write_config(tmp_path / "a.json", [batched_entry(kv_pool=4096)]))
    with pytest.raises(ServerConfigError, match='field "kv_pool": 100 cells cannot hold one conversation'):
        load_config(
            write_config(tmp_path / "b.json", [batched_entry(n_ctx=512, kv_unified=True, kv_pool=100)])
        )
    config = load_config(write_config(tmp_path / "c.json", [batched_entry(n_ctx=512, n_parallel=8)])).models[
        0
    ]
    assert config.kv_pool == 512 * 8
