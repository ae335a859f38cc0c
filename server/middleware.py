"""ASGI middleware around llama-cpp-python's FastAPI app, for the two generation routes.

For `POST /v1/chat/completions` and `POST /v1/completions` it:

1. (the bearer key is checked once, before this, by `StoryBenchApp`: server/auth.py);
2. answers 404 for a `model` the server does not have (upstream silently answers with the
   first model), and 400 for `n` > 1 and logprobs (unsupported; upstream would ignore `n` or
   fail with a 500);
3. maps `max_completion_tokens` (newer OpenAI clients) to `max_tokens`, which upstream reads,
   and drops nulls for fields that have a default (upstream would hand None to llama.cpp);
4. runs a *preflight* under the server's model lock: the prompt is rendered and tokenized
   exactly as the real call will do it, and if it does not fit the context (prompt >= n_ctx, or
   prompt + max_tokens > n_ctx) the answer is HTTP 400 `context_length_exceeded` with the
   numbers, before any response has started (upstream silently clips max_tokens instead);
5. adds `timings` (and `usage.prompt_tokens_details.cached_tokens`) to JSON responses and,
   for streams with `stream_options: {"include_usage": true}`, sends a last chunk with `usage`
   and `timings` (and `choices: []`) before `data: [DONE]`.

Bad requests get a 4xx with a message, never upstream's 500 (its route wrapper turns every
exception, validation errors included, into a 500) and never a crash: bodies that are not JSON
objects (400), invalid fields (422), an empty prompt or several prompts (400), non-integer
`logit_bias` keys (400), a grammar llama.cpp cannot parse (400; it would SIGSEGV the process),
a prompt the chat template or tokenizer refuses (400). The tokenizer routes get the same body
checks and token ids outside the vocabulary are refused (detokenizing them SIGSEGVs);
`/v1/embeddings` answers 400 (models are loaded for generation only).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.instrumented import CURRENT_METRICS, RequestMetrics
from server.openai_errors import error_body, send_json
from server.preflight import preflight
from server.request_checks import (
    GENERATION_PATHS,
    OTHER_POST_PATHS,
    check_generation,
    check_other,
    normalize,
)
from server.response_rewrite import ResponseWriter


class StoryBenchMiddleware:
    """Checks, rewrites, preflight and response rewriting for the POST routes (module docstring)."""

    def __init__(self, app: ASGIApp, *, model_names: list[str], instrumented: bool = True) -> None:
        self.app = app
        self.model_names = model_names
        # False: the app (the batched engine) checks the context and adds timings and the
        # usage chunk itself; only the request checks above apply.
        self.instrumented = instrumented

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
            rejection = await check_other(path, body, self.model_names, instrumented=self.instrumented)
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

        if not self.instrumented:
            await self.app(scope, replay(raw, receive), send)
            return
        rejection = await preflight(kind, body)
        if rejection is not None:
            await send_json(send, *rejection)
            return

        metrics = RequestMetrics()
        token = CURRENT_METRICS.set(metrics)
        try:
            options = body.get("stream_options")
            include_usage = (
                body.get("stream") is True
                and isinstance(options, dict)
                and options.get("include_usage") is True
            )
            writer = ResponseWriter(send, metrics, kind, include_usage)
            await self.app(scope, replay(raw, receive), writer.send)
        finally:
            CURRENT_METRICS.reset(token)


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
