"""A model larger than one machine: part of the bundled model's layers on llama.cpp's own
`rpc-server`, over loopback (issue 14, item 5; server/rpc.py).

The integration tests need `make rpc` (rpc-server and the RPC backend module, built from the
pinned llama.cpp source): they skip without it, except where STORYBENCH_REQUIRE_RPC=1 (CI builds
it first and sets that), so a missing build cannot pass unnoticed there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks import native
from server.config import load_config
from server.errors import ServerConfigError
from tests.support.servers import REPO, find_free_port, model_entry, start_server, write_config


def test_rpc_servers_are_checked_in_the_config(tmp_path: Path) -> None:
    with pytest.raises(ServerConfigError, match=r'field "rpc_servers": "nowhere" is not HOST:PORT'):
        load_config(write_config(tmp_path / "a.json", [model_entry(rpc_servers=["nowhere"])]))
    two = [model_entry("a", rpc_servers=["10.0.0.1:50052"]), model_entry("b", rpc_servers=["10.0.0.2:50052"])]
    with pytest.raises(ServerConfigError, match='different "rpc_servers"'):
        load_config(write_config(tmp_path / "b.json", two))
    cfg = load_config(write_config(tmp_path / "c.json", [model_entry(rpc_servers=["10.0.0.1:50052"])]))
    assert cfg.rpc_servers == ["10.0.0.1:50052"]


def run_attach(endpoint: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`rpc.attach` in a fresh process: devices, once registered, stay for a process's life."""
    code = (
        "from server import rpc\n"
        f"try:\n    print(rpc.attach([{endpoint!r}]))\n"
        "except rpc.RPCError as e:\n    print('RPCError:', e)"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def test_without_an_rpc_backend_the_error_names_the_fix() -> None:
    env = {k: v for k, v in os.environ.items() if k != "STORYBENCH_GGML_RPC_LIB"}
    out = run_attach("127.0.0.1:1", env).stdout
    assert "RPCError: this llama-cpp-python has no RPC backend" in out
    assert "-DGGML_RPC=ON" in out and "make rpc" in out


@pytest.fixture(scope="module")
def rpc_tools() -> native.RPCTools:
    tools = native._rpc_built()
    if tools is None:
        if os.environ.get("STORYBENCH_REQUIRE_RPC") == "1":
            pytest.fail("STORYBENCH_REQUIRE_RPC=1 but the RPC tools are not built: run `make rpc`")
        pytest.skip("the RPC tools are not built: `make rpc`")
    return tools


@pytest.fixture(scope="module")
def rpc_server(
    rpc_tools: native.RPCTools, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    port = find_free_port()
    log = tmp_path_factory.mktemp("rpc") / "rpc-server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(rpc_tools.server), "--host", "127.0.0.1", "--port", str(port), "--threads", "1"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while True:  # its banner sits in a pipe buffer: wait for the port instead
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"127.0.0.1:{port}", log
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.integration
def test_an_unreachable_rpc_server_is_an_error_not_a_crash(rpc_tools: native.RPCTools) -> None:
    env = {**os.environ, "STORYBENCH_GGML_RPC_LIB": str(rpc_tools.module)}
    result = run_attach(f"127.0.0.1:{find_free_port()}", env)
    assert result.returncode == 0, result.stderr  # llama.cpp would have aborted the process
    assert "RPCError: rpc-server 127.0.0.1:" in result.stdout and "cannot be reached" in result.stdout


@pytest.mark.integration
def test_layers_on_an_rpc_server_answer_like_local_ones(
    rpc_tools: native.RPCTools, rpc_server: tuple[str, Path], tmp_path: Path
) -> None:
    """Ten of the bundled model's 30 layers on the rpc-server: `--check` lists the remote device,
    llama.cpp puts those layers and their KV cache there, and a greedy answer is the one the
    same model gives on this machine alone."""
    endpoint, _ = rpc_server
    env = {"STORYBENCH_GGML_RPC_LIB": str(rpc_tools.module)}
    config = write_config(tmp_path / "rpc.json", [model_entry(n_gpu_layers=10, rpc_servers=[endpoint])])
    check = subprocess.run(
        [sys.executable, "-m", "server", "--config", str(config), "--check"],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"RPC0   {endpoint}" in check.stdout
    assert "10 of 30 on the remote devices" in check.stdout
    body = {
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 24,
        "temperature": 0,
    }
    answers = []
    for name, cfg, extra in (
        ("rpc", config, env),
        ("local", write_config(tmp_path / "local.json", [model_entry()]), {}),
    ):
        server = start_server(cfg, tmp_path / f"{name}.log", env=extra, args=("--log-level", "debug"))
        try:
            deadline = time.monotonic() + 120
            while httpx.get(f"{server.root}/health", timeout=10).json().get("status") != "ready":
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.25)
            reply = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=120).json()
            answers.append(reply["choices"][0]["message"]["content"])
        finally:
            assert server.stop() == 0, server.log()
        if name == "rpc":
            log = server.log()
            assert "offloaded 10/31 layers to GPU" in log
            assert f"RPC0[{endpoint}] model buffer size" in log and f"RPC0[{endpoint}] KV buffer size" in log
    assert answers[0] and answers[0] == answers[1]
