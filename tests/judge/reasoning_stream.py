"""A reasoning model's streamed answer as OpenAI sends it: the usage chunk carries
`completion_tokens_details.reasoning_tokens`, a part of `completion_tokens` (OpenAI's meaning),
or, with `apart=True`, beside it as some gateways report it (`total_tokens` then adds both)."""

from __future__ import annotations

import json

import httpx


def reasoning_sse(
    text: str, *, prompt_tokens: int, completion_tokens: int, reasoning_tokens: int, apart: bool = False
) -> httpx.Response:
    base = {"id": "r1", "object": "chat.completion.chunk", "created": 1, "model": "o-test"}
    total = prompt_tokens + completion_tokens + (reasoning_tokens if apart else 0)
    events = [
        {
            **base,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}],
        },
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {
            **base,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": total,
                "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
            },
        },
    ]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())
