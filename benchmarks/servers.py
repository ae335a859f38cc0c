"""Start and stop the servers under test: ours (`python -m server`) and native `llama-server`.

Both get the same GGUF and the same settings: context per conversation, batch, ubatch, flash
attention, GPU layers and threads. Native for concurrency runs with `-np N` slots (each of the same
context) and continuous batching, its default.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from benchmarks.common import ROOT
from benchmarks.native import NativeTools

NATIVE_EXTRA_ARGS_ENV = "STORYBENCH_NATIVE_EXTRA_ARGS"


@dataclass(frozen=True)
class ModelSpec:
    """One model as both servers serve it."""

    name: str  # the API model name (our config's `name`, native's `--alias`)
    path: Path
    n_ctx: int  # per conversation
    n_gpu_layers: int  # -1 = all
    flash_attn: bool
    threads: int
    n_batch: int = 512
    n_ubatch: int = 512


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    label: str
    model: ModelSpec
    command: list[str]
    log_path: Path
    port: int
    parallel: int = 1
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def shown_command(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + " ".join(shlex.quote(c) for c in self.command)

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Until /health says 200 and a tiny completion answers (loads, warms up, hashes)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self.proc.returncode}; log:\n{self.log_tail()}"
                )
            try:
                if httpx.get(f"{self.root_url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.label} not ready after {timeout:.0f}s; log:\n{self.log_tail()}")
            time.sleep(0.25)
        # Our server hashes the model file after loading (for /storybench/models): let that
        # finish before anything is timed, and warm both servers up with a short answer.
        if self.label.startswith("ours"):
            httpx.get(f"{self.root_url}/storybench/models", timeout=timeout)
        body = {
            "model": self.model.name,
            "messages": [{"role": "user", "content": "Warm up."}],
            "max_tokens": 8,
        }
        httpx.post(f"{self.base_url}/chat/completions", json=body, timeout=timeout).raise_for_status()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ours(
    model: ModelSpec,
    workdir: Path,
    lib_dir: Path | None = None,
    engine: str | None = None,
    parallel: int = 1,
    port: int | None = None,
    backend_sampling: bool | None = None,
    threads_sampling: int | None = None,
    graph_tail: bool = False,
    lanes: int | None = None,
    kv_pool: int | None = None,
    host_cache_mib: int | None = None,
) -> ServerProcess:
    """Our server with a config file holding exactly this model's settings. `lib_dir`: load libllama
    from there (LLAMA_CPP_LIB_PATH) instead of llama-cpp-python's own build. `engine`: the config's
    engine (None: the server's default); "batched" gets `parallel` slots. `backend_sampling` and
    `threads_sampling` set the batched engine's `backend_sampling` and `n_threads_sampling`; None
    leaves the key out, so the server's own default applies. `graph_tail`: the whole chain in the
    decode graph (`"graph_tail": true`). `lanes`: the batched engine's `lanes` (None: left out).
    `kv_pool`: the slots share one pool of that many KV cells (`"kv_unified": true`).
    `host_cache_mib`: host memory for conversations whose slot another one took."""
    port = port or free_port()
    cfg = {
        "description": "written by benchmarks/servers.py",
        "host": "127.0.0.1",
        "port": port,
        "models": [
            {
                "name": model.name,
                "gguf": str(model.path),
                "n_ctx": model.n_ctx,
                "n_gpu_layers": model.n_gpu_layers,
                "flash_attn": model.flash_attn,
                "n_batch": model.n_batch,
                "n_ubatch": model.n_ubatch,
                "n_threads": model.threads,
                "n_threads_batch": model.threads,
            }
        ],
    }
    if engine:
        cfg["models"][0]["engine"] = engine  # type: ignore[index]
        if engine == "batched":
            cfg["models"][0]["n_parallel"] = parallel  # type: ignore[index]
    if backend_sampling is not None:
        cfg["models"][0]["backend_sampling"] = backend_sampling  # type: ignore[index]
    if threads_sampling is not None:
        cfg["models"][0]["n_threads_sampling"] = threads_sampling  # type: ignore[index]
    if graph_tail:
        cfg["models"][0]["graph_tail"] = True  # type: ignore[index]
    if lanes is not None:
        cfg["models"][0]["lanes"] = lanes  # type: ignore[index]
    if kv_pool is not None:
        cfg["models"][0].update(kv_unified=True, kv_pool=kv_pool)  # type: ignore[index,attr-defined]
    if host_cache_mib is not None:
        cfg["models"][0]["host_cache_mib"] = host_cache_mib  # type: ignore[index]
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"ours-{model.name}.json"
    path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    command = [sys.executable, "-m", "server", "--config", str(path), "--log-level", "warning"]
    env = {"LLAMA_CPP_LIB_PATH": str(lib_dir), "MTMD_CPP_LIB": str(lib_dir)} if lib_dir else {}
    return ServerProcess("ours", model, command, workdir / f"ours-{model.name}.log", port, env=env)


def native(
    tools: NativeTools,
    model: ModelSpec,
    workdir: Path,
    parallel: int = 1,
    port: int | None = None,
    backend_sampling: bool = False,
    kv_unified: bool = False,
    verbosity: int | None = None,
) -> ServerProcess:
    """Native llama-server; `parallel` slots of `n_ctx` each, continuous batching (default on).
    `backend_sampling`: its experimental `-bs` (the sampler chain runs in the decode graph).
    `kv_unified`: `-kvu`, the slots share the `n_ctx x parallel` cells (each may use them all).
    `verbosity`: `-lv N` (4 logs llama.cpp's own buffer sizes)."""
    port = port or free_port()
    command = [
        str(tools.server),
        "-m", str(model.path),
        "-a", model.name,
        "--host", "127.0.0.1",
        "--port", str(port),
        "-c", str(model.n_ctx * parallel),
        "-np", str(parallel),
        "-b", str(model.n_batch),
        "-ub", str(model.n_ubatch),
        "-fa", "on" if model.flash_attn else "off",
        "-ngl", str(999 if model.n_gpu_layers < 0 else model.n_gpu_layers),
        "-t", str(model.threads),
        "-tb", str(model.threads),
        "-fit", "off",
        "--no-webui",
    ]  # fmt: skip
    # More native flags for an experiment (e.g. "-cram 0"); they show in the recorded commands.
    command += shlex.split(os.environ.get(NATIVE_EXTRA_ARGS_ENV, ""))
    label = f"native-np{parallel}"
    if backend_sampling:
        command.append("-bs")
        label += "-bs"
    if kv_unified:
        command.append("-kvu")
        label += "-kvu"
    if verbosity is not None:
        command += ["-lv", str(verbosity)]
    return ServerProcess(label, model, command, workdir / f"{label}-{model.name}.log", port, parallel)


def eog_token_ids(path: Path) -> list[int]:
    """End-of-generation token ids of a GGUF, the way llama.cpp finds them (ids and known texts)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    ids: set[int] = set()
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        f = reader.fields.get(key)
        if f is not None:
            ids.add(int(f.contents()))
    texts = {"<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "</s>", "<|end|>",
             "<end_of_turn>", "<|return|>", "<|call|>"}  # fmt: skip
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None:
        ids |= {i for i, t in enumerate(tokens.contents()) if t in texts}
    return sorted(ids)
