"""The OpenAI surface of the batched engine: chat and text completions (JSON or SSE streams
with `stream_options.include_usage`), `timings` on every answer, the context check before a
response starts, `/v1/models` and llama-cpp-python's `/extras/tokenize*` routes.

Requests are parsed with llama-cpp-python's own request models (same fields, defaults and 422
errors) and chat prompts are rendered by its chat handlers (`BatchedModel.chat_prompt`).
`StoryBenchApp` (in front) has checked the key once and `StoryBenchMiddleware` the model
name, `n` and logprobs, and mapped `max_completion_tokens`.

Over 400 lines because the JSON and SSE shapes of both routes share one request path (parse,
render, fit, submit, relay); kept together, the two wire formats cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import jinja2
import llama_cpp
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from llama_cpp.llama_grammar import LlamaGrammar
from llama_cpp.server.types import (
    CreateChatCompletionRequest,
    CreateCompletionRequest,
    DetokenizeInputRequest,
    TokenizeInputRequest,
)
from starlette.types import Receive, Scope, Send

from server.engine.host import EngineHost
from server.engine.lanes import Lanes
from server.engine.model import BatchedModel
from server.engine.sampling import Chains, SamplingParams, chains_for
from server.engine.scheduler import Engine, Event, Generation
from server.openai_errors import context_overflow, error_body


class RequestError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def _unsupported(param: str, why: str) -> RequestError:
    return RequestError(400, error_body(why, code="unsupported_parameter", param=param))


@dataclass
class Prepared:
    prompt: list[int]
    max_tokens: int
    stop: list[str]
    sampling: SamplingParams


class Seeds:
    """Seeds for requests that send none: a fixed sequence from the configured seed, as
    llama-cpp-python derives each request's seed from the previous one."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def next(self) -> int:
        return self._rng.randint(0, 2**32 - 1)


def prepare(model: BatchedModel, kind: str, body: Any, seeds: Seeds) -> Prepared:
    """Tokens, limits and sampling of one request; RequestError if it cannot be served."""
    if getattr(body, "min_tokens", 0) > 0:
        raise _unsupported("min_tokens", "min_tokens is not supported by the batched engine.")
    grammar = LlamaGrammar.from_string(body.grammar) if body.grammar else None
    if kind == "chat":  # a forced tool_choice or function_call was refused before (request_checks)
        request = {
            "messages": body.messages,
            "functions": body.functions,
            "function_call": body.function_call,
            "tools": body.tools,
            "tool_choice": body.tool_choice,
            "response_format": body.response_format,
            "stop": body.stop,
            "grammar": grammar,
        }
        try:
            rendered = model.chat_prompt(request)
        except (ValueError, TypeError, KeyError, jinja2.TemplateError) as exc:  # e.g. a message
            # without content, or the template's own raise_exception
            raise RequestError(400, error_body(f"cannot render the chat: {exc}", code=None)) from None
        tokens, stop, grammar = rendered.tokens, rendered.stop, rendered.grammar
    else:
        if body.suffix is not None:
            raise _unsupported("suffix", "suffix (infill) is not supported by the batched engine.")
        if body.echo:
            raise _unsupported("echo", "echo is not supported by the batched engine.")
        if (body.best_of or 1) > 1:
            raise _unsupported("best_of", "best_of > 1 is not supported: send separate requests.")
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) > 1:
                raise _unsupported("prompt", "one prompt per request: send separate requests.")
            prompt = prompt[0] if prompt else ""
        tokens = model.completion_prompt(prompt)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if not tokens:
        raise RequestError(400, error_body("The prompt is empty.", code=None, param="prompt"))
    n_ctx = model.n_ctx_slot
    requested = body.max_tokens if body.max_tokens and body.max_tokens > 0 else None
    rejection = context_overflow(kind, len(tokens), requested, n_ctx)
    if rejection is not None:
        raise RequestError(*rejection)
    return Prepared(
        prompt=tokens,
        max_tokens=requested if requested is not None else n_ctx - len(tokens),
        stop=stop,
        sampling=SamplingParams(
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            min_p=body.min_p,
            typical_p=getattr(body, "typical_p", 1.0),
            repeat_penalty=body.repeat_penalty,
            frequency_penalty=body.frequency_penalty or 0.0,
            presence_penalty=body.presence_penalty or 0.0,
            mirostat_mode=body.mirostat_mode,
            mirostat_tau=body.mirostat_tau,
            mirostat_eta=body.mirostat_eta,
            seed=body.seed if body.seed is not None else seeds.next(),
            logit_bias=_logit_bias(model, body),
            grammar=grammar,
        ),
    )


def _logit_bias(model: BatchedModel, body: Any) -> dict[int, float]:
    if not body.logit_bias:
        return {}
    bias: dict[int, float] = {}
    for key, value in body.logit_bias.items():
        if body.logit_bias_type == "tokens":  # keys are text: bias each of their tokens
            for token in model.tokenize(key.encode("utf-8"), add_bos=False, special=True):
                bias[token] = float(value)
            continue
        try:
            token = int(key)
        except ValueError:
            raise RequestError(
                400, error_body(f"logit_bias key {key!r} is not a token id", code=None, param="logit_bias")
            ) from None
        if not 0 <= token < model.n_vocab:
            raise RequestError(
                400,
                error_body(
                    f"logit_bias token {token} is outside the vocabulary (0..{model.n_vocab - 1})",
                    code=None,
                    param="logit_bias",
                ),
            )
        bias[token] = float(value)
    return bias


# --- one generation, as seen from the event loop ---------------------------------------------


class Stream:
    """Submits a generation and hands its events to the event loop, step by step."""

    def __init__(self, engine: Engine | Lanes, prepared: Prepared, chains: Chains) -> None:
        self.engine = engine
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[list[Event]] = asyncio.Queue()

        def sink(events: list[Event]) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
                loop.call_soon_threadsafe(self.queue.put_nowait, events)

        self.gen = Generation.sampled_by(
            chains,
            prepared.sampling,
            prompt=prepared.prompt,
            max_tokens=prepared.max_tokens,
            sink=sink,
            stop=prepared.stop,
        )
        self.finished = False
        try:
            engine.submit(self.gen)
        except BaseException:
            chains.close()
            raise

    async def events(self) -> AsyncIterator[Event]:
        """The events so far, text merged: a client that reads slower than the engine writes
        gets fewer, longer chunks instead of a growing backlog."""
        while not self.finished:
            events = await self.queue.get()
            while not self.queue.empty():
                events = events + self.queue.get_nowait()
            text: list[str] = []
            for kind, value in events:
                if kind == "text":
                    text.append(value)
                    continue
                if text:
                    yield ("text", "".join(text))
                    text = []
                if kind in ("done", "error"):
                    self.finished = True
                yield (kind, value)
            if text:
                yield ("text", "".join(text))

    def cancel(self) -> None:
        if not self.finished:
            self.engine.cancel(self.gen)


# --- response documents -------------------------------------------------------------------------


@dataclass
class Reply:
    kind: str
    model: str
    id: str
    created: int

    @classmethod
    def new(cls, kind: str, model: str) -> Reply:
        prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
        return cls(kind, model, prefix + str(uuid.uuid4()), int(time.time()))

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def document(self, text: str, gen: Generation) -> dict[str, Any]:
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": gen.finish_reason,
            }
            doc = self._head("chat.completion")
        else:
            choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": gen.finish_reason}
            doc = self._head("text_completion")
        return doc | {"choices": [choice], "usage": gen.usage(), "timings": gen.timings()}

    def chunk(self, text: str | None, finish_reason: str | None = None, role: bool = False) -> bytes:
        if self.kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            doc = self._head("chat.completion.chunk")
        else:
            choice = {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish_reason}
            doc = self._head("text_completion")
        return _sse(doc | {"choices": [choice]})

    def usage_chunk(self, gen: Generation) -> bytes:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return _sse(self._head(obj) | {"choices": [], "usage": gen.usage(), "timings": gen.timings()})


def _sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(doc).encode("utf-8") + b"\n\n"


def _error_doc(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": None}}


class _EventStream(StreamingResponse):
    """An SSE response that always cancels its generation and releases the model, whether it
    ended, failed or the client went away (even before the first byte)."""

    def __init__(self, body: AsyncIterator[bytes], stream: Stream, host: EngineHost) -> None:
        super().__init__(body, media_type="text/event-stream")
        self._stream, self._host = stream, host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stream.cancel()
            await self._host.release()


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


# --- routes ------------------------------------------------------------------------------------


def build_router(host: EngineHost) -> APIRouter:
    router = APIRouter()
    seeds = {
        name: Seeds(llama_cpp.LLAMA_DEFAULT_SEED if m.entry.seed == -1 else m.entry.seed)
        for name, m in host.models.items()
    }

    async def generate(request: Request, kind: str, body: Any) -> Response:
        engine = await host.acquire(body.model)
        try:
            prepared = await anyio.to_thread.run_sync(
                prepare, engine.model, kind, body, seeds[engine.model.name]
            )
            try:
                chains = await anyio.to_thread.run_sync(chains_for, engine.model, prepared.sampling)
            except ValueError as exc:
                raise RequestError(400, error_body(str(exc), code=None, param="grammar")) from None
            stream = Stream(engine, prepared, chains)
        except RequestError as exc:
            await host.release()
            return Response(exc.body, status_code=exc.status, media_type="application/json")
        except BaseException:
            await host.release()
            raise
        reply = Reply.new(kind, body.model or engine.model.name)
        if body.stream:
            include_usage = await _include_usage(request)
            return _EventStream(_sse_body(stream, reply, include_usage), stream, host)
        try:
            return await _json_answer(request, stream, reply)
        finally:
            stream.cancel()
            await host.release()

    @router.post("/v1/completions")
    async def create_completion(request: Request, body: CreateCompletionRequest) -> Response:
        return await generate(request, "completion", body)

    @router.post("/v1/chat/completions")
    async def create_chat_completion(request: Request, body: CreateChatCompletionRequest) -> Response:
        return await generate(request, "chat", body)

    @router.get("/v1/models")
    async def get_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "owned_by": "me", "permissions": []}
                for name in host.model_names
            ],
        }

    @router.post("/v1/embeddings", include_in_schema=False)  # not served: a clear 400
    async def create_embedding() -> Response:
        body = error_body("Embeddings are not served by the batched engine.", code="unsupported_endpoint")
        return Response(body, status_code=400, media_type="application/json")

    async def tokens_of(body: TokenizeInputRequest) -> list[int]:
        engine = await host.acquire(body.model)
        try:
            text = body.input.encode("utf-8")
            return engine.model.tokenize(text, add_bos=True, special=True)
        finally:
            await host.release()

    @router.post("/extras/tokenize")
    async def tokenize(body: TokenizeInputRequest) -> dict[str, Any]:
        return {"tokens": await tokens_of(body)}

    @router.post("/extras/tokenize/count")
    async def count_tokens(body: TokenizeInputRequest) -> dict[str, Any]:
        return {"count": len(await tokens_of(body))}

    @router.post("/extras/detokenize")
    async def detokenize(body: DetokenizeInputRequest) -> Any:
        engine = await host.acquire(body.model)
        try:
            n_vocab = engine.model.n_vocab
            if any(not 0 <= t < n_vocab for t in body.tokens):
                message = f"Token ids must be from 0 to {n_vocab - 1} (this model's vocabulary)."
                return Response(error_body(message, code="invalid_token", param="tokens"), status_code=400,
                                media_type="application/json")  # fmt: skip
            text = engine.model.detokenize(body.tokens).decode("utf-8", errors="replace")
        finally:
            await host.release()
        return {"text": text}

    return router


async def _include_usage(request: Request) -> bool:
    """`stream_options.include_usage` (not a field of llama-cpp-python's request models)."""
    try:
        raw = await request.json()
    except ValueError:
        return False
    options = raw.get("stream_options") if isinstance(raw, dict) else None
    return isinstance(options, dict) and options.get("include_usage") is True


async def _sse_body(stream: Stream, reply: Reply, include_usage: bool) -> AsyncIterator[bytes]:
    if reply.kind == "chat":
        yield reply.chunk(None, role=True)
    async for kind, value in stream.events():
        if kind == "text":
            yield reply.chunk(value)
        elif kind == "done":
            yield reply.chunk(None if reply.kind == "chat" else "", finish_reason=value)
            if include_usage:
                yield reply.usage_chunk(stream.gen)
        else:
            yield _sse(_error_doc(value))
    yield b"data: [DONE]\n\n"


async def _json_answer(request: Request, stream: Stream, reply: Reply) -> Response:
    async def collect() -> tuple[str, str | None]:
        parts: list[str] = []
        async for kind, value in stream.events():
            if kind == "text":
                parts.append(value)
            elif kind == "error":
                return "".join(parts), value
        return "".join(parts), None

    answer = asyncio.ensure_future(collect())
    gone = asyncio.ensure_future(_until_disconnected(request))
    await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if not answer.done():  # the client went away: free the slot now
        answer.cancel()
        return Response(status_code=499)
    text, error = answer.result()
    if error is not None:
        return JSONResponse(_error_doc(error), status_code=500)
    return JSONResponse(reply.document(text, stream.gen))
