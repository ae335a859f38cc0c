"""The server suite's integration tests, unchanged, against the batched engine.

Every test of tests/server/test_server_integration.py is collected here too, with this
folder's `server` fixture (`"engine": "batched"`, 8 slots). One test checks a property of the
serial engine and is replaced below by the batched engine's counterpart.
"""

from __future__ import annotations

import httpx
import openai

from tests.server.test_server_integration import *  # noqa: F403
from tests.support.servers import MAIN_MODEL, RunningServer


def test_stream_is_not_cut_short_by_a_concurrent_request(  # replaces the serial engine's test
    openai_client: openai.OpenAI, server: RunningServer
) -> None:
    """A stream runs to its end while other requests are answered meanwhile (the serial
    engine makes them wait for the model lock instead)."""
    max_tokens = 256  # long enough that a 4-token answer fits well inside it
    stream = openai_client.completions.create(
        model=MAIN_MODEL,
        prompt="The old lighthouse keeper",
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"logit_bias": {"0": -100, "2": -100}},
    )
    chunks = iter(stream)
    first = next(chunks)
    other = httpx.post(
        f"{server.base_url}/completions",
        json={"model": MAIN_MODEL, "prompt": "Hello", "max_tokens": 4},
        timeout=120,
    )
    assert other.status_code == 200, other.text
    # Answered while the stream is still generating: its slot is busy, not queued behind it.
    meta = httpx.get(f"{server.root}/storybench/models", timeout=120).json()
    slots = meta["loaded_model_settings"]["slots"]
    assert [s["busy"] for s in slots].count(True) == 1, slots
    rest = list(chunks)
    finish = [c.choices[0].finish_reason for c in [first, *rest] if c.choices]
    assert finish[-1] == "length"
    assert rest[-1].usage is not None and rest[-1].usage.completion_tokens == max_tokens
