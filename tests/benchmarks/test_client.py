"""The benchmarks' streaming client reads server-sent events line by line as the format defines
lines, whatever the text inside the JSON (respx mocks the server at the transport)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import respx

from benchmarks.client import chat_body, stream_chat

URL = "http://127.0.0.1:9/v1"
# A random-weights model's text, as llama-server writes it (JSON without ASCII escapes): Unicode
# line breaks that `str.splitlines` would split on, raw inside the event.
PIECES = ["Once\u2028upon", " a\x85time", "\x1c\u2029end"]


def event(doc: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(doc, ensure_ascii=False).encode("utf-8") + b"\r\n\r\n"


@respx.mock
def test_stream_chat_keeps_unicode_line_breaks_inside_events() -> None:
    chunks = [{"choices": [{"delta": {"content": p}, "finish_reason": None}]} for p in PIECES]
    chunks.append({"choices": [{"delta": {}, "finish_reason": "length"}], "usage": {"completion_tokens": 3}})
    body = b"".join(event(c) for c in chunks) + b"data: [DONE]\r\n\r\n"

    async def network() -> AsyncIterator[bytes]:  # the body cut at odd places, as a network would
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    respx.post(f"{URL}/chat/completions").mock(
        return_value=httpx.Response(200, content=network(), headers={"content-type": "text/event-stream"})
    )

    async def go() -> str:
        async with httpx.AsyncClient() as client:
            result = await stream_chat(client, URL, chat_body("m", [{"role": "user", "content": "hi"}], 3))
        assert result.finish_reason == "length"
        assert result.chunks == 3
        return "".join(result.text_parts)

    assert asyncio.run(go()) == "".join(PIECES)
