"""The viewer's FastAPI application: `create_app(store_opener, token=None)`.

One store is opened at start-up by a background thread (`store_opener()`, e.g.
`open_store(uri, db)`; else on the first request) and shared by every request and the
background work (services.py; pymongo is thread-safe), then closed when the app shuts down:
opening the embedded database per request would start and stop its server each time.

Every response passes one middleware: anything but GET and HEAD is refused (405; no route
writes), the token is checked when one is set (`?token=` once, which sets a cookie and
redirects to the same page without it, or `Authorization: Bearer`), and the security headers
(security.py) are added to every answer, errors included.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from starlette.templating import Jinja2Templates

from evaluator.store.store import Store
from evaluator.viewer import routes
from evaluator.viewer.background import PAGE_WAIT_S
from evaluator.viewer.embed import LeaderboardFilters, board_key, board_value
from evaluator.viewer.security import (
    HEADERS,
    READ_METHODS,
    TOKEN_COOKIE,
    bearer,
    token_matches,
)
from evaluator.viewer.services import PageGate, Services

HERE = Path(__file__).parent
StoreOpener = Callable[[], Store]
WARM_UP_WAIT_S = 600.0  # the search index starts building after the leaderboard, or after this
# While a run or judge writes, the store changes on every turn: a leaderboard (seconds of work)
# is then computed again at most this often, the page showing the last one, flagged.
BOARD_EVERY_S = 30.0


class StoreHolder:
    """The one store of the app, opened lazily under a lock, closed at shutdown."""

    def __init__(self, opener: StoreOpener) -> None:
        self._opener = opener
        self._store: Store | None = None
        self._lock = threading.Lock()

    def get(self) -> Store:
        with self._lock:
            if self._store is None:
                self._store = self._opener()
            return self._store

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def templates() -> Jinja2Templates:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    return Jinja2Templates(env=env)


def create_app(
    store_opener: StoreOpener,
    token: str | None = None,
    *,
    cache_root: Path | None = None,
    wait_s: float = PAGE_WAIT_S,
    board_every_s: float = BOARD_EVERY_S,
) -> FastAPI:
    """The read-only viewer over the store `store_opener` opens; `token` protects every route.
    `cache_root` keeps computed pages and the search index between starts (services.py; a
    temporary folder when None); `wait_s` is how long a page waits for background work;
    `board_every_s` how often at most a leaderboard is computed again while the store changes."""
    gate = PageGate()

    def opened() -> Store:
        store = store_opener()
        store.between_pages = gate.pause  # background reads give way to pages
        return store

    holder = StoreHolder(opened)
    services = Services(holder.get, cache_root, warm=_warm_up)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        services.start()
        try:
            yield
        finally:
            services.close()
            holder.close()

    app = FastAPI(
        title="StoryBench viewer", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.store = holder
    app.state.services = services
    app.state.wait_s = wait_s
    app.state.board_every_s = board_every_s
    app.state.templates = templates()
    app.include_router(routes.router)  # before the mount: /static/report.css is a route
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        with gate.answering():
            response = await _checked(request, call_next, token)
        for name, value in HEADERS.items():
            response.headers[name] = value
        return response

    return app


def _warm_up(services: Services) -> None:
    """At start: the default leaderboard, the slowest page (the search index builds itself)."""
    store = services.store()
    filters = LeaderboardFilters()
    services.results().get(
        board_key(filters), store.change_marks(), lambda: board_value(store, filters), wait_s=WARM_UP_WAIT_S
    )


async def _checked(
    request: Request, call_next: Callable[[Request], Awaitable[Response]], token: str | None
) -> Response:
    if request.method not in READ_METHODS:
        return PlainTextResponse("The viewer is read-only: GET only.", 405, headers={"Allow": "GET, HEAD"})
    if token is None:
        return await call_next(request)
    given = request.query_params.get("token")
    if given is not None and token_matches(token, given):
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
        query = urlencode(rest)
        redirect = RedirectResponse(request.url.path + (f"?{query}" if query else ""), 303)
        redirect.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return redirect
    if token_matches(token, bearer(request.headers.get("authorization"))) or token_matches(
        token, request.cookies.get(TOKEN_COOKIE)
    ):
        return await call_next(request)
    return PlainTextResponse(
        "This viewer needs its token: open it once with ?token=<STORYBENCH_VIEW_TOKEN> "
        "or send Authorization: Bearer <token>.",
        401,
    )
