"""The evaluator's own overhead: turns per second it drives and persists, against an instant endpoint.

A stand-in OpenAI-compatible server (a real HTTP server on 127.0.0.1, in its own process) answers
every chat completion at once with a fixed streamed answer: `--answer-tokens` SSE chunks of one
token each, then `usage`, then `[DONE]`. The evaluator's real run loop (`evaluator.runner.Runner`
over `evaluator.plan.build_plan`) plays multi-turn sequences against it with the full history
every turn and stores every turn in the real store (`evaluator.store.open_store`: the embedded
MongoDB-wire server, in a fresh data folder).

The reference is the ceiling of the same stand-in and the same OpenAI SDK: the same number of
streamed requests from a bare loop with the same concurrency, nothing stored. ours / reference is
the share of that ceiling the evaluator keeps. Anything well above the model servers' turn rates
(a few turns/s for 256-token answers) means the evaluator is never the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import ROOT, Record, make_record
from benchmarks.servers import free_port

NAME = "evaluator_overhead"


# --- the stand-in server -------------------------------------------------------------------


def _answer_body(model: str, n_tokens: int, prompt_tokens: int) -> bytes:
    base = {"id": "chatcmpl-standin", "object": "chat.completion.chunk", "created": 0, "model": model}
    events = []
    first = {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                  "finish_reason": None}]}  # fmt: skip
    events.append(first)
    for i in range(n_tokens):
        events.append({**base, "choices": [{"index": 0, "delta": {"content": f" word{i % 50}"},
                                            "finish_reason": None}]})  # fmt: skip
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    events.append({**base, "choices": [], "usage": {
        "prompt_tokens": prompt_tokens, "completion_tokens": n_tokens,
        "total_tokens": prompt_tokens + n_tokens}})  # fmt: skip
    out = "".join(f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events) + "data: [DONE]\n\n"
    return out.encode()


async def _serve_standin(port: int, n_tokens: int) -> None:
    cache: dict[str, bytes] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                if method == "POST" and path.endswith("/chat/completions"):
                    request = json.loads(body or b"{}")
                    model = str(request.get("model", "standin"))
                    if model not in cache:
                        cache[model] = _answer_body(model, n_tokens, 100)
                    payload, ctype, status = cache[model], "text/event-stream", "200 OK"
                elif method == "GET" and path.endswith("/v1/models"):
                    payload = b'{"object":"list","data":[{"id":"standin","object":"model"}]}'
                    ctype, status = "application/json", "200 OK"
                else:
                    payload = b'{"error":{"message":"not found"}}'
                    ctype, status = "application/json", "404 Not Found"
                writer.write(
                    f"HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {len(payload)}\r\n"
                    "connection: keep-alive\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=256)
    print(f"stand-in listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def start_standin(n_tokens: int) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.evaluator_overhead", "--standin", "--port", str(port),
           "--answer-tokens", str(n_tokens)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "listening" not in line:
        proc.kill()
        raise RuntimeError(f"stand-in did not start: {line}")
    return proc, port


# --- the measurements ----------------------------------------------------------------------


def _plan(base_url: str, sequences: int, turns: int, runs: int, concurrency: int, tokens: int):  # type: ignore[no-untyped-def]
    from benchmarks.harness import writing_request
    from evaluator.config import ModelEntry, PromptTurn, Sequence
    from evaluator.plan import build_plan

    model = ModelEntry(name="standin", base_url=base_url, model="standin", max_tokens=tokens,
                       max_concurrency=concurrency, seed=1, min_output_tokens=min(64, tokens))  # fmt: skip
    seqs = [
        Sequence(
            name=f"seq{s}",
            system="You are a novelist.",
            turns=[
                PromptTurn(name=f"t{t}", text=writing_request(150, seed=s * 100 + t)) for t in range(turns)
            ],
        )
        for s in range(sequences)
    ]
    return build_plan([model], seqs, runs)


def evaluator_turns_per_s(base_url: str, data_dir: Path, sequences: int, turns: int, runs: int,
                          concurrency: int, tokens: int) -> tuple[float, int]:  # fmt: skip
    from evaluator.client import RetryPolicy
    from evaluator.endpoint import Endpoint
    from evaluator.runner import Runner
    from evaluator.store import open_store

    plan = _plan(base_url, sequences, turns, runs, concurrency, tokens)
    with open_store(None, db_name=f"bench{int(time.time() * 1000)}", data_dir=data_dir) as store:
        store.ensure_indexes()
        endpoints = {m.name: Endpoint(m) for m in plan.models}
        run_id, policy = f"bench-{time.time_ns()}", RetryPolicy(max_attempts=1)
        runner = Runner(plan, store, run_id, endpoints, policy, concurrency)
        start = time.perf_counter()
        stats = asyncio.run(runner.run())
        wall = time.perf_counter() - start
        written = sum(s.written for s in stats.values())
        stored = len(store.responses(run_id=runner.run_id))
    ok = sum(s.outcomes.get("ok", 0) for s in stats.values())
    if ok != plan.total_turns or stored != plan.total_turns:
        raise RuntimeError(
            f"evaluator stored {stored} of {plan.total_turns} turns ({ok} ok, {written} written)"
        )
    return plan.total_turns / wall, plan.total_turns


def bare_turns_per_s(base_url: str, sequences: int, turns: int, runs: int, concurrency: int,
                     tokens: int) -> float:  # fmt: skip
    """The same conversations through the bare OpenAI SDK, nothing stored: the ceiling."""
    from openai import AsyncOpenAI

    from benchmarks.harness import writing_request

    async def main() -> float:
        client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        sem = asyncio.Semaphore(concurrency)

        async def conversation(s: int) -> None:
            async with sem:
                messages = [{"role": "system", "content": "You are a novelist."}]
                for t in range(turns):
                    messages.append({"role": "user", "content": writing_request(150, seed=s * 100 + t)})
                    stream = await client.chat.completions.create(  # type: ignore[call-overload]
                        model="standin",
                        messages=messages,
                        stream=True,
                        max_tokens=tokens,
                        stream_options={"include_usage": True},
                    )
                    parts = []
                    async for chunk in stream:
                        for choice in chunk.choices:
                            if choice.delta and choice.delta.content:
                                parts.append(choice.delta.content)
                    messages.append({"role": "assistant", "content": "".join(parts)})

        start = time.perf_counter()
        await asyncio.gather(*(conversation(s) for s in range(sequences * runs)))
        wall = time.perf_counter() - start
        await client.close()
        return sequences * runs * turns / wall

    return asyncio.run(main())


def run(concurrency_levels: list[int], repeats: int, tokens: int = 256, turns: int = 5,
        conversations: int = 16, data_dir: Path | None = None) -> list[Record]:  # fmt: skip
    os.environ.pop("STORYBENCH_MONGO_URI", None)  # always the embedded store, in its own folder
    proc, port = start_standin(tokens)
    base_url = f"http://127.0.0.1:{port}/v1"
    recs: list[Record] = []
    try:
        with tempfile.TemporaryDirectory(prefix="sb-bench-store-", dir=data_dir) as tmp:
            for c in concurrency_levels:
                runs = 2
                sequences = max(1, conversations // runs)
                ours: list[float] = []
                ref: list[float] = []
                for rep in range(repeats):
                    order = ["ours", "ref"] if rep % 2 == 0 else ["ref", "ours"]
                    for who in order:
                        if who == "ours":
                            tps, total = evaluator_turns_per_s(
                                base_url, Path(tmp), sequences, turns, runs, c, tokens
                            )
                            ours.append(tps)
                        else:
                            ref.append(bare_turns_per_s(base_url, sequences, turns, runs, c, tokens))
                recs.append(make_record(
                    NAME, f"stand-in ({tokens}-token streamed answers)", c,
                    f"turns/s driven and persisted ({total} turns, {turns}-turn conversations)", "turns/s",
                    ours, ref, reference_name="bare OpenAI SDK loop, nothing stored",
                    note="ours: evaluator.runner.Runner + the embedded store (nx-27017)",
                ))  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
    return recs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--standin", action="store_true", help="only run the stand-in server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--answer-tokens", type=int, default=256)
    args = ap.parse_args(argv)
    if args.standin:
        asyncio.run(_serve_standin(args.port or free_port(), args.answer_tokens))
        return 0
    from benchmarks.common import print_table

    print_table(run([1, 8], 2, args.answer_tokens), NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
