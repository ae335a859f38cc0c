"""The real server (a `python -m server` process) with the bundled SmolLM2-135M model."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from .conftest import ALT_MODEL, MAIN_MODEL, N_CTX, RunningServer

pytestmark = pytest.mark.integration

SYSTEM = "You are a storyteller. Answer in two or three sentences."
TURNS = [
    "Tell me a story about a lighthouse keeper.",
    "What did she find on the beach the next morning?",
    "Who came to visit her that evening?",
    "Describe the storm that night.",
    "How does the story end?",
]


def extra(obj: Any) -> dict[str, Any]:
    return obj.model_extra or {}


def test_health_and_models(http: httpx.Client) -> None:
    health = http.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ready"
    models = http.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MAIN_MODEL, ALT_MODEL]


def test_chat_completion_has_text_usage_and_timings(openai_client: openai.OpenAI) -> None:
    resp = openai_client.chat.completions.create(
        model=MAIN_MODEL,
        messages=[{"role": "user", "content": "Write one sentence about a cat."}],
        max_tokens=32,
    )
    assert resp.choices[0].message.content and resp.choices[0].message.content.strip()
    usage = resp.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    t = extra(resp)["timings"]
    assert t["prompt_n"] + t["cache_n"] == usage.prompt_tokens
    assert t["predicted_n"] == usage.completion_tokens
    assert t["prompt_ms"] > 0 and t["predicted_ms"] >= 0


def test_five_turn_conversation_answers_every_turn_and_reuses_the_cache(
    openai_client: openai.OpenAI,
) -> None:
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    seen: list[tuple[int, int, int, int]] = []
    for i, question in enumerate(TURNS):
        messages.append({"role": "user", "content": question})
        resp = openai_client.chat.completions.create(
            model=MAIN_MODEL,
            messages=messages,
            max_tokens=48,
            seed=7,  # type: ignore[arg-type]
        )
        answer = resp.choices[0].message.content or ""
        assert answer.strip(), f"turn {i + 1} got an empty answer"
        assert resp.usage is not None and resp.usage.completion_tokens > 1
        t = extra(resp)["timings"]
        seen.append((resp.usage.prompt_tokens, t["cache_n"], t["prompt_n"], t["predicted_n"]))
        if i > 0:
            # The previous request's prompt is a prefix of this one: it comes from the cache.
            assert t["cache_n"] > 0, seen
            assert t["cache_n"] >= seen[i - 1][0] - 1, seen
            assert t["prompt_n"] < resp.usage.prompt_tokens
        messages.append({"role": "assistant", "content": answer})
    print("turns (prompt_tokens, cache_n, prompt_n, predicted_n):", seen)


def test_stream_with_include_usage_ends_with_a_usage_chunk(openai_client: openai.OpenAI) -> None:
    stream = openai_client.chat.completions.create(
        model=MAIN_MODEL,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0
    assert extra(last)["timings"]["predicted_n"] == last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_include_usage_has_no_usage_chunk(openai_client: openai.OpenAI) -> None:
    stream = openai_client.completions.create(
        model=MAIN_MODEL, prompt="Once upon a time", max_tokens=8, stream=True
    )
    chunks = list(stream)
    assert chunks and all(c.choices for c in chunks) and all(c.usage is None for c in chunks)


def test_completions_stream_usage(openai_client: openai.OpenAI) -> None:
    stream = openai_client.completions.create(
        model=MAIN_MODEL,
        prompt="Once upon a time",
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"logit_bias": {"0": -100, "2": -100}},  # no end of text: exactly 8 tokens
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8


def _overflow(client: openai.OpenAI, stream: bool, content: str, max_tokens: int | None) -> Any:
    with pytest.raises(openai.BadRequestError) as info:
        resp = client.chat.completions.create(
            model=MAIN_MODEL,
            messages=[{"role": "user", "content": content}],
            stream=stream,
            **({"max_tokens": max_tokens} if max_tokens else {}),  # type: ignore[arg-type]
        )
        if stream:
            list(resp)  # type: ignore[arg-type]
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "context_length_exceeded"
    assert body["n_ctx"] == N_CTX
    return body


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_plus_max_tokens_over_n_ctx_is_a_400(openai_client: openai.OpenAI, stream: bool) -> None:
    body = _overflow(openai_client, stream, "tell me a story " * 100, max_tokens=N_CTX - 100)
    prompt = body["prompt_tokens"]
    assert 300 < prompt < N_CTX and body["max_tokens"] == N_CTX - 100
    message = body["message"]
    assert f"{prompt} prompt tokens + {N_CTX - 100} requested max_tokens" in message
    assert f"(n_ctx) is {N_CTX} tokens" in message
    assert f"Lower max_tokens to at most {N_CTX - prompt}" in message


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_n_ctx_is_a_400(openai_client: openai.OpenAI, stream: bool) -> None:
    body = _overflow(openai_client, stream, "story " * (N_CTX + 50), max_tokens=None)
    assert body["prompt_tokens"] > N_CTX and body["max_tokens"] is None
    assert f"The prompt is {body['prompt_tokens']} tokens" in body["message"]
    assert f"context window (n_ctx) of {N_CTX} tokens" in body["message"]


def test_request_that_fits_exactly_is_served(openai_client: openai.OpenAI) -> None:
    # The boundary: prompt + max_tokens == n_ctx is allowed.
    messages = [{"role": "user", "content": "Say hi."}]
    probe = openai_client.chat.completions.create(
        model=MAIN_MODEL,
        messages=messages,
        max_tokens=1,  # type: ignore[arg-type]
    )
    assert probe.usage is not None
    room = N_CTX - probe.usage.prompt_tokens
    resp = openai_client.chat.completions.create(
        model=MAIN_MODEL,
        messages=messages,
        max_tokens=room,
        stop=["."],  # type: ignore[arg-type]
    )
    assert resp.choices[0].message.content is not None


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_unknown_model_is_404_naming_known_models(openai_client: openai.OpenAI, kind: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        if kind == "chat":
            openai_client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
        else:
            openai_client.completions.create(model="gpt-4o", prompt="hi", max_tokens=4)
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "model_not_found"
    assert f"Known models: {MAIN_MODEL}, {ALT_MODEL}" in body["message"]


def test_unknown_model_on_other_routes_is_404(http: httpx.Client) -> None:
    r = http.post("/extras/tokenize", json={"model": "gpt-4o", "input": "hello"})
    assert r.status_code == 404 and MAIN_MODEL in r.json()["error"]["message"]  # OpenAI's shape


def test_max_completion_tokens_is_honoured(openai_client: openai.OpenAI) -> None:
    resp = openai_client.chat.completions.create(
        model=MAIN_MODEL,
        messages=[{"role": "user", "content": "Count from one to one hundred in words."}],
        max_completion_tokens=5,
        logit_bias={"2": -100},
    )
    assert resp.usage is not None and resp.usage.completion_tokens == 5


def test_metadata_endpoint(http: httpx.Client, bundled_gguf: Path) -> None:
    meta = http.get("/storybench/models").json()
    assert meta["server"] == "storybench"
    assert meta["llama_cpp_python_version"] == "0.3.36"
    assert isinstance(meta["gpu_offload_supported"], bool)
    assert meta["default_model"] == MAIN_MODEL
    assert meta["current_model"] in (MAIN_MODEL, ALT_MODEL)
    assert isinstance(meta["swap_count"], int)
    models = {m["name"]: m for m in meta["models"]}
    assert list(models) == [MAIN_MODEL, ALT_MODEL]
    m = models[MAIN_MODEL]
    assert m["gguf_path"] == str(bundled_gguf)
    assert m["file_size"] == bundled_gguf.stat().st_size
    assert m["sha256"] == hashlib.sha256(bundled_gguf.read_bytes()).hexdigest()
    assert (m["architecture"], m["quantization"]) == ("llama", "Q4_1")
    assert (m["n_ctx"], m["n_batch"], m["n_ubatch"]) == (N_CTX, 512, 512)
    assert m["n_gpu_layers"] in (0, -1) and isinstance(m["flash_attn"], bool)
    assert len(m["chat_template_sha256"]) == 64
    assert models[ALT_MODEL]["n_ctx"] == 1024


def test_upstream_defaults_are_fixed_in_the_running_server(http: httpx.Client) -> None:
    """Read back from the live process: llama-cpp-python's server defaults would be
    interrupt_requests=True and logits_all=True."""
    live = http.get("/storybench/models").json()["loaded_model_settings"]
    assert live["interrupt_requests"] is False
    assert live["logits_all"] is False
    assert live["n_ctx"] in (N_CTX, 1024) and live["n_threads"] == 1


def test_model_swap_is_counted_and_reported(
    http: httpx.Client, openai_client: openai.OpenAI, server: RunningServer
) -> None:
    def ask(model: str) -> str:
        resp = openai_client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        return resp.model

    ask(MAIN_MODEL)
    before = http.get("/storybench/models").json()
    assert before["current_model"] == MAIN_MODEL
    assert ask(ALT_MODEL) == ALT_MODEL
    during = http.get("/storybench/models").json()
    assert during["current_model"] == ALT_MODEL
    assert during["swap_count"] == before["swap_count"] + 1
    assert during["last_swap_seconds"] > 0
    ask(MAIN_MODEL)
    after = http.get("/storybench/models").json()
    assert after["swap_count"] == before["swap_count"] + 2
    assert f"loaded '{ALT_MODEL}' in" in server.log()


def test_stream_is_not_cut_short_by_a_concurrent_request(
    openai_client: openai.OpenAI, server: RunningServer
) -> None:
    """Upstream's interrupt_requests would end this stream as soon as /v1/models waits."""
    max_tokens = 128  # long enough that the other request reaches the server mid-stream
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
    result: dict[str, Any] = {}
    sent = threading.Event()

    def other_request() -> None:
        hooks = {"request": [lambda request: sent.set()]}
        with httpx.Client(timeout=120, event_hooks=hooks) as client:
            result["status"] = client.get(f"{server.base_url}/models").status_code

    thread = threading.Thread(target=other_request)
    thread.start()
    assert sent.wait(60), "the concurrent request was never sent"
    rest = [next(chunks)]  # generation goes on while the other request waits for the model
    waiting = thread.is_alive()
    rest += list(chunks)
    thread.join(120)
    finish = [c.choices[0].finish_reason for c in [first, *rest] if c.choices]
    assert waiting and finish[-1] == "length"  # not cut short by upstream's interrupt_requests
    assert rest[-1].usage is not None and rest[-1].usage.completion_tokens == max_tokens
    assert result["status"] == 200
