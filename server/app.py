"""The ASGI application: llama-cpp-python's FastAPI app, wrapped, behind a loading gate.

`StoryBenchApp` answers `GET /health` itself (503 while the model loads, 200 when ready) and
delegates everything else, once ready, to the engine's app: llama-cpp-python's own (its router
and routes, with `GET /storybench/models`) wrapped in `LlamaMiddleware` (request checks,
preflight, `timings`), or the batched engine's (server/engine/app.py).
The default model is loaded in a background thread started at ASGI start-up, so uvicorn listens
(and /health answers) while a large model loads.

llama-cpp-python keeps its server state in module globals (settings, the model proxy, the
lock), so there is one StoryBench app per process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from typing import Any

import anyio
import llama_cpp
from fastapi import FastAPI
from fastapi.middleware import Middleware
from llama_cpp.server import app as llama_app
from sse_starlette.sse import AppStatus
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette_context.middleware import RawContextMiddleware
from starlette_context.plugins import RequestIdPlugin

from server import llama_settings, openapi_schema, rpc
from server.auth import bearer_ok
from server.config import ServerConfig
from server.engine.app import build_batched_app
from server.engine.host import EngineHost
from server.gguf_info import file_sha256
from server.instrumented import StoryBenchProxy
from server.llama_middleware import LlamaMiddleware
from server.metadata import METADATA_PATH, server_metadata
from server.openai_errors import install_error_handlers, send_json, send_unauthorized
from server.openapi_schema import Served

log = logging.getLogger("storybench.server")


def build_llama_app(cfg: ServerConfig, proxy: StoryBenchProxy, auth: bool = False) -> ASGIApp:
    """llama-cpp-python's app around our proxy (what its `create_app` does, minus the CORS
    wildcard and minus loading the model with its own, guessing, LlamaProxy). Upstream is given
    no key: `StoryBenchApp` checks it once for every route (`auth`: whether one is configured,
    for the OpenAPI schema)."""
    llama_app.set_server_settings(llama_settings.server_settings(cfg))
    llama_app._llama_proxy = proxy  # the global its routes' get_llama_proxy dependency yields
    app = FastAPI(
        middleware=[Middleware(RawContextMiddleware, plugins=(RequestIdPlugin(),))],
        title="StoryBench local server (llama-cpp-python)",
        version=llama_cpp.__version__,
    )
    app.include_router(llama_app.router)
    install_error_handlers(app)
    model = proxy.current_model
    served = Served("llama-cpp-python", cfg.model_names, auth, model.n_vocab() if model is not None else None)
    openapi_schema.install(app, served)

    @app.get(METADATA_PATH, tags=["StoryBench"])
    async def storybench_models() -> dict[str, Any]:
        return await anyio.to_thread.run_sync(server_metadata, cfg, proxy)

    return LlamaMiddleware(app, model_names=cfg.model_names)


class StoryBenchApp:
    def __init__(self, cfg: ServerConfig, api_key: str | None, verbose: bool = False) -> None:
        self.cfg = cfg
        self.api_key = api_key
        self.verbose = verbose  # llama.cpp's own log on stderr
        self.state = "loading"  # -> "ready" | "failed"
        self.error: str | None = None
        self.proxy: StoryBenchProxy | None = None
        self.host: EngineHost | None = None  # the batched engine ("engine": "batched")
        self.inner: ASGIApp | None = None
        self.settled = threading.Event()  # set when ready or failed
        self._loader: threading.Thread | None = None

    # --- loading -------------------------------------------------------------------------

    def start_loading(self) -> None:
        if self._loader is None:
            self._loader = threading.Thread(target=self._load, name="model-loader", daemon=True)
            self._loader.start()

    def _load(self) -> None:
        try:
            start = time.perf_counter()
            for d in rpc.attach(self.cfg.rpc_servers):
                free, total = d.free_bytes / 2**30, d.total_bytes / 2**30
                where = f"{d.name} at {d.endpoint}"
                log.info("remote device %s: %s, %.1f of %.1f GiB free", where, d.description, free, total)
            if self.cfg.models[0].entry.engine == "batched":
                self.host = EngineHost(self.cfg, verbose=self.verbose)
                self.host.load(self.cfg.models[0].name)
                self.inner = build_batched_app(self.cfg, self.host, auth=self.api_key is not None)
            else:
                settings = [llama_settings.model_settings(m, self.verbose) for m in self.cfg.models]
                extra = {m.name: llama_settings.extra_model_params(m) for m in self.cfg.models}
                self.proxy = StoryBenchProxy(settings, extra)
                self.inner = build_llama_app(self.cfg, self.proxy, auth=self.api_key is not None)
            self.state = "ready"
            log.info("ready in %.2f s", time.perf_counter() - start)
        except Exception as exc:  # reported by /health and the CLI, which exits 1
            log.debug("loading failed", exc_info=True)
            hint = "" if self.verbose else " (--log-level debug shows llama.cpp's own log)"
            self.error = f"could not load model {self.cfg.models[0].name!r}: {exc}{hint}"
            self.state = "failed"  # the CLI prints the error and exits 1
        finally:
            self.settled.set()
        if self.state == "ready":  # warm the SHA-256 cache for /storybench/models
            threading.Thread(target=self._hash_files, name="sha256-warmup", daemon=True).start()

    def _hash_files(self) -> None:
        for m in self.cfg.models:
            start = time.perf_counter()
            file_sha256(m.path)
            log.info("sha256 of %s in %.2f s", m.path.name, time.perf_counter() - start)

    async def close(self) -> None:
        """Wait for a running generation to end (it holds the model lock), then free the model."""
        AppStatus.should_exit = True  # end any SSE stream uvicorn's graceful shutdown left
        if self._loader is not None:
            await anyio.to_thread.run_sync(self._loader.join, 60.0)
        if self.host is not None:  # uvicorn has let the answers in flight finish
            await anyio.to_thread.run_sync(self.host.free)
            self.host = None
            log.info("model freed")
            return
        if self.proxy is None:
            return
        with anyio.move_on_after(30):
            async with contextlib.asynccontextmanager(llama_app.get_llama_proxy)():
                self.proxy.free()
                self.proxy = None
                log.info("model freed")
                return
        log.warning("a generation still holds the model after 30 s; exiting without freeing it")

    # --- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] == "http" and scope["path"] == "/health":
            await self._health(send)
            return
        # Every other route needs the key, FastAPI's own (/docs, /openapi.json) included: the one
        # check of it (server/auth.py), for both engines.
        if scope["type"] == "http" and not bearer_ok(scope, self.api_key):
            await send_unauthorized(send)
            return
        if self.inner is None:
            if scope["type"] == "http":
                await self._not_ready(send)
            return
        await self.inner(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.start_loading()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _health(self, send: Send) -> None:
        status = {"loading": 503, "ready": 200, "failed": 500}[self.state]
        doc: dict[str, Any] = {"status": self.state, "models": self.cfg.model_names}
        serving = self.proxy or self.host
        if serving is not None:
            doc["current_model"] = serving.current_model_name
        if self.error:
            doc["error"] = self.error
        headers = [(b"retry-after", b"1")] if status == 503 else []
        await send_json(send, status, json.dumps(doc).encode(), headers)

    async def _not_ready(self, send: Send) -> None:
        if self.state == "failed":
            body = {"error": {"message": self.error, "type": "server_error", "code": None}}
            await send_json(send, 500, json.dumps(body).encode())
            return
        body = {
            "error": {
                "message": "The model is loading; retry shortly (GET /health turns 200).",
                "type": "server_error",
                "code": "model_loading",
            }
        }
        await send_json(send, 503, json.dumps(body).encode(), [(b"retry-after", b"1")])
