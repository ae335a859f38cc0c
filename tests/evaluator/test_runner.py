"""The run loop against an OpenAI-compatible endpoint mocked at the HTTP transport (respx)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import respx

from evaluator.client import RetryPolicy
from evaluator.config import ModelEntry, PromptTurn, Sequence
from evaluator.endpoint import Endpoint
from evaluator.plan import build_plan
from evaluator.runner import Runner
from evaluator.store import Store
from tests.support.memory_store import memory_store
from tests.support.sse import sse

BASE = "http://hosted.test/v1"
FAST = RetryPolicy(max_attempts=3, max_total_wait_s=30, initial_backoff_s=0.01, max_backoff_s=0.05)


def docs(store: Store) -> dict[str, dict[str, Any]]:
    """The stored turns as the database holds them, by `_id`."""
    return {d["_id"]: d for d in store.db["responses"].find({})}


def outcomes(store: Store) -> list[str]:
    return [d["outcome"] for d in sorted(docs(store).values(), key=lambda d: d["turn_index"])]


def entry(**kw: Any) -> ModelEntry:
    fields: dict[str, Any] = {
        "name": "hosted",
        "base_url": BASE,
        "model": "m-1",
        "max_tokens": 50,
        "seed": 7,
        "min_output_tokens": 16,
    }
    fields.update(kw)
    return ModelEntry(**fields)


def sequence(n_turns: int = 3, system: str | None = "You are a novelist.") -> Sequence:
    return Sequence(
        name="saga",
        system=system,
        turns=[PromptTurn(name=f"t{i}", text=f"Write part {i} of the story.") for i in range(n_turns)],
    )


def play(
    models: list[ModelEntry],
    seqs: list[Sequence],
    store: Store,
    *,
    runs: int = 1,
    concurrency: int = 8,
    endpoints: dict[str, Endpoint] | None = None,
) -> Runner:
    plan = build_plan(models, seqs, runs)
    runner = Runner(plan, store, "run-test", endpoints or {}, FAST, concurrency)
    asyncio.run(runner.run())
    return runner


def bodies(route: respx.Route) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in route.calls]


@respx.mock
def test_every_turn_sends_the_full_history_with_the_models_own_answers() -> None:
    answers = iter(["Mara finds a brass key.", "The key opens the lighthouse.", "A sonnet of the sea."])
    route = respx.post(f"{BASE}/chat/completions").mock(side_effect=lambda req: sse(next(answers)))
    store = memory_store()
    play([entry()], [sequence(3)], store)

    sent = bodies(route)
    assert [len(b["messages"]) for b in sent] == [2, 4, 6]
    last = sent[2]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert last[2]["content"] == "Mara finds a brass key."
    assert last[4]["content"] == "The key opens the lighthouse."
    assert all(b["stream"] is True and b["stream_options"] == {"include_usage": True} for b in sent)
    assert outcomes(store) == ["ok", "ok", "ok"]
    doc = next(d for d in docs(store).values() if d["turn_index"] == 1)
    assert doc["messages_sent"] == 4 and doc["completion_tokens"] == 5 and doc["attempts"] == 1
    assert doc["seed"] == 7 and sent[0]["seed"] == 7


@respx.mock
def test_run_k_uses_seed_plus_k() -> None:
    route = respx.post(f"{BASE}/chat/completions").mock(side_effect=lambda req: sse("An answer."))
    store = memory_store()
    play([entry(seed=100)], [sequence(1)], store, runs=3)
    assert sorted(b["seed"] for b in bodies(route)) == [100, 101, 102]
    assert sorted(d["seed"] for d in docs(store).values()) == [100, 101, 102]


@respx.mock
def test_429_with_retry_after_is_honoured_then_succeeds() -> None:
    responses = iter(
        [
            httpx.Response(429, headers={"retry-after": "0.3"}, json={"error": {"message": "slow down"}}),
            sse("Finally an answer."),
        ]
    )
    route = respx.post(f"{BASE}/chat/completions").mock(side_effect=lambda req: next(responses))
    store = memory_store()
    t0 = time.monotonic()
    play([entry()], [sequence(1)], store)
    assert time.monotonic() - t0 >= 0.3
    assert route.call_count == 2
    (doc,) = docs(store).values()
    assert doc["outcome"] == "ok" and doc["attempts"] == 2


@respx.mock
def test_401_fails_fast_with_the_providers_message_and_stops_the_model() -> None:
    route = respx.post(f"{BASE}/chat/completions").mock(
        return_value=httpx.Response(401, json={"error": {"message": "Incorrect API key provided"}})
    )
    store = memory_store()
    runner = play([entry(max_concurrency=1)], [sequence(3)], store, runs=3)
    assert route.call_count == 1  # no retry, and no other conversation of that model is sent
    (doc,) = docs(store).values()
    assert doc["outcome"] == "error" and "401" in doc["error"] and "Incorrect API key" in doc["error"]
    assert runner.stats["hosted"].aborted is not None


@respx.mock
def test_500_storm_gives_up_after_the_attempt_cap() -> None:
    route = respx.post(f"{BASE}/chat/completions").mock(
        return_value=httpx.Response(500, json={"error": {"message": "upstream exploded"}})
    )
    store = memory_store()
    play([entry()], [sequence(2)], store)
    assert route.call_count == FAST.max_attempts
    (doc,) = docs(store).values()  # the sequence stops at the failed turn
    assert doc["outcome"] == "error" and doc["attempts"] == FAST.max_attempts
    assert "gave up after 3 attempt(s)" in doc["error"] and "upstream exploded" in doc["error"]


@respx.mock
def test_error_turn_is_retried_on_resume_and_then_continues() -> None:
    route = respx.post(f"{BASE}/chat/completions").mock(return_value=httpx.Response(503))
    store = memory_store()
    play([entry()], [sequence(2)], store)
    assert outcomes(store) == ["error"]
    route.mock(side_effect=lambda req: sse("Recovered."))
    play([entry()], [sequence(2)], store)
    assert outcomes(store) == ["ok", "ok"]


@respx.mock
def test_context_budget_caps_max_tokens_then_stops_with_context_exhausted() -> None:
    long_answer = " ".join(["word"] * 150)  # ~750 chars: ~250 estimated tokens per answer
    route = respx.post(f"{BASE}/chat/completions").mock(side_effect=lambda req: sse(long_answer))
    store = memory_store()
    model = entry(context_window=600, max_tokens=400, min_output_tokens=100)
    runner = play([model], [sequence(4, system=None)], store)
    sent = bodies(route)
    assert sent[0]["max_tokens"] == 400
    assert sent[1]["max_tokens"] < 400  # capped to what still fits
    assert len(sent) == 2
    assert outcomes(store) == ["ok", "ok", "context_exhausted"]
    exhausted = next(d for d in docs(store).values() if d["outcome"] == "context_exhausted")
    assert "600-token context" in exhausted["error"] and exhausted["max_tokens_sent"] == 0
    assert runner.stats["hosted"].done == 4  # the unplayable last turn counts as settled


@respx.mock
def test_endpoint_context_error_is_recorded_as_context_exhausted() -> None:
    respx.post(f"{BASE}/chat/completions").mock(
        return_value=httpx.Response(
            400,
            json={
                "error": {
                    "message": "prompt (900 tokens) + max_tokens (50) > n_ctx (512)",
                    "code": "context_length_exceeded",
                }
            },
        )
    )
    store = memory_store()
    play([entry()], [sequence(2)], store)
    assert outcomes(store) == ["context_exhausted"]
    (doc,) = docs(store).values()
    assert "n_ctx (512)" in doc["error"]


@respx.mock
def test_empty_answer_is_retried_once_then_recorded_as_empty() -> None:
    route = respx.post(f"{BASE}/chat/completions").mock(
        side_effect=lambda req: sse("   ", completion_tokens=1)
    )
    store = memory_store()
    play([entry()], [sequence(2)], store)
    assert route.call_count == 2
    sent = bodies(route)
    assert sent[1]["seed"] != sent[0]["seed"]  # the retry is not a replay of the same sample
    assert outcomes(store) == ["empty"]
    (doc,) = docs(store).values()
    assert "empty answer twice" in doc["error"] and doc["attempts"] == 2


@respx.mock
def test_empty_then_real_answer_is_ok() -> None:
    answers = iter([sse(""), sse("A real answer."), sse("Another.")])
    respx.post(f"{BASE}/chat/completions").mock(side_effect=lambda req: next(answers))
    store = memory_store()
    play([entry()], [sequence(2)], store)
    assert outcomes(store) == ["ok", "ok"]
    first = next(d for d in docs(store).values() if d["turn_index"] == 0)
    assert first["response_text"] == "A real answer." and first["attempts"] == 2


@respx.mock
def test_stream_cut_before_finish_is_retried() -> None:
    cut = httpx.Response(
        200,
        headers={"content-type": "text/event-stream"},
        content=b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":"Half"},"finish_reason":null}]}\n\n',
    )
    answers = iter([cut, sse("Whole answer.")])
    route = respx.post(f"{BASE}/chat/completions").mock(side_effect=lambda req: next(answers))
    store = memory_store()
    play([entry()], [sequence(1)], store)
    assert route.call_count == 2
    (doc,) = docs(store).values()
    assert doc["response_text"] == "Whole answer." and doc["attempts"] == 2


@pytest.mark.parametrize("limit", [1, 2])
def test_per_endpoint_concurrency_never_exceeds_its_limit(limit: int) -> None:
    in_flight = 0
    peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return sse("Done.")

    store = memory_store()
    with respx.mock:
        respx.post(f"{BASE}/chat/completions").mock(side_effect=slow)
        play([entry(max_concurrency=limit)], [sequence(2)], store, runs=6, concurrency=16)
    assert peak == limit
    assert len(docs(store)) == 12


def test_overall_concurrency_bounds_all_endpoints_together() -> None:
    in_flight = 0
    peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return sse("Done.")

    store = memory_store()
    other = "http://other.test/v1"
    with respx.mock:
        respx.post(f"{BASE}/chat/completions").mock(side_effect=slow)
        respx.post(f"{other}/chat/completions").mock(side_effect=slow)
        models = [entry(max_concurrency=4), entry(name="other", base_url=other, max_concurrency=4)]
        play(models, [sequence(1)], store, runs=4, concurrency=3)
    assert peak == 3
    assert len(docs(store)) == 8


@respx.mock
def test_resume_continues_from_the_first_missing_turn_with_stored_history() -> None:
    answers = iter(["First part.", "Second part."])
    route = respx.post(f"{BASE}/chat/completions").mock(side_effect=lambda req: sse(next(answers)))
    store = memory_store()
    play([entry()], [sequence(2)], store)
    # Forget the second turn, as if the evaluator had been killed before storing it.
    second = next(k for k, d in docs(store).items() if d["turn_index"] == 1)
    store.db["responses"].delete_one({"_id": second})
    route.mock(side_effect=lambda req: sse("Second part, again."))
    before = route.call_count
    play([entry()], [sequence(2)], store)
    (body,) = bodies(route)[before:]  # only the missing turn is sent
    assert body["messages"][2] == {"role": "assistant", "content": "First part."}
    assert outcomes(store) == ["ok", "ok"]


@respx.mock
def test_think_blocks_are_stripped_from_history_but_kept_raw() -> None:
    answers = iter(["<think>plan the twist</think> The twist lands.", "Next."])
    route = respx.post(f"{BASE}/chat/completions").mock(side_effect=lambda req: sse(next(answers)))
    store = memory_store()
    play([entry()], [sequence(2)], store)
    first = next(d for d in docs(store).values() if d["turn_index"] == 0)
    assert "<think>" in first["response_raw"] and first["response_text"] == "The twist lands."
    assert bodies(route)[1]["messages"][2]["content"] == "The twist lands."


def overflow(prompt_tokens: int, max_tokens: int, n_ctx: int) -> httpx.Response:
    """Our server's 400 when prompt + max_tokens does not fit: it states the exact numbers."""
    return httpx.Response(
        400,
        json={
            "error": {
                "message": f"This request needs {prompt_tokens + max_tokens} tokens",
                "code": "context_length_exceeded",
                "prompt_tokens": prompt_tokens,
                "max_tokens": max_tokens,
                "n_ctx": n_ctx,
            }
        },
    )


@respx.mock
def test_exact_prompt_size_from_the_server_resizes_max_tokens_once() -> None:
    replies = iter([overflow(900, 50, 930), sse("Short but real.")])
    route = respx.post(f"{BASE}/chat/completions").mock(side_effect=lambda req: next(replies))
    store = memory_store()
    play([entry()], [sequence(1)], store)
    assert [b["max_tokens"] for b in bodies(route)] == [50, 30]  # 930 - 900 left for the answer
    (doc,) = docs(store).values()
    assert doc["outcome"] == "ok" and doc["max_tokens_sent"] == 30 and doc["attempts"] == 2


@respx.mock
def test_exact_prompt_size_that_leaves_too_little_room_is_context_exhausted() -> None:
    route = respx.post(f"{BASE}/chat/completions").mock(return_value=overflow(920, 50, 930))
    store = memory_store()
    play([entry()], [sequence(2)], store)
    assert route.call_count == 1
    (doc,) = docs(store).values()
    assert doc["outcome"] == "context_exhausted"
    assert "920 tokens of a 930-token context" in doc["error"]
