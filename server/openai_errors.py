"""OpenAI-style error answers, the same from both engines: the body, the 422 for an invalid
request, the 401 for a missing or wrong key, the 400 `context_length_exceeded` with its numbers,
the 404 for an unknown model, sending a JSON answer over raw ASGI, and the FastAPI exception
handlers that give an `HTTPException` or a request validation error the same body (FastAPI's
own would be `{"detail": ...}`, which the OpenAPI schema does not promise). Both engines import
these from here, so neither imports the other's modules for an error."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
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
    return invalid_fields(exc.errors())


def invalid_fields(errors: Sequence[Any]) -> tuple[int, bytes]:
    """422 for pydantic's error list (`loc`, `msg` of each)."""
    problems = ["/".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in errors[:SHOWN_PROBLEMS]]
    more = f" (and {len(errors) - SHOWN_PROBLEMS} more)" if len(errors) > SHOWN_PROBLEMS else ""
    param = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else None
    return 422, error_body(
        "Invalid request: " + "; ".join(problems) + more, code="invalid_request", param=param
    )


def context_overflow(
    kind: str, prompt_tokens: int, max_tokens: int | None, n_ctx: int
) -> tuple[int, bytes] | None:
    """The 400 `context_length_exceeded` answer when a request does not fit n_ctx, else None.

    Prompt + max_tokens == n_ctx fits. The numbers travel as fields of the error (the evaluator
    resizes `max_tokens` from them): `prompt_tokens`, `max_tokens` (None when not set), `n_ctx`.
    """
    if prompt_tokens < n_ctx and (max_tokens is None or prompt_tokens + max_tokens <= n_ctx):
        return None
    param = "messages" if kind == "chat" else "prompt"
    if prompt_tokens >= n_ctx:
        message = (
            f"The prompt is {prompt_tokens} tokens, which does not fit this model's context "
            f"window (n_ctx) of {n_ctx} tokens (requested max_tokens: "
            f"{max_tokens if max_tokens is not None else 'not set'}). "
            "Shorten the prompt or raise n_ctx in the server config."
        )
    else:
        assert max_tokens is not None
        message = (
            f"This request needs {prompt_tokens + max_tokens} tokens ({prompt_tokens} prompt "
            f"tokens + {max_tokens} requested max_tokens) but this model's context window "
            f"(n_ctx) is {n_ctx} tokens. Lower max_tokens to at most "
            f"{n_ctx - prompt_tokens}, shorten the prompt, or raise n_ctx in the server config."
        )
        param = "max_tokens"
    return 400, error_body(
        message,
        code="context_length_exceeded",
        param=param,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        n_ctx=n_ctx,
    )


def unknown_model_message(model: str, known: list[str]) -> str:
    return f"The model `{model}` does not exist on this server. Known models: {', '.join(known)}"


class UnknownModelError(HTTPException):
    """Raised by either engine's model holder for a name it does not serve (FastAPI answers 404
    with `detail`, as llama-cpp-python's routes do; the generation routes never get this far:
    `request_checks.unknown_model` answers them in OpenAI's shape first)."""

    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(status_code=404, detail=unknown_model_message(model, known))
        self.known = known


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, UnknownModelError):
        body = error_body(exc.detail, code="model_not_found", param="model", known_models=exc.known)
    else:
        body = error_body(str(exc.detail), code=None)
    return Response(body, status_code=exc.status_code, media_type="application/json", headers=exc.headers)


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # FastAPI prefixes each location with where the value was ("body", "query", ...).
    errors = [{**e, "loc": tuple(e["loc"])[1:] or tuple(e["loc"])} for e in exc.errors()]
    status, body = invalid_fields(errors)
    return Response(body, status_code=status, media_type="application/json")


def install_error_handlers(app: FastAPI) -> None:
    """Every error FastAPI answers itself in OpenAI's shape, for either engine's app."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)


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
