"""A hosted-API stand-in: a real HTTP/1.1 server on 127.0.0.1 that answers like the OpenAI chat API
and injects faults on demand.

It runs its own asyncio loop in a thread, so the evaluator can reach it in-process or from a
subprocess. Every request is answered on a fresh connection (`Connection: close`), which lets a
fault act on the socket itself (reset, cut, hang) without touching other requests.

The answer to a chat request is a pure function of the messages it carries (`expected_answer`),
so a test can prove from the database alone that every turn was sent the full, correct history
and that the stored answer is the one that was served.

Which fault a request gets: the next entry of `script` (a FIFO shared by all requests), else
`planner(request)` when set, else "ok". Faults:

    ok                    a streamed answer (SSE, chunked), usage chunk when asked for
    429 / 429_retry_after / 429_retry_after_date / 429_retry_after_ms
                          rate limit: without Retry-After, with `Retry-After: 1`, with an
                          HTTP-date Retry-After, with OpenAI's `retry-after-ms: 50`
    500 / 503             server errors (JSON body)
    500_html              a 500 with an HTML page (a proxy in between)
    hang                  reads the request, never answers (until the client gives up)
    hang_mid_stream       starts streaming, then stalls
    reset                 reads the request, then resets the connection (RST)
    cut                   starts streaming, then closes mid-body (chunked body incomplete)
    done_early            streams text, then [DONE] without a finish_reason
    invalid_json          a stream whose event is not JSON
    non_object_event      a stream whose event is JSON but not an object
    error_event           a stream that reports an error mid-way (`data: {"error": ...}`, as
                          OpenRouter does when the upstream provider fails)
    missing_choices       a stream whose chunks have no `choices`
    not_sse               200 with a plain JSON completion instead of the asked-for stream
    empty                 a stream that finishes with no text at all
    400                   a bad-request error (not retried)
    400_markup            a bad-request error whose message holds console markup
    401_echo_key          401 whose message repeats the Authorization header it received
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

FAULTS = (
    "ok", "429", "429_retry_after", "429_retry_after_date", "429_retry_after_ms", "500", "503",
    "500_html", "hang", "hang_mid_stream", "reset", "cut", "done_early", "invalid_json",
    "non_object_event", "error_event", "missing_choices", "not_sse", "empty", "400", "400_markup",
    "401_echo_key",
)  # fmt: skip
# Faults a retry can get past (the evaluator retries them); the others are final at once.
TRANSIENT = frozenset(FAULTS) - {"ok", "empty", "400", "400_markup", "401_echo_key"}
MARKUP = "[/bold] [red]unclosed [link=file:///etc/passwd]x[/link] [/]"
# Every answer ends with markup and a script tag: stored verbatim, never interpreted on display.
ANSWER_TAIL = " <script>alert('x')</script> [/b]"


def messages_digest(messages: list[dict[str, Any]]) -> str:
    blob = json.dumps(
        [[m.get("role"), m.get("content")] for m in messages], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def expected_answer(messages: list[dict[str, Any]]) -> str:
    """What the stand-in answers to these messages (a function of the whole history)."""
    users = sum(1 for m in messages if m.get("role") == "user")
    return (
        f"Answer {users} to history {messages_digest(messages)[:16]}: the keeper lit the lamp.{ANSWER_TAIL}"
    )


@dataclass
class ChatRequest:
    """One chat request as the stand-in saw it."""

    messages: list[dict[str, Any]]
    body: dict[str, Any]
    headers: dict[str, str]
    attempt: int  # 1 for the first request with this identity, 2 for the next, ...
    fault: str = "ok"

    @property
    def digest(self) -> str:
        return messages_digest(self.messages)

    @property
    def identity(self) -> str:
        """One turn of one run: its history and its seed (runs of a sequence differ by seed)."""
        return f"{self.digest}:{self.body.get('seed')}"


@dataclass
class StandIn:
    key: str | None = None  # when set, chat requests need `Authorization: Bearer <key>`
    delay_s: float = 0.0  # before answering any chat request (makes runs slow enough to kill)
    hang_s: float = 30.0  # how long "hang" faults stall
    model: str = "standin-1"
    planner: Callable[[ChatRequest], str] | None = None
    script: deque[str] = field(default_factory=deque)
    requests: list[ChatRequest] = field(default_factory=list)
    port: int = 0
    _attempts: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.AbstractServer | None = None
    _conns: set[asyncio.Task[None]] = field(default_factory=set)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> StandIn:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)

            async def serve() -> None:
                self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
                self.port = self._server.sockets[0].getsockname()[1]
                ready.set()

            loop.run_until_complete(serve())
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="standin", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the stand-in did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what happened --------------------------------------------------------------------------

    def faults_served(self) -> dict[str, int]:
        with self._lock:
            counts: dict[str, int] = {}
            for r in self.requests:
                counts[r.fault] = counts.get(r.fault, 0) + 1
            return counts

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self._attempts.clear()

    # -- HTTP -----------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        raw = await reader.readexactly(length) if length else b""
        if method == "GET" and path.rstrip("/") == "/v1/models":
            doc = {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "standin"}]}
            await self._send(writer, 200, json.dumps(doc).encode())
            return
        if method != "POST" or path != "/v1/chat/completions":
            await self._send(writer, 404, _error("no such route", "not_found"))
            return
        try:
            body = json.loads(raw)
            messages = list(body["messages"])
        except (ValueError, KeyError, TypeError):
            await self._send(writer, 400, _error("the body is not a chat request", "invalid_request"))
            return
        if self.key is not None and headers.get("authorization") != f"Bearer {self.key}":
            await self._send(writer, 401, _error("Incorrect API key provided.", "invalid_api_key"))
            return
        request = self._register(ChatRequest(messages, body, headers, attempt=0))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        await self._serve(request, writer)

    def _register(self, request: ChatRequest) -> ChatRequest:
        with self._lock:
            identity = request.identity
            self._attempts[identity] = self._attempts.get(identity, 0) + 1
            request.attempt = self._attempts[identity]
            if self.script:
                request.fault = self.script.popleft()
            elif self.planner is not None:
                request.fault = self.planner(request)
            self.requests.append(request)
        return request

    async def _serve(self, request: ChatRequest, writer: asyncio.StreamWriter) -> None:
        fault = request.fault
        if fault == "429":
            await self._send(writer, 429, _error("Rate limit reached; slow down.", "rate_limit_exceeded"))
        elif fault == "429_retry_after":
            await self._send(writer, 429, _error("Rate limit reached.", "rate_limit_exceeded"),
                             [("Retry-After", "1")])  # fmt: skip
        elif fault == "429_retry_after_ms":
            await self._send(writer, 429, _error("Rate limit reached.", "rate_limit_exceeded"),
                             [("retry-after-ms", "50")])  # fmt: skip
        elif fault == "429_retry_after_date":
            when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=2), usegmt=True)
            await self._send(writer, 429, _error("Rate limit reached.", "rate_limit_exceeded"),
                             [("Retry-After", when)])  # fmt: skip
        elif fault in ("500", "503"):
            await self._send(writer, int(fault), _error("The server had an error; retry.", "server_error"))
        elif fault == "500_html":
            await self._send(writer, 500, b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                             content_type="text/html")  # fmt: skip
        elif fault == "hang":
            await asyncio.sleep(self.hang_s)
        elif fault == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        elif fault == "400":
            await self._send(writer, 400, _error("'temperature' is not valid here.", "invalid_request"))
        elif fault == "400_markup":
            await self._send(writer, 400, _error(f"invalid value {MARKUP}", "invalid_request"))
        elif fault == "401_echo_key":
            seen = request.headers.get("authorization", "")
            await self._send(writer, 401, _error(f"Incorrect API key provided: {seen}.", "invalid_api_key"))
        elif fault == "not_sse":
            await self._send(writer, 200, json.dumps(self._completion(request)).encode())
        else:
            await self._stream(request, writer, fault)

    def _completion(self, request: ChatRequest) -> dict[str, Any]:
        return {
            "id": "chatcmpl-standin", "object": "chat.completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": expected_answer(request.messages)}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22},
        }  # fmt: skip

    async def _stream(self, request: ChatRequest, writer: asyncio.StreamWriter, fault: str) -> None:
        text = "" if fault == "empty" else expected_answer(request.messages)
        words = text.split(" ")
        pieces = [" ".join(words[i : i + 4]) + " " for i in range(0, len(words), 4)] if text else []
        if pieces:
            pieces[-1] = pieces[-1].rstrip(" ")
        base = {
            "id": "chatcmpl-standin",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": self.model,
        }

        def event(doc: dict[str, Any]) -> bytes:
            if fault == "missing_choices":
                doc = {k: v for k, v in doc.items() if k != "choices"}
            return b"data: " + json.dumps(doc).encode() + b"\n\n"

        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
            b"connection: close\r\n\r\n"
        )
        events = [event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                               "finish_reason": None}]})]  # fmt: skip
        if fault == "invalid_json":
            events.append(b'data: {"id": "chatcmpl-standin", "choices": [{"delta": {"content": "Once\n\n')
        elif fault == "non_object_event":
            events.append(b"data: [1, 2, 3]\n\n")
        elif fault == "error_event":
            events.append(b'data: {"error": {"message": "upstream provider overloaded", "code": 502}}\n\n')
        events += [
            event({**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]})
            for p in pieces
        ]
        if fault != "done_early":
            events.append(event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        options = request.body.get("stream_options") or {}
        if options.get("include_usage"):
            usage = {
                "prompt_tokens": 10 * len(request.messages),
                "completion_tokens": len(words) if text else 0,
            }
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            events.append(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        cut_at = 2 if fault in ("cut", "hang_mid_stream") else None
        for n, data in enumerate(events):
            if n == cut_at:
                if fault == "hang_mid_stream":
                    await asyncio.sleep(self.hang_s)
                return  # the connection closes without the terminating chunk
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        headers: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> None:
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
                  429: "Too Many Requests", 500: "Internal Server Error",
                  503: "Service Unavailable"}.get(status, "Status")  # fmt: skip
        lines = [f"HTTP/1.1 {status} {reason}", f"content-type: {content_type}",
                 f"content-length: {len(body)}", "connection: close"]  # fmt: skip
        lines += [f"{k}: {v}" for k, v in headers or []]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()


def _error(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "error", "param": None, "code": code}}).encode()
