"""The KV-pool benchmark's reading of what servers reserve, hold and lose (respx mocks the servers
at the transport; the benchmark itself needs native llama-server, so it is not run here)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

import httpx
import respx

from benchmarks.kv_pool import Held, kv_mib, peak_rss_mib, running, story, table
from benchmarks.servers import ModelSpec, ServerProcess

ROOT = "http://127.0.0.1:9"
SPEC = ModelSpec("m", Path("m.gguf"), 1024, 0, False, 2)


def server(label: str) -> ServerProcess:
    return ServerProcess(label, SPEC, [], Path("unused.log"), 9)


def sse(*docs: dict[str, object]) -> httpx.Response:
    body = b"".join(b"data: " + json.dumps(d).encode() + b"\n\n" for d in docs) + b"data: [DONE]\n\n"
    return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


def answer(tokens: int) -> httpx.Response:
    return sse(
        {"choices": [{"delta": {"content": "Once"}, "finish_reason": None}]},
        {"choices": [{"delta": {}, "finish_reason": "length"}], "usage": {"completion_tokens": tokens}},
    )


def test_kv_mib_sums_llama_cpps_buffers_over_devices() -> None:
    log = (
        "llama_kv_cache:        CPU KV buffer size =    45.00 MiB\n"
        "llama_kv_cache:      CUDA0 KV buffer size =   128.50 MiB\n"
        "llama_context:  CUDA0 compute buffer size =   300.00 MiB\n"
    )
    assert kv_mib(log) == 173.5
    assert kv_mib("no buffers here") == 0.0


def test_peak_rss_of_this_process_and_of_none() -> None:
    assert peak_rss_mib(os.getpid()) > 10
    assert peak_rss_mib(2**22 + 12345) == 0.0


def test_conversations_per_gib_and_the_table() -> None:
    held = Held("ours", 2048, kv_mib=48.0, most_running=3, turns_ok=32)
    assert held.per_gib == 3 / (48.0 / 1024)
    assert Held("none", 0).per_gib == 0.0
    row = table([held]).splitlines()[-1]
    assert row.startswith("| ours | 2,048 | 48.0 |") and "| 3 / 0.0 | 64 | 32 | 0 |" in row


@respx.mock
def test_running_counts_ours_busy_slots_and_natives_processing_slots() -> None:
    slots = [{"id": 0, "busy": True}, {"id": 1, "busy": False}, {"id": 2, "busy": True}]
    respx.get(f"{ROOT}/storybench/models").mock(
        return_value=httpx.Response(200, json={"loaded_model_settings": {"slots": slots}})
    )
    respx.get(f"{ROOT}/slots").mock(
        return_value=httpx.Response(
            200, json=[{"id": 0, "is_processing": True}, {"id": 1, "is_processing": False}]
        )
    )

    async def go() -> tuple[int | None, int | None]:
        async with httpx.AsyncClient() as client:
            return await running(client, server("ours")), await running(client, server("native-np2"))

    assert asyncio.run(go()) == (2, 1)


@respx.mock
def test_a_story_ends_at_the_first_turn_that_errs_or_ends_short() -> None:
    """Native with a full shared pool ends every running conversation with an error event and no
    finish reason; the story is lost there, and its later turns are never sent."""
    route = respx.post(f"{ROOT}/v1/chat/completions")
    route.side_effect = [
        answer(48),
        sse({"error": {"message": "Context size has been exceeded."}}),
    ]
    a = argparse.Namespace(turns=4, turn_tokens=20, answer=48)

    async def go() -> tuple[int, str]:
        async with httpx.AsyncClient() as client:
            return await story(client, server("native-np8-kvu"), 0, a, {"2": -100.0})

    done, why = asyncio.run(go())
    assert done == 1
    assert why == "turn 2: 0 tokens, finish_reason None, error: Context size has been exceeded."
    assert route.call_count == 2
    second = json.loads(route.calls[1].request.content)
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["logit_bias"] == {"2": -100.0}


@respx.mock
def test_a_story_that_fits_answers_every_turn_and_an_http_error_ends_one() -> None:
    respx.post(f"{ROOT}/v1/chat/completions").mock(return_value=answer(48))
    a = argparse.Namespace(turns=3, turn_tokens=20, answer=48)

    async def go(srv: ServerProcess) -> tuple[int, str]:
        async with httpx.AsyncClient() as client:
            return await story(client, srv, 1, a, {})

    assert asyncio.run(go(server("ours"))) == (3, "")
    respx.post(f"{ROOT}/v1/chat/completions").mock(return_value=httpx.Response(503, json={"error": "busy"}))
    done, why = asyncio.run(go(server("ours")))
    assert done == 0 and why.startswith("turn 1: HTTP 503")
