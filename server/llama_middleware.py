"""The llama-cpp-python engine's additions to the shared request checks (server/middleware.py).

llama-cpp-python's routes neither check that a prompt fits nor report `timings`, and its
detokenizer crashes on some input, so for this engine only:

- `/extras/detokenize`: token ids outside the vocabulary are refused (detokenizing them
  SIGSEGVs llama.cpp), and so are tokens that do not form UTF-8 text (upstream answers 500);
- generation requests get the preflight (server/preflight.py: HTTP 400
  `context_length_exceeded` before any response starts; a grammar llama.cpp cannot parse and a
  prompt the chat template refuses are 400s too), then run with a `RequestMetrics` in
  `CURRENT_METRICS`, and their responses are rewritten to carry `timings` and the usage chunk
  (server/response_rewrite.py).

The batched engine needs none of this: it checks token ids, counts prompts and builds `timings`
itself (server/engine/api.py).
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
from llama_cpp.server import app as llama_app
from llama_cpp.server.types import DetokenizeInputRequest
from starlette.types import Receive, Scope, Send

from server.instrumented import CURRENT_METRICS, RequestMetrics
from server.middleware import StoryBenchMiddleware
from server.openai_errors import error_body, send_json
from server.preflight import preflight
from server.request_checks import Rejection, unknown_model
from server.response_rewrite import ResponseWriter


class LlamaMiddleware(StoryBenchMiddleware):
    """The shared checks, plus the detokenize check, preflight and response rewriting."""

    async def check_other(self, path: str, body: dict[str, Any]) -> Rejection | None:
        rejection = await super().check_other(path, body)
        if rejection is not None or path != "/extras/detokenize":
            return rejection
        if unknown_model(body, self.model_names) is not None:
            return None  # upstream answers 404 naming the models
        request = DetokenizeInputRequest.model_validate(body)  # valid: checked above
        async with contextlib.asynccontextmanager(llama_app.get_llama_proxy)() as proxy:
            problem = await anyio.to_thread.run_sync(detokenize_problem, proxy(request.model), request.tokens)
        if problem is not None:
            return 400, error_body(problem, code="invalid_token", param="tokens")
        return None

    async def generate(
        self, kind: str, body: dict[str, Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
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
            await self.app(scope, receive, writer.send)
        finally:
            CURRENT_METRICS.reset(token)


def detokenize_problem(llama: Any, tokens: list[int]) -> str | None:
    """Why upstream's /extras/detokenize would fail on these tokens (SIGSEGV for ids outside the
    vocabulary, a 500 for bytes that are not UTF-8), or None."""
    n_vocab = llama.n_vocab()
    bad = [t for t in tokens if not 0 <= t < n_vocab]
    if bad:
        return f"Token ids must be from 0 to {n_vocab - 1} (this model's vocabulary); got {bad[:5]}."
    try:
        llama.detokenize(tokens).decode("utf-8")
    except UnicodeDecodeError:
        return (
            "These tokens do not form UTF-8 text (they split a multi-byte character); "
            "detokenize a longer sequence."
        )
    return None
