"""The batched engine behind the real server: concurrent conversations, cancellation, stop
strings, what the evaluator reads from the metadata."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from evaluator.config import ModelEntry
from evaluator.endpoint import probe
from tests.support.servers import MAIN_MODEL, N_CTX, RunningServer

from .conftest import N_PARALLEL

pytestmark = pytest.mark.integration

CODEWORDS = ["PELICAN", "TURNIP", "ZEPPELIN", "QUASAR", "MARZIPAN", "WALRUS", "OBELISK", "KUMQUAT"]
TURNS = 3


def extra(obj: Any) -> dict[str, Any]:
    return obj.model_extra or {}


def converse(client: openai.OpenAI, codeword: str) -> list[tuple[str, dict[str, Any], int]]:
    """One conversation that asks for its codeword every turn: (answer, timings, prompt tokens)."""
    messages: list[dict[str, str]] = [{"role": "system", "content": f"Your codeword is {codeword}."}]
    turns = []
    for _ in range(TURNS):
        messages.append({"role": "user", "content": f"Repeat after me: {codeword}"})
        resp = client.chat.completions.create(
            model=MAIN_MODEL,
            messages=messages,
            max_tokens=20,
            temperature=0.0,  # type: ignore[arg-type]
        )
        answer = resp.choices[0].message.content or ""
        assert resp.usage is not None
        turns.append((answer, extra(resp)["timings"], resp.usage.prompt_tokens))
        messages.append({"role": "assistant", "content": answer})
    return turns


def test_concurrent_conversations_keep_their_history_and_never_cross_talk(
    openai_client: openai.OpenAI, http: httpx.Client
) -> None:
    before = http.get("/storybench/models").json()["loaded_model_settings"]["stats"]
    with ThreadPoolExecutor(len(CODEWORDS)) as pool:
        results = list(pool.map(lambda c: converse(openai_client, c), CODEWORDS))
    after = http.get("/storybench/models").json()["loaded_model_settings"]["stats"]
    own = 0
    for codeword, turns in zip(CODEWORDS, results, strict=True):
        for i, (answer, timings, prompt_tokens) in enumerate(turns):
            upper = answer.upper()
            others = [c for c in CODEWORDS if c != codeword and c in upper]
            assert not others, f"{codeword} conversation, turn {i + 1}, answered {answer!r}"
            own += codeword in upper
            if i > 0:  # the previous turn (its prompt, then its answer) came from the cache
                previous_prompt = turns[i - 1][2]
                assert timings["cache_n"] >= previous_prompt - 1, (codeword, i, turns)
                assert timings["prompt_n"] < prompt_tokens - previous_prompt + 8, (codeword, i, turns)
    print(f"answers carrying their own codeword: {own} of {len(CODEWORDS) * TURNS}")
    assert own >= len(CODEWORDS) * TURNS // 2  # the check above has something to check
    # The conversations were decoded together, not one after another.
    steps = after["steps"] - before["steps"]
    generated = after["tokens_generated"] - before["tokens_generated"]
    assert generated / steps > 2, (before, after)


def test_client_disconnect_mid_stream_frees_the_slot(server: RunningServer, http: httpx.Client) -> None:
    body = {
        "model": MAIN_MODEL,
        "prompt": "A very long story begins:",
        "max_tokens": 1000,
        "stream": True,
        "logit_bias": {"0": -100, "2": -100},
    }
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{server.base_url}/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        data = [line for _, line in zip(range(6), (x for x in lines if x.startswith("data: ")), strict=False)]
        assert len(data) == 6
    # The connection is closed: the slot is released within a step or two.
    deadline = time.monotonic() + 10
    while True:
        live = http.get("/storybench/models").json()["loaded_model_settings"]
        if not any(s["busy"] for s in live["slots"]):
            break
        assert time.monotonic() < deadline, live["slots"]
        time.sleep(0.05)
    generated = live["stats"]["tokens_generated"]
    # A later request's steps are the barrier: had the abandoned generation stayed in the batch,
    # it would have added tokens while they ran.
    after = http.post(
        "/v1/completions",
        json={"model": MAIN_MODEL, "prompt": "Hello", "max_tokens": 4, "logit_bias": {"0": -100, "2": -100}},
    ).json()
    assert after["usage"]["completion_tokens"] == 4
    stats = http.get("/storybench/models").json()["loaded_model_settings"]["stats"]
    assert stats["tokens_generated"] == generated + 4, (generated, stats)


def test_stop_strings_in_a_stream(openai_client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": MAIN_MODEL,
        "prompt": "Count: one, two, three, four, five,",
        "max_tokens": 24,
        "temperature": 0.0,
        "extra_body": {"logit_bias": {"0": -100, "2": -100}},
    }
    full = openai_client.completions.create(**kwargs).choices[0].text
    stop = full[len(full) // 3 : len(full) // 3 + 4]
    assert stop.strip(), full
    chunks = list(openai_client.completions.create(stream=True, stop=[stop], **kwargs))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full[: full.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_metadata_reports_the_slots_and_the_evaluator_uses_them(
    server: RunningServer, http: httpx.Client
) -> None:
    meta = http.get("/storybench/models").json()
    entry = next(m for m in meta["models"] if m["name"] == MAIN_MODEL)
    assert (entry["engine"], entry["n_parallel"]) == ("batched", N_PARALLEL)
    assert entry["n_ctx"] == entry["n_ctx_per_slot"] == N_CTX
    assert entry["n_ctx_total"] == N_CTX * N_PARALLEL
    entry_of_ours = ModelEntry(name="local", base_url=server.base_url, model=MAIN_MODEL)
    endpoint = asyncio.run(probe(entry_of_ours))
    assert endpoint.one_model_at_a_time and endpoint.max_connections == N_PARALLEL
    assert endpoint.context_window == N_CTX  # each conversation has a whole slot's context

    async def count() -> int:
        try:
            return await endpoint.count_tokens("hello world")
        finally:
            await endpoint.aclose()

    assert asyncio.run(count()) > 0  # the server's own tokenizer


def test_json_schema_output_through_the_grammar(openai_client: openai.OpenAI) -> None:
    """`response_format` with a schema (what a judge uses) constrains the answer."""
    schema = {
        "type": "object",
        "properties": {"score": {"type": "integer"}, "verdict": {"type": "string", "enum": ["good", "bad"]}},
        "required": ["score", "verdict"],
    }
    resp = openai_client.chat.completions.create(
        model=MAIN_MODEL,
        messages=[{"role": "user", "content": "Rate this story from 1 to 10: 'The cat sat.'"}],
        response_format={"type": "json_object", "schema": schema},  # type: ignore[typeddict-unknown-key]
        max_tokens=48,
        temperature=0.0,
    )
    doc = json.loads(resp.choices[0].message.content or "")
    assert isinstance(doc["score"], int) and doc["verdict"] in ("good", "bad")


def test_invalid_grammar_is_a_400(http: httpx.Client) -> None:
    body = {"model": MAIN_MODEL, "prompt": "x", "max_tokens": 2, "grammar": "root ::= ("}
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text


@pytest.mark.parametrize(
    ("messages", "status"),
    [([{"role": "assistant"}], 200), ([{"role": "user", "content": None}], 400)],
    ids=["assistant-without-content", "null-content"],
)
def test_a_chat_the_template_cannot_render_is_a_400(
    http: httpx.Client, messages: list[dict[str, Any]], status: int
) -> None:
    """Found by schemathesis: the template's UndefinedError was a 500. A message without text is
    now refused before the template (400), an assistant's missing content rendered as ""."""
    r = http.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 4})
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"]["param"] == "messages"
