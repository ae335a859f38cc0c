"""API-key enforcement route by route, start-up failures, and clean shutdown."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import (
    MAIN_MODEL,
    REPO,
    RunningServer,
    find_free_port,
    model_entry,
    start_server,
    write_config,
)

pytestmark = pytest.mark.integration

KEY = "test-key-123"
KEY_ENV = {"STORYBENCH_TEST_KEY": KEY}

ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions",
     {"model": MAIN_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    ("POST", "/v1/completions", {"model": MAIN_MODEL, "prompt": "hi", "max_tokens": 2}),
    ("POST", "/v1/embeddings", {"model": MAIN_MODEL, "input": "hi"}),
    ("POST", "/extras/tokenize", {"model": MAIN_MODEL, "input": "hi"}),
    ("POST", "/extras/tokenize/count", {"model": MAIN_MODEL, "input": "hi"}),
    ("POST", "/extras/detokenize", {"model": MAIN_MODEL, "tokens": [28120]}),
    ("GET", "/storybench/models", None),
]  # fmt: skip


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("keyed")
    config = write_config(tmp / "c.json", [model_entry()], api_key_env="STORYBENCH_TEST_KEY")
    running = start_server(config, tmp / "server.log", env=KEY_ENV)
    yield running
    assert running.stop() == 0, running.log()


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[r[1] for r in ROUTES])
def test_every_route_needs_the_key(
    keyed: RunningServer, method: str, path: str, body: dict[str, Any] | None
) -> None:
    with httpx.Client(base_url=keyed.root, timeout=120) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = client.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (headers, r.text)
        r = client.request(method, path, json=body, headers={"Authorization": f"Bearer {KEY}"})
        if path == "/v1/embeddings":  # the model is not loaded for embeddings: not an auth error
            assert r.status_code not in (401, 403)
        else:
            assert r.status_code == 200, r.text


def test_unknown_model_needs_the_key_first(keyed: RunningServer) -> None:
    r = httpx.post(f"{keyed.base_url}/chat/completions", json={"model": "x", "messages": []})
    assert r.status_code == 401  # unauthenticated clients learn nothing about the models


def test_health_needs_no_key(keyed: RunningServer) -> None:
    r = httpx.get(f"{keyed.root}/health")
    assert r.status_code == 200 and r.json()["status"] == "ready"


def _port_is_free(port: int) -> bool:
    """A new server could listen there (with SO_REUSEADDR, as uvicorn does: connections the
    old server closed may linger in TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_a_stream_shuts_down_cleanly(start: Callable[..., RunningServer], sig: int) -> None:
    running = start([model_entry()])
    with (
        httpx.Client(timeout=60) as client,
        client.stream(
            "POST",
            f"{running.base_url}/completions",
            json={
                "model": MAIN_MODEL,
                "prompt": "Once",
                "max_tokens": 16,
                "stream": True,
                "logit_bias": {"0": -100, "2": -100},
            },  # fmt: skip
        ) as response,
    ):
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        running.proc.send_signal(sig)
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]"  # the answer in flight was finished, not cut
    assert running.proc.wait(30) == 0, running.log()
    log = running.log()
    assert "model freed" in log and "Traceback" not in log
    assert _port_is_free(running.port)


def test_model_that_fails_to_load_exits_1(tmp_path: Path) -> None:
    # A valid GGUF header with no tensors: passes validation, llama.cpp refuses to load it.
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    config = write_config(tmp_path / "c.json", [model_entry("broken", gguf=str(empty))])
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--config", str(config), "--port", str(find_free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Error: could not load model 'broken': Failed to load model from file" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
