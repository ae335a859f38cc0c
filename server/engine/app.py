"""The batched engine's ASGI app: the OpenAI routes, `/storybench/models`, behind the key and
`StoryBenchMiddleware`'s request checks (what `server.app.build_llama_app` is for the
llama-cpp-python engine)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from server.config import ServerConfig
from server.engine.api import build_router
from server.engine.host import EngineHost
from server.metadata import server_metadata
from server.middleware import StoryBenchMiddleware, bearer_ok, send_unauthorized

METADATA_PATH = "/storybench/models"

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


class _KeyGate:
    """Every route needs the key (GET /health is answered before this app)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not bearer_ok(scope, self.api_key):
            await send_unauthorized(send)
            return
        await self.app(scope, receive, send)


def build_batched_app(cfg: ServerConfig, api_key: str | None, host: EngineHost) -> ASGIApp:
    set_switch_interval()
    app = FastAPI(title="StoryBench local server (batched engine)")
    app.include_router(build_router(host))

    @app.get(METADATA_PATH, tags=["StoryBench"])
    async def storybench_models() -> dict[str, Any]:
        return await anyio.to_thread.run_sync(server_metadata, cfg, host)

    inner = StoryBenchMiddleware(app, model_names=cfg.model_names, api_key=api_key, instrumented=False)
    return _KeyGate(inner, api_key)
