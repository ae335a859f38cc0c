"""Fixtures for the batched engine: a real `storybench-serve` with `"engine": "batched"` (the
server suite's integration tests run against it too), and an in-process engine for tests that
need the generated token ids.

Small contexts and one thread keep the suite bounded on a busy 2-core machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from server.bundled import locate
from server.config import load_config
from server.engine.model import BatchedModel
from server.engine.scheduler import Engine
from tests.support.servers import (
    ALT_MODEL,
    BUNDLED,
    MAIN_MODEL,
    N_CTX,
    RunningServer,
    model_entry,
    start_server,
    write_config,
)

N_PARALLEL = 8


def batched_entry(name: str = MAIN_MODEL, **overrides: Any) -> dict[str, Any]:
    return model_entry(name, engine="batched", **overrides)


@contextmanager
def engine_on(folder: Path, **overrides: Any) -> Iterator[Engine]:
    """An engine in this process for the main model with these entry settings, closed after."""
    model = BatchedModel(load_config(write_config(folder / "c.json", [batched_entry(**overrides)])).models[0])
    running = Engine(model)
    try:
        yield running
    finally:
        running.close()
        model.close()


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    return locate(BUNDLED)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The batched server: the main model with 8 slots of N_CTX tokens (the default), and a
    second entry to test model swaps."""
    tmp = tmp_path_factory.mktemp("batched-server")
    models = [
        batched_entry(n_parallel=N_PARALLEL),
        batched_entry(ALT_MODEL, n_ctx=1024, n_parallel=2),
    ]
    running = start_server(write_config(tmp / "local_models.json", models), tmp / "server.log")
    yield running
    rc = running.stop()
    assert rc == 0, running.log()


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """An engine in this process: 8 slots of 512 tokens, sampled by two threads."""
    tmp = tmp_path_factory.mktemp("engine")
    # Two sampling threads: the parallel sampling path runs in every test below.
    entry = batched_entry(n_ctx=512, n_parallel=N_PARALLEL, n_threads_sampling=2)
    config = write_config(tmp / "c.json", [entry])
    model = BatchedModel(load_config(config).models[0])
    running = Engine(model)
    yield running
    running.close()
    model.close()


__all__ = ["ALT_MODEL", "MAIN_MODEL", "N_CTX", "N_PARALLEL", "batched_entry", "engine_on"]
