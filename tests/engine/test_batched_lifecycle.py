"""The server suite's key and lifecycle checks against the batched engine."""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.test_server_auth_lifecycle import (  # the same tests, with `keyed` below
    KEY_ENV,
    _port_is_free,
    test_every_route_needs_the_key,
    test_health_needs_no_key,
    test_unknown_model_needs_the_key_first,
)
from tests.support.servers import MAIN_MODEL, REPO, RunningServer, find_free_port, start_server, write_config

from .conftest import batched_entry

pytestmark = pytest.mark.integration

__all__ = [
    "test_every_route_needs_the_key",
    "test_health_needs_no_key",
    "test_unknown_model_needs_the_key_first",
]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("keyed-batched")
    config = write_config(tmp / "c.json", [batched_entry()], api_key_env="STORYBENCH_TEST_KEY")
    running = start_server(config, tmp / "server.log", env=KEY_ENV)
    yield running
    assert running.stop() == 0, running.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_streams_finishes_them_and_shuts_down_cleanly(tmp_path: Path, sig: int) -> None:
    config = write_config(tmp_path / "c.json", [batched_entry(n_parallel=2)])
    running = start_server(config, tmp_path / "server.log")
    body = {"model": MAIN_MODEL, "prompt": "Once", "max_tokens": 16, "stream": True,
            "logit_bias": {"0": -100, "2": -100}}  # fmt: skip
    try:
        with (
            httpx.Client(timeout=60) as client,
            client.stream("POST", f"{running.base_url}/completions", json=body) as first,
            client.stream("POST", f"{running.base_url}/completions", json=body) as second,
        ):
            lines = [first.iter_lines(), second.iter_lines()]
            for it in lines:
                assert next(line for line in it if line.startswith("data: "))
            running.proc.send_signal(sig)
            rests = [[line for line in it if line.startswith("data: ")] for it in lines]
        assert all(rest[-1] == "data: [DONE]" for rest in rests)  # both answers were finished
        assert running.proc.wait(30) == 0, running.log()
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait(10)
    log = running.log()
    assert "model freed" in log and "Traceback" not in log
    assert _port_is_free(running.port)


def test_model_that_fails_to_load_exits_1(tmp_path: Path) -> None:
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    config = write_config(tmp_path / "c.json", [batched_entry("broken", gguf=str(empty))])
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--config", str(config), "--port", str(find_free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Error: could not load model 'broken': Failed to load model from file" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
