"""OpenAI-style error answers, the same from both engines: the body, the 422 for an invalid
request, the 401 for a missing or wrong key, and sending a JSON answer over raw ASGI."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.types import Send

# Fields of a 422 listed before "(and N more)".
SHOWN_PROBLEMS = 5


def error_body(message: str, *, code: str | None, param: str | None = None, **extra: Any) -> bytes:
    """An OpenAI-style error document."""
    err: dict[str, Any] = {
        "message": message,
        "type": "invalid_request_error",
        "param": param,
        "code": code,
    }
    err.update(extra)
    return json.dumps({"error": err}).encode("utf-8")


def invalid_request(exc: ValidationError) -> tuple[int, bytes]:
    """422 naming the invalid fields (never echoing their values)."""
    errors = exc.errors()
    problems = ["/".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in errors[:SHOWN_PROBLEMS]]
    more = f" (and {len(errors) - SHOWN_PROBLEMS} more)" if len(errors) > SHOWN_PROBLEMS else ""
    param = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else None
    return 422, error_body(
        "Invalid request: " + "; ".join(problems) + more, code="invalid_request", param=param
    )


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_unauthorized(send: Send) -> None:
    await send_json(
        send,
        401,
        error_body("Invalid API key", code="invalid_api_key"),
        [(b"www-authenticate", b"Bearer")],
    )
