"""What the evaluator learns about an endpoint before sending it any chat request.

Our own server (`storybench-serve`) answers `GET /storybench/models` with the exact model file,
settings and context size; the run records that, reads the context window from it and counts
tokens with the server's tokenizer. Any other endpoint is treated as a hosted API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from evaluator.budget import Counter


def server_root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


@dataclass
class EndpointInfo:
    base_url: str
    is_storybench_server: bool = False
    reachable: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)  # the server's entry for this model
    slots: int | None = None

    @property
    def context_window(self) -> int | None:
        n_ctx = self.metadata.get("n_ctx")
        return int(n_ctx) if n_ctx else None


class EndpointError(Exception):
    pass


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def probe(base_url: str, model_id: str, api_key: str | None) -> EndpointInfo:
    """Recognise our server and fetch its metadata; a hosted API just yields defaults."""
    url = server_root(base_url) + "/storybench/models"
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(url, headers=_headers(api_key))
    except httpx.TransportError as exc:
        if _is_loopback(base_url):
            raise EndpointError(
                f"nothing answers at {base_url} ({type(exc).__name__}); start the local server "
                "with `make serve` (or `storybench-serve`) and try again"
            ) from exc
        return EndpointInfo(base_url=base_url, reachable=False)
    if response.status_code != 200:
        return EndpointInfo(base_url=base_url)
    try:
        body = response.json()
    except ValueError:
        return EndpointInfo(base_url=base_url)
    if not isinstance(body, dict) or body.get("server") != "storybench":
        return EndpointInfo(base_url=base_url)
    models = {m.get("name"): m for m in body.get("models", []) if isinstance(m, dict)}
    if model_id not in models:
        raise EndpointError(
            f"the server at {base_url} does not serve model '{model_id}'; it serves: "
            f"{', '.join(sorted(str(m) for m in models)) or 'nothing'}. "
            "Fix `model` in config/models.yaml or add the model to config/local_models.json"
        )
    slots = body.get("n_parallel") or models[model_id].get("n_parallel")
    return EndpointInfo(
        base_url=base_url,
        is_storybench_server=True,
        metadata=models[model_id] | {"server": {k: v for k, v in body.items() if k != "models"}},
        slots=int(slots) if slots else None,
    )


def _is_loopback(base_url: str) -> bool:
    host = httpx.URL(base_url).host
    return host in ("127.0.0.1", "localhost", "::1")


def token_counter(base_url: str, model_id: str, api_key: str | None) -> Counter:
    """Exact counts from our server's tokenizer; each distinct text is counted once."""
    cache: dict[str, int] = {}
    url = server_root(base_url) + "/extras/tokenize/count"

    async def count(text: str) -> int:
        if text in cache:
            return cache[text]
        async with httpx.AsyncClient(timeout=30.0) as client:
            response = await client.post(
                url, json={"model": model_id, "input": text}, headers=_headers(api_key)
            )
        response.raise_for_status()
        cache[text] = int(response.json()["count"])
        return cache[text]

    return count
