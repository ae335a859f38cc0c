"""Probing an endpoint: our server and a hosted API answer the same questions (token counts,
context window, connections, connection key, metadata), each from what it knows."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
import respx

from evaluator.budget import estimate_tokens
from evaluator.config import ModelEntry
from evaluator.endpoint import DEFAULT_HOSTED_CONNECTIONS, EndpointError, probe
from evaluator.replicas import probe_all

OURS = "http://127.0.0.1:8080"
HOSTED = "https://api.hosted.test"


def entry(base_url: str = f"{OURS}/v1", **kw: Any) -> ModelEntry:
    return ModelEntry(**{"name": "m", "base_url": base_url, "model": "m-1"} | kw)


def our_server(n_ctx: int = 4096, n_parallel: int = 3) -> None:
    body = {"server": "storybench", "n_parallel": n_parallel, "models": [{"name": "m-1", "n_ctx": n_ctx}]}
    respx.get(f"{OURS}/storybench/models").mock(return_value=httpx.Response(200, json=body))


@respx.mock
def test_our_server_answers_from_its_metadata() -> None:
    our_server(n_ctx=4096, n_parallel=3)
    endpoint = asyncio.run(probe(entry(context_window=1000)))
    assert endpoint.context_window == 4096  # the server's n_ctx wins over the entry's guess
    assert endpoint.max_connections == 3 and endpoint.one_model_at_a_time
    assert endpoint.metadata["n_ctx"] == 4096 and endpoint.metadata["server"]["n_parallel"] == 3
    assert asyncio.run(probe(entry(max_concurrency=1))).max_connections == 1  # the entry decides first


@respx.mock
def test_our_server_counts_each_text_once_exactly() -> None:
    our_server()

    def characters(request: httpx.Request) -> httpx.Response:  # a tokenizer of one token per character
        return httpx.Response(200, json={"count": len(json.loads(request.content)["input"])})

    counted = respx.post(f"{OURS}/extras/tokenize/count").mock(side_effect=characters)

    async def count() -> list[int]:
        endpoint = await probe(entry())
        try:
            return [await endpoint.count_tokens(text) for text in ("abc", "abcdef", "abc")]
        finally:
            await endpoint.aclose()

    assert asyncio.run(count()) == [3, 6, 3]
    assert [json.loads(c.request.content) for c in counted.calls] == [
        {"model": "m-1", "input": "abc"},
        {"model": "m-1", "input": "abcdef"},
    ]


@respx.mock
def test_a_hosted_api_estimates_and_takes_the_documented_defaults() -> None:
    respx.get(f"{HOSTED}/storybench/models").mock(return_value=httpx.Response(404))
    endpoint = asyncio.run(probe(entry(f"{HOSTED}/v1")))
    text = "A lighthouse keeper finds a brass key. " * 10
    assert asyncio.run(endpoint.count_tokens(text)) == estimate_tokens(text)
    assert endpoint.context_window is None and endpoint.metadata == {}
    assert endpoint.max_connections == DEFAULT_HOSTED_CONNECTIONS and not endpoint.one_model_at_a_time
    windowed = asyncio.run(probe(entry(f"{HOSTED}/v1", context_window=8000, max_concurrency=12)))
    assert (windowed.context_window, windowed.max_connections) == (8000, 12)


NOT_OURS = [
    httpx.Response(200, text="<html>"),
    httpx.Response(200, json={"server": "x"}),
    httpx.Response(401),
]


@pytest.mark.parametrize("answer", NOT_OURS)
@respx.mock
def test_anything_that_is_not_our_server_is_a_hosted_api(answer: httpx.Response) -> None:
    respx.get(f"{HOSTED}/storybench/models").mock(return_value=answer)
    assert asyncio.run(probe(entry(f"{HOSTED}/v1"))).max_connections == DEFAULT_HOSTED_CONNECTIONS


@respx.mock
def test_entries_behind_one_server_share_a_connection_key() -> None:
    respx.get(f"{HOSTED}/storybench/models").mock(return_value=httpx.Response(404))
    respx.get("https://other.test/storybench/models").mock(return_value=httpx.Response(404))
    found = asyncio.run(
        probe_all(
            [
                entry(f"{HOSTED}/v1", name="a"),
                entry(f"{HOSTED}/v1", name="b", model="m-2"),
                entry("https://other.test/v1", name="c"),
            ]
        )
    )
    assert found["a"].connection_key == found["b"].connection_key != found["c"].connection_key


@respx.mock
def test_a_model_our_server_does_not_serve_is_refused_with_what_it_serves() -> None:
    our_server()
    with pytest.raises(EndpointError) as caught:
        asyncio.run(probe(entry(model="m-9")))
    assert "does not serve model 'm-9'; it serves: m-1" in str(caught.value)
