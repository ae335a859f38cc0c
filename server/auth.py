"""The bearer-key rule, checked once per request by `StoryBenchApp` for every route but
`/health` (both engines, FastAPI's /docs and /openapi.json included). Nothing behind it checks
again: llama-cpp-python's own `authenticate` dependency is given no key."""

from __future__ import annotations

import hmac

from starlette.types import Scope


def bearer_ok(scope: Scope, api_key: str | None) -> bool:
    """No key configured, or `Authorization: Bearer <key>` (compared in constant time)."""
    if api_key is None:
        return True
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(
                credentials.strip().encode(), api_key.encode()
            )
    return False
