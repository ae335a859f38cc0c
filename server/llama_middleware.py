"""The llama-cpp-python engine's additions to the shared request checks (server/middleware.py).

llama-cpp-python's routes neither check that a prompt fits nor report `timings`, and its
detokenizer crashes on some input, so for this engine only:

- `/extras/detokenize` is answered here: token ids outside the vocabulary are refused
  (detokenizing them SIGSEGVs llama.cpp), and tokens that split a UTF-8 character give U+FFFD
  as in the batched engine (upstream decodes strictly and answers 500);
- `logit_bias` token ids outside the vocabulary are refused, as the batched engine does
  (upstream would bias some other token or fail);
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
import json
from typing import Any

import anyio
from llama_cpp.server import app as llama_app
from llama_cpp.server.types import DetokenizeInputRequest
from starlette.types import Receive, Scope, Send

from server.instrumented import CURRENT_METRICS, RequestMetrics
from server.middleware import StoryBenchMiddleware
from server.openai_errors import error_body, send_json
from server.preflight import preflight
from server.request_checks import Rejection
from server.response_rewrite import ResponseWriter


class LlamaMiddleware(StoryBenchMiddleware):
    """The shared checks, plus the detokenize check, preflight and response rewriting."""

    async def check_other(self, path: str, body: dict[str, Any]) -> Rejection | None:
        """The shared checks; then the answer to /extras/detokenize (module docstring)."""
        rejection = await super().check_other(path, body)
        if rejection is not None or path != "/extras/detokenize":
            return rejection
        request = DetokenizeInputRequest.model_validate(body)  # valid, known model: checked above
        async with contextlib.asynccontextmanager(llama_app.get_llama_proxy)() as proxy:
            return await anyio.to_thread.run_sync(detokenize_answer, proxy(request.model), request.tokens)

    async def generate(
        self, kind: str, body: dict[str, Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        rejection = await self.check_logit_bias(body)
        if rejection is None:
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

    async def check_logit_bias(self, body: dict[str, Any]) -> Rejection | None:
        """400 for a `logit_bias` token id outside the model's vocabulary (the keys are
        decimal integers: checked before, server/request_checks.py)."""
        bias = body.get("logit_bias")
        if not isinstance(bias, dict) or not bias or body.get("logit_bias_type") not in (None, "input_ids"):
            return None
        async with contextlib.asynccontextmanager(llama_app.get_llama_proxy)() as proxy:
            llama = await anyio.to_thread.run_sync(proxy, body.get("model"))
            n_vocab = llama.n_vocab()
        bad = sorted(int(key) for key in bias if int(key) >= n_vocab)
        if bad:
            message = f"logit_bias token ids must be from 0 to {n_vocab - 1} (the vocabulary); got {bad[:5]}."
            return 400, error_body(message, code="invalid_logit_bias", param="logit_bias")
        return None


def detokenize_answer(llama: Any, tokens: list[int]) -> Rejection:
    """/extras/detokenize's answer: 400 for ids outside the vocabulary (llama.cpp would
    SIGSEGV), else the text, a character split by the sequence's ends as U+FFFD."""
    n_vocab = llama.n_vocab()
    bad = [t for t in tokens if not 0 <= t < n_vocab]
    if bad:
        message = f"Token ids must be from 0 to {n_vocab - 1} (this model's vocabulary); got {bad[:5]}."
        return 400, error_body(message, code="invalid_token", param="tokens")
    text = llama.detokenize(tokens).decode("utf-8", errors="replace")
    return 200, json.dumps({"text": text}).encode("utf-8")
