"""A real `storybench-serve` with the bundled model for the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.servers import RunningServer, model_entry, start_server, write_config

SMALL_N_CTX = 640


@dataclass
class LocalServer:
    running: RunningServer
    model: str = "story"
    small_model: str = "story-small"  # a context small enough that a 5-turn history overflows it
    small_n_ctx: int = SMALL_N_CTX

    @property
    def base_url(self) -> str:
        return self.running.base_url


@pytest.fixture(scope="session")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    tmp = tmp_path_factory.mktemp("e2e-server")
    config = write_config(
        tmp / "local_models.json",
        [model_entry("story", n_ctx=2048), model_entry("story-small", n_ctx=SMALL_N_CTX)],
    )
    running = start_server(config, tmp / "server.log")
    yield LocalServer(running)
    assert running.stop() == 0, running.log()
