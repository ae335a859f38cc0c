"""A lean streaming chat client for the benchmarks (httpx, no SDK): times what the user sees.

Both servers speak the same OpenAI-compatible SSE and end the stream with `usage` and llama.cpp's
`timings` (prompt_n, cache_n, prompt_ms, predicted_n, predicted_ms), so one parser serves both.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

# The same explicit sampler for both servers (their defaults differ: llama-cpp-python's server
# uses repeat_penalty 1.1, native 1.0).
SAMPLING: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "repeat_penalty": 1.0,
    "seed": 1234,
}


@dataclass
class StreamResult:
    start: float  # perf_counter at send
    first: float | None = None  # first content chunk
    last: float | None = None  # last content chunk
    end: float = 0.0  # stream closed
    chunks: int = 0
    times: list[float] = field(default_factory=list)  # arrival of every content chunk
    text_parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    error: str | None = None  # an error event's message (llama-server ends a failed stream so)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def completion_tokens(self) -> int:
        if self.usage and self.usage.get("completion_tokens") is not None:
            return int(self.usage["completion_tokens"])
        if self.timings and self.timings.get("predicted_n") is not None:
            return int(self.timings["predicted_n"])
        return self.chunks

    @property
    def prompt_tokens(self) -> int | None:
        if self.timings and self.timings.get("prompt_n") is not None:
            return int(self.timings["prompt_n"]) + int(self.timings.get("cache_n") or 0)
        if self.usage and self.usage.get("prompt_tokens") is not None:
            return int(self.usage["prompt_tokens"])
        return None

    @property
    def prompt_evaluated(self) -> int | None:
        """Prompt tokens the server actually decoded (the rest came from its KV cache)."""
        if self.timings and self.timings.get("prompt_n") is not None:
            return int(self.timings["prompt_n"])
        return None

    @property
    def prompt_cached(self) -> int | None:
        """Prompt tokens served from the server's KV cache: llama.cpp's `timings.cache_n`, else the
        OpenAI-style `usage.prompt_tokens_details.cached_tokens`; None when the server says neither."""
        if self.timings and self.timings.get("cache_n") is not None:
            return int(self.timings["cache_n"])
        details = (self.usage or {}).get("prompt_tokens_details") or {}
        if details.get("cached_tokens") is not None:
            return int(details["cached_tokens"])
        return None

    @property
    def ttft_s(self) -> float:
        return (self.first if self.first is not None else self.end) - self.start

    @property
    def total_s(self) -> float:
        return self.end - self.start

    @property
    def e2e_tps(self) -> float:
        return self.completion_tokens / self.total_s if self.total_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        """Tokens after the first over the time after the first, as the client saw them."""
        if self.first is None or self.last is None or self.last <= self.first:
            return 0.0
        return (self.completion_tokens - 1) / (self.last - self.first)

    def gaps_ms(self) -> list[float]:
        """Time between consecutive content chunks, in milliseconds."""
        return [(b - a) * 1000 for a, b in zip(self.times, self.times[1:], strict=False)]

    @property
    def server_decode_tps(self) -> float | None:
        t = self.timings or {}
        if t.get("predicted_ms"):
            return float(t["predicted_n"]) * 1000.0 / float(t["predicted_ms"])
        return None

    @property
    def server_prompt_tps(self) -> float | None:
        t = self.timings or {}
        if t.get("prompt_ms") and t.get("prompt_n"):
            return float(t["prompt_n"]) * 1000.0 / float(t["prompt_ms"])
        return None


def chat_body(
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    logit_bias: dict[str, float] | None = None,
    sampling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(SAMPLING if sampling is None else sampling),
    }
    if logit_bias:
        body["logit_bias"] = logit_bias
    return body


async def sse_lines(response: httpx.Response) -> AsyncIterator[str]:
    """The stream's lines as server-sent events define them: ended by CR, LF or CRLF only.
    httpx's `aiter_lines` also splits on the Unicode line breaks `str.splitlines` knows (U+0085,
    U+2028, ...), which a server writing JSON without ASCII escapes (llama-server) leaves raw in
    a random model's text: the event's JSON was cut in two there."""
    pending = b""
    async for chunk in response.aiter_bytes():
        pending += chunk
        *lines, pending = pending.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")


async def stream_chat(client: httpx.AsyncClient, base_url: str, body: dict[str, Any]) -> StreamResult:
    result = StreamResult(start=time.perf_counter())
    async with client.stream("POST", f"{base_url}/chat/completions", json=body) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode(errors="replace")[:500]
            raise RuntimeError(f"HTTP {response.status_code} from {base_url}: {detail}")
        async for line in sse_lines(response):
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                err = chunk["error"]
                result.error = str(err.get("message", err) if isinstance(err, dict) else err)
            if chunk.get("timings"):
                result.timings = chunk["timings"]
            if chunk.get("usage"):
                result.usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    now = time.perf_counter()
                    if result.first is None:
                        result.first = now
                    result.last = now
                    result.times.append(now)
                    result.chunks += 1
                    result.text_parts.append(content)
                if choice.get("finish_reason"):
                    result.finish_reason = choice["finish_reason"]
    result.end = time.perf_counter()
    return result


def new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(900.0, connect=10.0), limits=httpx.Limits(max_connections=64)
    )
