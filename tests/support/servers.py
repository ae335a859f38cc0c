"""Start real `storybench-serve` processes for tests: config files around the bundled model.

Shared by the server suite and the end-to-end tests, so both drive the real process the same way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUNDLED = "bundled:smollm2-135m"
MAIN_MODEL = "smollm2"
ALT_MODEL = "smollm2-alt"
N_CTX = 2048


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def model_entry(name: str = MAIN_MODEL, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "gguf": BUNDLED,
        "n_ctx": N_CTX,
        "n_batch": 512,
        "n_ubatch": 512,
        "n_threads": 1,
        "n_threads_batch": 1,
        "seed": 1234,
        # llama.cpp's AMX kernels crash (SIGILL) on VMs that advertise AMX without enabling it.
        "use_extra_bufts": False,
    }
    entry.update(overrides)
    return entry


def write_config(path: Path, models: list[dict[str, Any]], **top: Any) -> Path:
    path.write_text(json.dumps({"models": models, **top}, indent=2))
    return path


@dataclass
class RunningServer:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    api_key: str | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise


def start_server(
    config: Path,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    port: int | None = None,
    args: tuple[str, ...] = (),
) -> RunningServer:
    """Start `python -m server` on `port` (default: a free one), with more command-line `args`;
    return once it printed its base URL."""
    port = port or find_free_port()
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--config", str(config), "--port", str(port), *args],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    log.close()
    server = RunningServer(proc, port, log_path, (env or {}).get("STORYBENCH_TEST_KEY"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Serving on http://" in server.log():
            return server
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready after {timeout} s:\n{server.log()}")
