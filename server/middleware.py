"""ASGI middleware around llama-cpp-python's FastAPI app, for the two generation routes.

For `POST /v1/chat/completions` and `POST /v1/completions` it:

1. checks the bearer key (when one is configured) before anything else;
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

import contextlib
import hmac
import json
import logging
from typing import Any

import anyio
from llama_cpp.llama_grammar import LlamaGrammar
from llama_cpp.server import app as llama_app
from llama_cpp.server.types import (
    CreateChatCompletionRequest,
    CreateCompletionRequest,
    CreateEmbeddingRequest,
    DetokenizeInputRequest,
    TokenizeInputRequest,
)
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.instrumented import (
    CURRENT_METRICS,
    PREFLIGHT,
    InvalidGrammar,
    PromptMeasured,
    RequestMetrics,
)

log = logging.getLogger("storybench.server")

GENERATION_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
# Upstream's other POST routes and their bodies. Upstream answers any invalid body with a 500
# (its RouteErrorHandler wraps every exception, validation errors included), and a token id
# outside the vocabulary kills the process in llama.cpp: bodies are checked here first.
OTHER_POST_PATHS: dict[str, type[BaseModel]] = {
    "/extras/tokenize": TokenizeInputRequest,
    "/extras/tokenize/count": TokenizeInputRequest,
    "/extras/detokenize": DetokenizeInputRequest,
    "/v1/embeddings": CreateEmbeddingRequest,
}
# The keys upstream's routes drop before calling llama-cpp-python (llama_cpp/server/app.py).
_CHAT_EXCLUDE = {"n", "logit_bias_type", "user", "min_tokens"}
_COMPLETION_EXCLUDE = {"n", "best_of", "logit_bias_type", "user", "min_tokens"}


class RequestUnservable(Exception):
    """llama-cpp-python failed while rendering or tokenizing a request's prompt (a chat template
    that refuses the messages, an unknown tool_choice, ...): a property of the request."""


def invalid_request(exc: ValidationError) -> tuple[int, bytes]:
    """422 naming the invalid fields (never echoing their values)."""
    errors = exc.errors()
    problems = ["/".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    param = str(errors[0]["loc"][0]) if errors and errors[0]["loc"] else None
    return 422, error_body(
        "Invalid request: " + "; ".join(problems) + more, code="invalid_request", param=param
    )


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


def bearer_ok(scope: Scope, api_key: str | None) -> bool:
    """Same rule as upstream's `authenticate`: no key configured, or `Bearer <key>`."""
    if api_key is None:
        return True
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            return scheme.lower() == "bearer" and hmac.compare_digest(
                credentials.strip().encode(), api_key.encode()
            )
    return False


async def send_unauthorized(send: Send) -> None:
    await send_json(
        send,
        401,
        error_body("Invalid API key", code="invalid_api_key"),
        [(b"www-authenticate", b"Bearer")],
    )


class StoryBenchMiddleware:
    def __init__(
        self, app: ASGIApp, *, model_names: list[str], api_key: str | None, instrumented: bool = True
    ) -> None:
        self.app = app
        self.model_names = model_names
        self.api_key = api_key
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
        if not bearer_ok(scope, self.api_key):
            await send_unauthorized(send)
            return
        raw = await _read_body(receive)
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
            rejection = await self._check_other(path, body)
            if rejection is not None:
                await send_json(send, *rejection)
                return
            await self.app(scope, _replay(raw, receive), send)
            return

        rejection = self._check_request(kind, body)
        if rejection is not None:
            await send_json(send, *rejection)
            return
        edited = _drop_nulls(kind, body)
        if "max_completion_tokens" in body and body.get("max_tokens") is None:
            body["max_tokens"] = body["max_completion_tokens"]
            edited = True
        if edited:
            raw = json.dumps(body).encode("utf-8")
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
            scope = {**scope, "headers": [*headers, (b"content-length", str(len(raw)).encode())]}

        if not self.instrumented:
            await self.app(scope, _replay(raw, receive), send)
            return
        rejection = await _preflight(kind, body)
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
            writer = _ResponseWriter(send, metrics, kind, include_usage)
            await self.app(scope, _replay(raw, receive), writer.send)
        finally:
            CURRENT_METRICS.reset(token)

    async def _check_other(self, path: str, body: dict[str, Any]) -> tuple[int, bytes] | None:
        """Tokenizer and embedding routes: a valid body, text and token ids that llama.cpp can
        take."""
        try:
            request: Any = OTHER_POST_PATHS[path].model_validate(body)
        except ValidationError as exc:
            return invalid_request(exc)
        if self._unknown_model(body) is not None:
            return None  # upstream answers 404 naming the models
        if path == "/v1/embeddings":
            return 400, error_body(
                "Embeddings are not served: StoryBench loads models for text generation only.",
                code="unsupported_endpoint",
            )
        if path != "/extras/detokenize":
            try:
                request.input.encode("utf-8")
            except UnicodeEncodeError:
                return 400, error_body(
                    "`input` is not valid Unicode text.", code="invalid_text", param="input"
                )
            return None
        if not self.instrumented:
            return None
        async with contextlib.asynccontextmanager(llama_app.get_llama_proxy)() as proxy:
            problem = await anyio.to_thread.run_sync(
                _detokenize_problem, proxy(request.model), request.tokens
            )
        if problem is not None:
            return 400, error_body(problem, code="invalid_token", param="tokens")
        return None

    def _unknown_model(self, body: dict[str, Any]) -> tuple[int, bytes] | None:
        model = body.get("model")
        if model is not None and model not in self.model_names:
            known = ", ".join(self.model_names)
            return 404, error_body(
                f"The model `{model}` does not exist on this server. Known models: {known}",
                code="model_not_found",
                param="model",
                known_models=self.model_names,
            )
        return None

    def _check_request(self, kind: str, body: dict[str, Any]) -> tuple[int, bytes] | None:
        unknown = self._unknown_model(body)
        if unknown is not None:
            return unknown
        if kind == "completion":
            prompt = body.get("prompt")  # absent or null: upstream's default, ""
            if isinstance(prompt, list) and len(prompt) > 1:
                return 400, error_body(
                    f"{len(prompt)} prompts in one request are not supported; send one request per prompt.",
                    code="unsupported_parameter",
                    param="prompt",
                )
            if prompt in (None, "", [], [""]):
                return 400, error_body("The prompt is empty.", code="empty_prompt", param="prompt")
        bias = body.get("logit_bias")
        by_id = body.get("logit_bias_type") in (None, "input_ids")
        if isinstance(bias, dict) and by_id and not all(k.strip().lstrip("-").isdigit() for k in bias):
            return 400, error_body(
                'logit_bias keys must be token ids (integers as strings), e.g. {"50256": -100}.',
                code="invalid_logit_bias",
                param="logit_bias",
            )
        n = body.get("n")
        if isinstance(n, int) and n > 1:
            return 400, error_body(
                f"n={n} is not supported: this server returns one choice per request; "
                "send n separate requests.",
                code="unsupported_parameter",
                param="n",
            )
        wants_logprobs = (
            body.get("logprobs") is True or body.get("top_logprobs") is not None
            if kind == "chat"
            else body.get("logprobs") is not None
        )
        if wants_logprobs:
            return 400, error_body(
                "logprobs are not supported: the server runs llama.cpp with logits_all off, "
                "which keeps only the last token's logits (keeping all of them costs "
                "n_ctx x n_vocab floats and slows decoding).",
                code="unsupported_parameter",
                param="logprobs",
            )
        return None


def _detokenize_problem(llama: Any, tokens: list[int]) -> str | None:
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


def _drop_nulls(kind: str, body: dict[str, Any]) -> bool:
    """A null for a field with a default means that default. Upstream would pass None on to
    llama.cpp (`"presence_penalty": null` fails in ctypes with a 500). True if any was dropped."""
    model = CreateChatCompletionRequest if kind == "chat" else CreateCompletionRequest
    nulls = [
        name
        for name, field in model.model_fields.items()
        if name in body and body[name] is None and field.default is not None
    ]
    for name in nulls:
        del body[name]
    return bool(nulls)


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(raw: bytes, receive: Receive) -> Receive:
    """A receive() that hands the buffered body over once, then waits on the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await receive()

    return replay


# --- preflight: does the prompt fit? -------------------------------------------------------


async def _preflight(kind: str, body: dict[str, Any]) -> tuple[int, bytes] | None:
    try:
        if kind == "chat":
            request: Any = CreateChatCompletionRequest.model_validate(body)
            kwargs = request.model_dump(exclude=_CHAT_EXCLUDE)
        else:
            request = CreateCompletionRequest.model_validate(body)
            kwargs = request.model_dump(exclude=_COMPLETION_EXCLUDE)
            prompt = kwargs["prompt"]
            if isinstance(prompt, list):
                if len(prompt) > 1:
                    return None  # upstream refuses lists of prompts itself
                kwargs["prompt"] = prompt[0] if prompt else ""
    except ValidationError as exc:
        return invalid_request(exc)  # upstream would answer 500
    # Sampling extras only shape generation, never the prompt. A grammar (given, or derived from
    # response_format or tools) is checked on the way: an invalid one would crash llama.cpp.
    grammar = kwargs.get("grammar")
    kwargs.update(stream=False, logit_bias=None)
    kwargs["grammar"] = None if grammar is None else LlamaGrammar.from_string(grammar)
    async with contextlib.asynccontextmanager(llama_app.get_llama_proxy)() as proxy:
        try:
            measured = await anyio.to_thread.run_sync(_measure_prompt, proxy, kind, kwargs)
        except InvalidGrammar as exc:
            return 400, error_body(str(exc), code="invalid_grammar", param="grammar")
        except RequestUnservable as exc:
            return 400, error_body(str(exc), code="invalid_request")
    if measured is None:
        return None
    prompt_tokens, n_ctx = measured
    max_tokens = request.max_tokens if request.max_tokens and request.max_tokens > 0 else None
    return context_overflow(kind, prompt_tokens, max_tokens, n_ctx)


def context_overflow(
    kind: str, prompt_tokens: int, max_tokens: int | None, n_ctx: int
) -> tuple[int, bytes] | None:
    """The 400 `context_length_exceeded` answer when a request does not fit n_ctx, else None."""
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


def _measure_prompt(proxy: Any, kind: str, kwargs: dict[str, Any]) -> tuple[int, int] | None:
    """(prompt tokens, n_ctx) of a request, found by running it up to generation."""
    try:
        llama = proxy(kwargs.get("model"))
    except Exception:  # unknown model / load failure: the real call reports it
        log.exception("preflight: could not get the model")
        return None
    n_ctx = llama.n_ctx()
    saved_seed, saved_n_ctx = llama._seed, llama._n_ctx
    # Upstream raises before generate() when the prompt reaches n_ctx: lift that limit for the
    # preflight so every prompt reaches generate(), which raises PromptMeasured at once.
    llama._n_ctx = 2**31 - 1
    flag = PREFLIGHT.set(True)
    try:
        if kind == "chat":
            llama.create_chat_completion(**kwargs)
        else:
            llama.create_completion(**kwargs)
    except PromptMeasured as measured:
        return measured.prompt_tokens, n_ctx
    except InvalidGrammar:
        raise
    except Exception as exc:  # the real call would fail alike, and upstream answer 500
        log.debug("preflight: request fails before generation", exc_info=True)
        raise RequestUnservable(
            f"The request cannot be served: {str(exc) or type(exc).__name__} "
            "(raised while preparing the prompt)"
        ) from exc
    finally:
        PREFLIGHT.reset(flag)
        llama._n_ctx = saved_n_ctx
        llama._seed = saved_seed  # _create_completion advances the seed chain
    return None


# --- responses: timings and the usage chunk ------------------------------------------------


class _ResponseWriter:
    """Wraps `send`: JSON bodies get `timings`; SSE streams get the usage chunk."""

    def __init__(self, send: Send, metrics: RequestMetrics, kind: str, include_usage: bool):
        self._send = send
        self._metrics = metrics
        self._kind = kind
        self._include_usage = include_usage
        self._mode = "pass"
        self._start: Message | None = None
        self._buffer: list[bytes] = []
        self._last_chunk: dict[str, Any] = {}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            ctype = _header(message, b"content-type") or ""
            if ctype.startswith("text/event-stream"):
                self._mode = "sse"
            elif message["status"] == 200 and ctype.startswith("application/json"):
                self._mode = "json"
                self._start = message
                return
            await self._send(message)
        elif message["type"] == "http.response.body" and self._mode == "json":
            self._buffer.append(message.get("body", b""))
            if not message.get("more_body", False):
                await self._send_json()
        elif message["type"] == "http.response.body" and self._mode == "sse":
            await self._send_sse(message)
        else:
            await self._send(message)

    async def _send_json(self) -> None:
        assert self._start is not None
        raw = b"".join(self._buffer)
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and "choices" in doc and self._metrics.generations:
            doc["timings"] = self._metrics.timings()
            if isinstance(doc.get("usage"), dict):
                doc["usage"]["prompt_tokens_details"] = {"cached_tokens": self._metrics.cache_n}
            raw = json.dumps(doc).encode("utf-8")
        headers = [(k, v) for k, v in self._start.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(raw)).encode()))
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": raw, "more_body": False})

    async def _send_sse(self, message: Message) -> None:
        data: bytes = message.get("body", b"")
        done_at = _done_event_at(data)
        for line in data.splitlines():
            if line.startswith(b"data: {"):
                with contextlib.suppress(ValueError):
                    self._last_chunk = json.loads(line[6:])
        if done_at < 0 or not self._include_usage:
            await self._send(message)
            return
        if done_at > 0:
            await self._send({**message, "body": data[:done_at], "more_body": True})
        await self._send({"type": "http.response.body", "body": self.usage_event(), "more_body": True})
        await self._send({**message, "body": data[done_at:]})

    def usage_event(self) -> bytes:
        last = self._last_chunk
        chunk = {
            "id": last.get("id", ""),
            "object": "chat.completion.chunk" if self._kind == "chat" else "text_completion",
            "created": last.get("created", 0),
            "model": last.get("model", ""),
            "choices": [],
            "usage": self._metrics.usage(),
            "timings": self._metrics.timings(),
        }
        return b"data: " + json.dumps(chunk).encode("utf-8") + b"\n\n"


def _done_event_at(data: bytes) -> int:
    """Offset of a `data: [DONE]` line (never text inside a JSON chunk), or -1."""
    at = 0 if data.startswith(b"data: [DONE]") else -1
    if at < 0:
        at = data.find(b"\ndata: [DONE]")
        at = at + 1 if at >= 0 else -1
    return at


def _header(message: Message, name: bytes) -> str | None:
    for key, value in message.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None
