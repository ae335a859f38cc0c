"""The request checks both engines share, as ASGI middleware on the POST routes.

For `POST /v1/chat/completions` and `POST /v1/completions` (the bearer key has been checked
once, before this, by `StoryBenchApp`: server/auth.py) it:

1. answers 404 for a `model` the server does not have (upstream silently answers with the
   first model), and 400 for `n` > 1 and logprobs (unsupported; upstream would ignore `n` or
   fail with a 500);
2. maps `max_completion_tokens` (newer OpenAI clients) to `max_tokens`, which upstream reads,
   and drops nulls for fields that have a default (upstream would hand None to llama.cpp);
3. hands the request on through `generate`, which the llama-cpp-python engine overrides to add
   the preflight context check and the `timings` rewriting (server/llama_middleware.py); the
   batched engine does both itself (server/engine/api.py).

Bad requests get a 4xx with a message, never upstream's 500 (its route wrapper turns every
exception, validation errors included, into a 500) and never a crash: bodies that are not JSON
objects (400), invalid fields (422, in OpenAI's error shape), an empty prompt, no messages or
several prompts (400), `logit_bias` keys that are not token ids (400), a forced `tool_choice`
or `function_call` (400). The tokenizer routes get the same body checks; `/v1/embeddings`
answers 400 (models are loaded for generation only). What passes here is what the published
OpenAPI schema calls valid (server/openapi_schema.py). The checks themselves are in
server/request_checks.py; this module reads, parses and replays the body around them.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.openai_errors import error_body, send_json
from server.request_checks import (
    GENERATION_PATHS,
    OTHER_POST_PATHS,
    Rejection,
    check_generation,
    check_other,
    normalize,
    validate_generation,
)


class StoryBenchMiddleware:
    """Body checks and rewrites for the POST routes (module docstring)."""

    def __init__(self, app: ASGIApp, *, model_names: list[str]) -> None:
        self.app = app
        self.model_names = model_names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        kind = GENERATION_PATHS.get(path)
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or (kind is None and path not in OTHER_POST_PATHS)
        ):
            await self.app(scope, receive, send)
            return
        raw = await read_body(receive)
        if raw is None:  # client went away
            return
        try:
            body = json.loads(raw)
        except ValueError:  # not JSON, or not UTF-8
            body = None
        if not isinstance(body, dict):
            await send_json(
                send, 400, error_body("The request body must be a JSON object.", code="invalid_json")
            )
            return
        if kind is None:
            rejection = await self.check_other(path, body)
            if rejection is not None:
                await send_json(send, *rejection)
                return
            await self.app(scope, replay(raw, receive), send)
            return

        rejection = check_generation(kind, body, self.model_names)
        if rejection is not None:
            await send_json(send, *rejection)
            return
        if normalize(kind, body):
            raw = json.dumps(body).encode("utf-8")
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(raw)).encode())]}
        rejection = validate_generation(kind, body)
        if rejection is not None:
            await send_json(send, *rejection)
            return
        await self.generate(kind, body, scope, replay(raw, receive), send)

    async def check_other(self, path: str, body: dict[str, Any]) -> Rejection | None:
        """The tokenizer and embedding routes' checks (an engine may add its own)."""
        return check_other(path, body, self.model_names)

    async def generate(
        self, kind: str, body: dict[str, Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Hand a checked generation request (`body`, already in `receive`) to the engine."""
        await self.app(scope, receive, send)


async def read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(raw: bytes, receive: Receive) -> Receive:
    """A receive() that hands the buffered body over once, then waits on the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay
