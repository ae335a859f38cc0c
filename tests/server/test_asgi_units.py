"""The ASGI layers without a model: the loading gate, request checks, and response rewriting."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from server.app import StoryBenchApp
from server.config import load_config
from server.instrumented import RequestMetrics
from server.middleware import StoryBenchMiddleware
from server.openai_errors import UnknownModelError, context_overflow
from server.response_rewrite import ResponseWriter, done_event_at

from .conftest import model_entry, write_config


async def _never_called(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("the request should not reach llama-cpp-python's app")


def _post(app: Any, path: str, body: dict[str, Any], key: str | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post(path, json=body, headers=headers)

    return asyncio.run(go())


def _get(app: Any, path: str, key: str | None = None) -> httpx.Response:
    async def go() -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(go())


MIDDLEWARE = StoryBenchMiddleware(_never_called, model_names=["a", "b"])


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_unknown_model_is_404_naming_the_known_models(path: str) -> None:
    r = _post(MIDDLEWARE, path, {"model": "gpt-4o", "messages": [], "prompt": "x"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "`gpt-4o` does not exist" in err["message"] and "Known models: a, b" in err["message"]
    assert err["known_models"] == ["a", "b"]


def test_n_above_1_and_logprobs_are_refused() -> None:
    r = _post(MIDDLEWARE, "/v1/chat/completions", {"model": "a", "messages": [], "n": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    r = _post(MIDDLEWARE, "/v1/chat/completions", {"model": "a", "messages": [], "logprobs": True})
    assert r.status_code == 400 and "logits_all" in r.json()["error"]["message"]
    r = _post(MIDDLEWARE, "/v1/completions", {"model": "a", "prompt": "x", "logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"


def _loading_app(tmp_path: Path, key: str | None = None) -> StoryBenchApp:
    cfg = load_config(write_config(tmp_path / "c.json", [model_entry()]))
    return StoryBenchApp(cfg, key)  # no lifespan: the model never starts loading


def test_health_is_503_while_loading(tmp_path: Path) -> None:
    app = _loading_app(tmp_path, key="k")
    r = _get(app, "/health")  # no key needed
    assert r.status_code == 503 and r.json()["status"] == "loading"
    assert r.headers["retry-after"] == "1"
    r = _get(app, "/v1/models", key="k")
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
    assert _get(app, "/v1/models").status_code == 401


def test_the_key_is_checked_once_before_the_body_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.app as server_app

    checks: list[str | None] = []
    real = server_app.bearer_ok

    def counted(scope: Any, api_key: str | None) -> bool:
        checks.append(api_key)
        return real(scope, api_key)

    monkeypatch.setattr(server_app, "bearer_ok", counted)
    app = _loading_app(tmp_path, key="k")
    app.state, app.inner = "ready", StoryBenchMiddleware(_never_called, model_names=["a"])
    r = _post(app, "/v1/chat/completions", {"model": "nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    assert _post(app, "/v1/chat/completions", {"model": "nope"}, key="wrong").status_code == 401
    checks.clear()
    r = _post(app, "/v1/chat/completions", {"model": "nope"}, key="k")
    assert r.status_code == 404  # authenticated: the model check runs
    assert checks == ["k"]  # one check for the whole request


def test_health_is_500_when_loading_failed(tmp_path: Path) -> None:
    app = _loading_app(tmp_path)
    app.state, app.error = "failed", "could not load model 'smollm2': boom"
    r = _get(app, "/health")
    assert r.status_code == 500 and r.json()["error"].endswith("boom")
    assert _get(app, "/v1/models").status_code == 500


def _metrics() -> RequestMetrics:
    return RequestMetrics(
        prompt_tokens=100, prompt_evaluated=30, prompt_ms=50.0, predicted_n=20,
        predicted_ms=400.0, generations=1,
    )  # fmt: skip


def _run_writer(writer: ResponseWriter, messages: list[Message]) -> None:
    async def go() -> None:
        for m in messages:
            await writer.send(m)

    asyncio.run(go())


def test_timings_computed_like_llama_server() -> None:
    t = _metrics().timings()
    assert t == {
        "prompt_n": 30, "cache_n": 70, "prompt_ms": 50.0, "prompt_per_second": 600.0,
        "predicted_n": 20, "predicted_ms": 400.0, "predicted_per_second": 50.0,
    }  # fmt: skip


def test_json_response_gets_timings_and_a_correct_content_length() -> None:
    sent: list[Message] = []

    async def send(m: Message) -> None:
        sent.append(m)

    body = json.dumps({"choices": [], "usage": {"prompt_tokens": 100}}).encode()
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"9")],
    }
    writer = ResponseWriter(send, _metrics(), "chat", include_usage=False)
    _run_writer(writer, [start, {"type": "http.response.body", "body": body}])
    new_body = sent[1]["body"]
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(new_body)).encode()
    doc = json.loads(new_body)
    assert doc["timings"]["cache_n"] == 70
    assert doc["usage"]["prompt_tokens_details"] == {"cached_tokens": 70}


def test_stream_gets_a_usage_chunk_before_done() -> None:
    sent: list[bytes] = []

    async def send(m: Message) -> None:
        if m["type"] == "http.response.body":
            sent.append(m["body"])

    start = {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]}  # fmt: skip
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "a",
             "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}  # fmt: skip
    writer = ResponseWriter(send, _metrics(), "chat", include_usage=True)
    body = lambda b: {"type": "http.response.body", "body": b, "more_body": True}  # noqa: E731
    _run_writer(
        writer,
        [start, body(b"data: " + json.dumps(chunk).encode() + b"\n\n"), body(b"data: [DONE]\n\n")],
    )
    assert sent[-1] == b"data: [DONE]\n\n"
    usage = json.loads(sent[-2].removeprefix(b"data: "))
    assert usage["choices"] == [] and usage["id"] == "c1" and usage["created"] == 5
    assert usage["usage"] == {
        "prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 70},
    }  # fmt: skip
    assert usage["timings"]["predicted_per_second"] == 50.0


def test_done_inside_a_chunk_is_not_mistaken_for_the_end() -> None:
    assert done_event_at(b"data: [DONE]\n\n") == 0
    assert done_event_at(b'data: {"x": 1}\n\ndata: [DONE]\n\n') == 16
    assert done_event_at(b'data: {"content": "data: [DONE]"}\n\n') == -1


def test_stream_without_include_usage_is_untouched() -> None:
    sent: list[bytes] = []

    async def send(m: Message) -> None:
        if m["type"] == "http.response.body":
            sent.append(m["body"])

    start = {"type": "http.response.start", "status": 200,
             "headers": [(b"content-type", b"text/event-stream")]}  # fmt: skip
    writer = ResponseWriter(send, _metrics(), "chat", include_usage=False)
    _run_writer(writer, [start, {"type": "http.response.body", "body": b"data: [DONE]\n\n"}])
    assert sent == [b"data: [DONE]\n\n"]


def test_context_overflow_boundaries_and_numbers() -> None:
    assert context_overflow("chat", 100, 1948, 2048) is None  # prompt + max_tokens == n_ctx fits
    assert context_overflow("chat", 2047, None, 2048) is None
    status, raw = context_overflow("chat", 100, 1949, 2048) or (0, b"")
    err = json.loads(raw)["error"]
    assert status == 400 and err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    assert (err["prompt_tokens"], err["max_tokens"], err["n_ctx"]) == (100, 1949, 2048)
    assert "Lower max_tokens to at most 1948" in err["message"]
    status, raw = context_overflow("completion", 2048, None, 2048) or (0, b"")
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == "prompt" and err["max_tokens"] is None
    assert "The prompt is 2048 tokens" in err["message"]


def test_both_engines_name_unknown_models_alike() -> None:
    r = _post(MIDDLEWARE, "/v1/completions", {"model": "gpt-4o", "prompt": "x"})
    assert UnknownModelError("gpt-4o", ["a", "b"]).detail == r.json()["error"]["message"]
