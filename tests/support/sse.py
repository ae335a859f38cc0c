"""A streamed chat completion as an OpenAI-compatible server sends it, for respx routes."""

from __future__ import annotations

import json

import httpx


def sse(
    text: str,
    *,
    finish: str = "stop",
    prompt_tokens: int = 10,
    completion_tokens: int | None = None,
) -> httpx.Response:
    """A streamed chat completion as an OpenAI-compatible server sends it."""
    completion_tokens = len(text.split()) if completion_tokens is None else completion_tokens
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = [
        {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        },
    ]
    for word in text.split(" ") if text else []:
        events.append(
            {
                **base,
                "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}],
            }
        )
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    events.append(
        {
            **base,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())
