"""The batched engine's ASGI app: the OpenAI routes and `/storybench/models` behind
`StoryBenchMiddleware`'s request checks (what `server.app.build_llama_app` is for the
llama-cpp-python engine). The key is checked before, once, by `StoryBenchApp`."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.types import ASGIApp

from server import openapi_schema
from server.config import ServerConfig
from server.engine.api import build_router
from server.engine.host import EngineHost
from server.metadata import METADATA_PATH, server_metadata
from server.middleware import StoryBenchMiddleware
from server.openai_errors import install_error_handlers
from server.openapi_schema import Served

# The engine thread needs the GIL back as soon as each decode returns. Python's default switch
# interval (5 ms) lets the event loop, busy turning many streams' tokens into SSE chunks, hold it
# for a whole GPU step; asking for it back sooner keeps the GPU fed. The variable is for
# measuring that choice (milliseconds).
SWITCH_INTERVAL_ENV = "STORYBENCH_SWITCH_INTERVAL_MS"
DEFAULT_SWITCH_INTERVAL_MS = 0.5

log = logging.getLogger("storybench.server")


def set_switch_interval() -> float:
    raw = os.environ.get(SWITCH_INTERVAL_ENV, "")
    try:
        ms = float(raw) if raw else DEFAULT_SWITCH_INTERVAL_MS
    except ValueError:
        log.warning("%s=%r is not a number of milliseconds; using %s", SWITCH_INTERVAL_ENV, raw,
                    DEFAULT_SWITCH_INTERVAL_MS)  # fmt: skip
        ms = DEFAULT_SWITCH_INTERVAL_MS
    sys.setswitchinterval(max(ms, 0.01) / 1000.0)
    return ms


def build_batched_app(cfg: ServerConfig, host: EngineHost, auth: bool = False) -> ASGIApp:
    """`auth`: whether `StoryBenchApp` asks for a key (the OpenAPI schema declares it)."""
    set_switch_interval()
    app = FastAPI(title="StoryBench local server (batched engine)")
    app.include_router(build_router(host))
    install_error_handlers(app)
    n_vocab = host.engine.model.n_vocab if host.engine is not None else None
    openapi_schema.install(app, Served("batched", cfg.model_names, auth, n_vocab))

    @app.get(METADATA_PATH, tags=["StoryBench"])
    async def storybench_models() -> dict[str, Any]:
        return await anyio.to_thread.run_sync(server_metadata, cfg, host)

    return StoryBenchMiddleware(app, model_names=cfg.model_names)
