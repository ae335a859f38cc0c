"""The published OpenAPI schema, without a model: each engine's app is built around a model
holder that never loads, and its /openapi.json is read through ASGI.

The integration side (schemathesis with every check against the real server) is
tests/reliability/test_local_server.py; here: the schema's shape, and that it agrees with the
shared request checks on requests either side of the line.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import jsonschema_rs
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from server.app import build_llama_app
from server.config import load_config
from server.engine.app import build_batched_app
from server.engine.host import EngineHost
from server.instrumented import StoryBenchProxy
from server.middleware import StoryBenchMiddleware
from server.openapi_schema import ERROR_SCHEMA, Served, token_id_pattern, truthful

from .conftest import MAIN_MODEL, model_entry, write_config

ENGINES = ["llama-cpp-python", "batched"]
ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}


class _Unloaded:
    """Stands in for llama-cpp-python's model proxy: no model resident."""

    current_model = None


@pytest.fixture
def switch_interval() -> Iterator[None]:
    saved = sys.getswitchinterval()  # build_batched_app tunes it for the engine thread
    yield
    sys.setswitchinterval(saved)


def _served_schema(tmp_path: Path, engine: str, auth: bool) -> dict[str, Any]:
    cfg = load_config(write_config(tmp_path / "c.json", [model_entry(engine=engine)]))
    if engine == "batched":
        app = build_batched_app(cfg, EngineHost(cfg), auth=auth)  # EngineHost loads nothing yet
    else:
        app = build_llama_app(cfg, cast(StoryBenchProxy, _Unloaded()), auth=auth)

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/openapi.json")

    response = asyncio.run(get())
    assert response.status_code == 200
    return cast(dict[str, Any], response.json())


@pytest.fixture(params=[(e, a) for e in ENGINES for a in (False, True)], ids=lambda p: f"{p[0]}-key{p[1]}")
def schema(request: pytest.FixtureRequest, tmp_path: Path, switch_interval: None) -> dict[str, Any]:
    engine, auth = request.param
    doc = _served_schema(tmp_path, engine, auth)
    doc["x-test"] = {"engine": engine, "auth": auth}
    return doc


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            yield method, path, operation


def test_every_operation_documents_its_errors_with_the_openai_body(schema: dict[str, Any]) -> None:
    auth = schema["x-test"]["auth"]
    assert len(list(_operations(schema))) == 7
    for method, path, operation in _operations(schema):
        expected = {"500", "503"} | ({"401"} if auth else set())
        if method == "post":
            expected |= {"400", "404", "422"}
        errors = {s for s in operation["responses"] if s >= "400"}
        assert errors == expected, (method, path)
        for status in errors:
            assert operation["responses"][status]["content"] == {"application/json": {"schema": ERROR_REF}}
        assert operation.get("security") == ([{"HTTPBearer": []}] if auth else None), path
    body = schema["components"]["schemas"][ERROR_SCHEMA]
    assert body["required"] == ["error"]
    assert body["properties"]["error"]["required"] == ["message", "type", "param", "code"]
    assert ("securitySchemes" in schema["components"]) is auth
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # FastAPI's {"detail"} shape


def test_request_bodies_require_what_the_server_requires(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    required = {
        "/v1/completions": "prompt",
        "/v1/chat/completions": "messages",
        "/extras/tokenize": "input",
        "/extras/tokenize/count": "input",
        "/extras/detokenize": "tokens",
    }
    for path, field in required.items():
        body = schema["paths"][path]["post"]["requestBody"]
        assert body["required"] is True
        name = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        assert field in components[name]["required"], path
        assert components[name]["properties"]["model"]["anyOf"][0]["enum"] == [MAIN_MODEL]
    assert components["CreateChatCompletionRequest"]["properties"]["messages"]["minItems"] == 1


def test_routes_not_served_are_left_out(schema: dict[str, Any]) -> None:
    assert "/v1/embeddings" not in schema["paths"]
    assert "CreateEmbeddingRequest" not in schema["components"]["schemas"]


def test_the_batched_engine_documents_its_unsupported_parameters(schema: dict[str, Any]) -> None:
    props = schema["components"]["schemas"]["CreateCompletionRequest"]["properties"]
    if schema["x-test"]["engine"] == "batched":
        assert props["suffix"]["type"] == "null" and props["echo"]["anyOf"][0]["enum"] == [False]
    else:
        assert {"type": "string"} in props["suffix"]["anyOf"]


def test_streams_are_documented_as_server_sent_events(schema: dict[str, Any]) -> None:
    for path in ("/v1/completions", "/v1/chat/completions"):
        content = schema["paths"][path]["post"]["responses"]["200"]["content"]
        assert content["text/event-stream"]["schema"]["required"] == ["data"]


@pytest.mark.parametrize("n_vocab", [1, 2, 9, 10, 11, 100, 101, 1000, 49152, 32000])
def test_token_id_pattern_is_exactly_the_vocabulary(n_vocab: int) -> None:
    pattern = re.compile(token_id_pattern(n_vocab))
    matched = [k for k in range(n_vocab + 1500) if pattern.match(str(k))]
    assert matched == list(range(n_vocab))
    for key in ("01", "-1", " 1", "1 ", "+1", "", "1.0", "٣"):
        assert not pattern.match(key), key


# --- the schema and the shared request checks agree -------------------------------------------------


async def _reached(scope: Scope, receive: Receive, send: Send) -> None:
    """The engine's routes, reached only by requests the checks let through."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _status(path: str, body: Any) -> int:
    async def go() -> int:
        transport = httpx.ASGITransport(app=StoryBenchMiddleware(_reached, model_names=[MAIN_MODEL]))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.post(path, json=body)).status_code

    return asyncio.run(go())


CHAT = [{"role": "user", "content": "hi"}]
CASES: list[tuple[str, Any]] = [
    ("/v1/completions", {}),
    ("/v1/completions", {"prompt": "hi"}),
    ("/v1/completions", {"prompt": ""}),
    ("/v1/completions", {"prompt": ["a", "b"]}),
    ("/v1/completions", {"prompt": "hi", "n": 2}),
    ("/v1/completions", {"prompt": "hi", "n": 1, "temperature": None}),
    ("/v1/completions", {"prompt": "hi", "top_k": 40.0}),
    ("/v1/completions", {"prompt": "hi", "top_k": True}),
    ("/v1/completions", {"prompt": "hi", "top_k": "40"}),
    ("/v1/completions", {"prompt": "hi", "logprobs": 1}),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"5": 1}}),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"05": 1}}),
    ("/v1/completions", {"prompt": "hi", "logit_bias": {"x y": 1}, "logit_bias_type": "tokens"}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 2, "max_completion_tokens": "x"}),
    ("/v1/chat/completions", {}),
    ("/v1/chat/completions", {"messages": []}),
    ("/v1/chat/completions", {"messages": CHAT}),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": None}]}),
    ("/v1/chat/completions", {"messages": [{"role": "assistant"}]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}]}),
    ("/v1/chat/completions",
     {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "http://x"}]}]}),
    ("/v1/chat/completions", {"messages": CHAT, "logprobs": True}),
    ("/v1/chat/completions", {"messages": CHAT, "tool_choice": {"type": "function", "function": {"name": "f"}}}),  # noqa: E501
    ("/v1/chat/completions", {"messages": CHAT, "stream_options": {"include_usage": True}}),
    ("/v1/chat/completions", {"messages": CHAT, "stream_options": {"include_usage": 1}}),
    ("/v1/chat/completions", {"messages": CHAT, "model": "other"}),
    ("/extras/tokenize", {"input": "hi"}),
    ("/extras/tokenize", {"input": 5}),
    ("/extras/tokenize", {"input": "hi", "model": "other"}),
    ("/extras/detokenize", {"tokens": [1, 2]}),
    ("/extras/detokenize", {"tokens": ["1"]}),
]  # fmt: skip


@pytest.mark.parametrize("engine", ENGINES)
def test_the_schema_calls_valid_exactly_what_the_checks_let_through(
    tmp_path: Path, engine: str, switch_interval: None
) -> None:
    doc = _served_schema(tmp_path, engine, auth=False)
    for path, body in CASES:
        ref = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        valid = jsonschema_rs.validator_for({**ref, "components": doc["components"]}).is_valid(body)
        status = _status(path, body)
        assert (status == 200) is valid, (path, body, status)
        assert status in (200, 400, 404, 422), (path, body, status)


def test_truthful_leaves_the_generated_schema_alone() -> None:
    app = FastAPI()

    @app.post("/v1/embeddings")
    async def embeddings() -> dict[str, Any]:
        return {}

    generated = app.openapi()
    before = repr(generated)
    doc = truthful(generated, Served("batched", ["m"], auth=False))
    assert repr(generated) == before and doc["paths"] == {}
