"""Rewriting the llama-cpp-python engine's responses: JSON bodies get `timings` (and
`usage.prompt_tokens_details.cached_tokens`); SSE streams asked for `stream_options:
{"include_usage": true}` get a last chunk with `usage` and `timings` (and `choices: []`) before
`data: [DONE]`. The batched engine builds these itself (server/engine/api.py)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from starlette.types import Message, Send

from server.instrumented import RequestMetrics


class ResponseWriter:
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
        done_at = done_event_at(data)
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


def done_event_at(data: bytes) -> int:
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
