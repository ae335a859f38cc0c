"""One interface to every model endpoint, whatever serves it: what the runner and the judge use.

Probing a model entry gives an `Endpoint`: our own server (`storybench-serve`, recognised by
`GET /storybench/models`) or any hosted OpenAI-compatible API. Both answer the same questions,
so no caller branches on which it is (inspect_ai's ModelAPI is the model for this):

- `count_tokens(text)`: exact with our server's tokenizer (one pooled HTTP client, each text
  counted once), the documented estimate elsewhere (evaluator/budget.py);
- `context_window`: our server's n_ctx, else the entry's `context_window`, else unknown;
- `max_connections`: the entry's `max_concurrency`, else our server's slot count, else
  DEFAULT_HOSTED_CONNECTIONS;
- `connection_key`: endpoints with the same key share one concurrency bound;
- `one_model_at_a_time`: our server holds one model (and its cached prefixes) at a time, so
  its models are played one after another;
- `metadata`: what the run records about the served model (empty for hosted APIs);
- `chat_client()`: the AsyncOpenAI client (made in the running event loop; `aclose()` ends it);
- `url` / `replica`: the one server it talks to (one of the entry's `base_urls` for a replica,
  evaluator/replicas.py), and that URL without credentials, as each stored turn records it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from openai import AsyncOpenAI

from evaluator.budget import estimate_tokens
from evaluator.client import make_client
from evaluator.config import ModelEntry

# Requests in flight to a hosted API unless the entry's max_concurrency says otherwise.
DEFAULT_HOSTED_CONNECTIONS = 4
PROBE_TIMEOUT_S = 10.0
TOKENIZE_TIMEOUT_S = 30.0
METADATA_PATH = "/storybench/models"  # our server's wire extension (docs/architecture.md)
TOKEN_COUNT_PATH = "/extras/tokenize/count"


def server_root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def public_url(url: str) -> str:
    """`url` without user, password, query or fragment: what may be stored and printed."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class EndpointError(Exception):
    """The endpoint cannot be used as configured; the message says what to fix."""


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Endpoint:
    """A hosted OpenAI-compatible API (the base behaviour); our server overrides what it knows."""

    def __init__(
        self, entry: ModelEntry, *, metadata: dict[str, Any] | None = None, url: str | None = None
    ) -> None:
        self.entry = entry
        self.url = url or entry.base_url  # the server this endpoint talks to
        self.metadata: dict[str, Any] = metadata or {}
        self._chat: AsyncOpenAI | None = None

    @property
    def replica(self) -> str:
        """The server's URL without credentials: what a stored turn records as its replica."""
        return public_url(self.url)

    @property
    def context_window(self) -> int | None:
        return self.entry.context_window

    @property
    def max_connections(self) -> int:
        return self.entry.max_concurrency or DEFAULT_HOSTED_CONNECTIONS

    @property
    def connection_key(self) -> str:
        return server_root(self.url)

    @property
    def one_model_at_a_time(self) -> bool:
        return False

    async def count_tokens(self, text: str) -> int:
        """The documented estimate (evaluator/budget.py); a bound `count_tokens` is a `Counter`."""
        return estimate_tokens(text)

    def chat_client(self) -> AsyncOpenAI:
        """The chat client, made on first use inside the running event loop."""
        if self._chat is None:
            self._chat = make_client(self.url, self.entry.api_key(), self.entry.request_timeout_s)
        return self._chat

    async def aclose(self) -> None:
        """Close the clients this event loop opened (a later loop opens new ones)."""
        if self._chat is not None:
            chat, self._chat = self._chat, None
            await chat.close()


class StoryBenchEndpoint(Endpoint):
    """Our own server: exact token counts, its context size, its slots, one model at a time."""

    def __init__(
        self, entry: ModelEntry, *, metadata: dict[str, Any], slots: int | None, url: str | None = None
    ) -> None:
        super().__init__(entry, metadata=metadata, url=url)
        self.slots = slots
        self._http: httpx.AsyncClient | None = None
        self._counts: dict[str, int] = {}

    @property
    def context_window(self) -> int | None:
        n_ctx = self.metadata.get("n_ctx")
        return int(n_ctx) if n_ctx else self.entry.context_window

    @property
    def max_connections(self) -> int:
        return self.entry.max_concurrency or self.slots or 1

    @property
    def one_model_at_a_time(self) -> bool:
        return True

    async def count_tokens(self, text: str) -> int:
        """Exact, from the server's tokenizer; raises httpx.HTTPError when it cannot answer."""
        if text in self._counts:
            return self._counts[text]
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=server_root(self.url),
                timeout=TOKENIZE_TIMEOUT_S,
                headers=_headers(self.entry.api_key()),
            )
        response = await self._http.post(TOKEN_COUNT_PATH, json={"model": self.entry.model, "input": text})
        response.raise_for_status()
        self._counts[text] = int(response.json()["count"])
        return self._counts[text]

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()
        await super().aclose()


async def probe(entry: ModelEntry, url: str | None = None) -> Endpoint:
    """Recognise our server and fetch its metadata; anything else is a hosted API.

    `url` is one of the entry's replicas (evaluator/replicas.py); the entry's `base_url` if None.
    """
    base_url, model_id, api_key = url or entry.base_url, entry.model, entry.api_key()
    metadata_url = server_root(base_url) + METADATA_PATH
    try:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
            response = await client.get(metadata_url, headers=_headers(api_key))
    except httpx.TransportError as exc:
        if _is_loopback(base_url):
            raise EndpointError(
                f"nothing answers at {public_url(base_url)} ({type(exc).__name__}); start the local "
                "server with `make serve` (or `storybench-serve`) and try again"
            ) from exc
        return Endpoint(entry, url=base_url)
    if response.status_code != 200:
        return Endpoint(entry, url=base_url)
    try:
        body = response.json()
    except ValueError:
        return Endpoint(entry, url=base_url)
    if not isinstance(body, dict) or body.get("server") != "storybench":
        return Endpoint(entry, url=base_url)
    models = {m.get("name"): m for m in body.get("models", []) if isinstance(m, dict)}
    if model_id not in models:
        raise EndpointError(
            f"the server at {public_url(base_url)} does not serve model '{model_id}'; it serves: "
            f"{', '.join(sorted(str(m) for m in models)) or 'nothing'}. "
            "Fix `model` in config/models.yaml or add the model to config/local_models.json"
        )
    slots = body.get("n_parallel") or models[model_id].get("n_parallel")
    return StoryBenchEndpoint(
        entry,
        metadata=models[model_id] | {"server": {k: v for k, v in body.items() if k != "models"}},
        slots=int(slots) if slots else None,
        url=base_url,
    )


def _is_loopback(base_url: str) -> bool:
    host = httpx.URL(base_url).host
    return host in ("127.0.0.1", "localhost", "::1")
