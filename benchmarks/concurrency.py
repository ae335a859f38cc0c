"""Concurrency: aggregate generated tokens per second with 1, 4 and 16 concurrent conversations.

All conversations start together against one model; each asks for a full-length answer to its own
prompt. Aggregate = all generated tokens / wall time from the first request to the last token.
Ours: the llama-cpp-python engine serves one request at a time (one lock around the model), the
batched engine decodes its `n_parallel` slots together; native llama-server runs with `-np` slots
and continuous batching. With --native-backend-sampling a third server, native with `-np` and its
experimental `--backend-sampling` (sampling in the GPU graph), gives native at its best; a failure
of that experimental server drops it and keeps the other figures. At the largest concurrency our
batched engine's own per-step profile is recorded too (`engine_profile`).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from itertools import count

from benchmarks.client import chat_body, new_client, stream_chat
from benchmarks.common import Record, make_record, median
from benchmarks.engine_profile import Profiler
from benchmarks.harness import Setup, writing_request
from benchmarks.servers import ServerProcess

NAME = "concurrency"
_batch = count(1)


BACKEND = "native-bs"  # the key of native with --backend-sampling


def server(setup: Setup, who: str) -> ServerProcess:
    srv = {"ours": setup.ours, "native": setup.native_parallel, BACKEND: setup.native_backend}[who]
    assert srv is not None, who
    return srv


async def burst(setup: Setup, who: str, n: int) -> dict[str, float]:
    srv = server(setup, who)
    tag = next(_batch)
    async with new_client() as client:
        bodies = [
            chat_body(
                srv.model.name,
                [
                    {"role": "system", "content": f"Batch {tag}, conversation {k}. You are a novelist."},
                    {"role": "user", "content": writing_request(setup.prompt_tokens // 2, seed=500 + k)},
                ],
                setup.concurrency_max_tokens,
                setup.logit_bias,
            )
            for k in range(n)
        ]
        start = time.perf_counter()
        results = await asyncio.gather(*(stream_chat(client, srv.base_url, b) for b in bodies))
        wall = max(r.end for r in results) - start
    for r in results:
        setup.check_length(f"{who} x{n}", r.completion_tokens, setup.concurrency_max_tokens, r.finish_reason)
    tokens = sum(r.completion_tokens for r in results)
    return {
        "aggregate": tokens / wall,
        "ttft": median([r.ttft_s * 1000 for r in results]),
        "per_stream": median([r.decode_tps for r in results]),
    }


async def run(setup: Setup) -> list[Record]:
    recs: list[Record] = []
    largest = max(setup.concurrency)
    for n in setup.concurrency:
        who_all = ["ours", "native"] + ([BACKEND] if setup.native_backend else [])
        vals: dict[str, dict[str, list[float]]] = {w: defaultdict(list) for w in who_all}
        profiler = Profiler(setup.ours, n)
        for rep in range(setup.repeats):
            for who in who_all if rep % 2 == 0 else who_all[::-1]:
                if who == BACKEND and setup.native_backend is None:
                    continue  # dropped after a failure
                try:
                    if who == "ours" and n == largest:
                        result = await profiler.measure(burst(setup, who, n))
                    else:
                        result = await burst(setup, who, n)
                except Exception as exc:
                    if who != BACKEND:
                        raise
                    setup.warn(f"{setup.label}: native --backend-sampling failed at {n} concurrent, "
                               f"dropped: {type(exc).__name__}: {exc}")  # fmt: skip
                    setup.native_backend = None
                    continue
                for k, v in result.items():
                    vals[who][k].append(v)
        o, nat, m, mt = vals["ours"], vals["native"], setup.label, setup.concurrency_max_tokens
        slots = setup.native_parallel.parallel if setup.native_parallel else 0
        recs += [
            make_record(NAME, m, n, f"aggregate generated tok/s ({mt}-token answers)",
                        "tok/s", o["aggregate"], nat["aggregate"],
                        note=f"native with -np {slots}"),
            make_record(NAME, m, n, "median time to first token", "ms", o["ttft"], nat["ttft"],
                        better="lower"),
        ]  # fmt: skip
        bs = vals.get(BACKEND, {})
        if bs.get("aggregate"):
            recs.append(
                make_record(NAME, m, n, f"aggregate generated tok/s ({mt}-token answers), native with "
                            "--backend-sampling", "tok/s", o["aggregate"], bs["aggregate"],
                            reference_name="native llama-server --backend-sampling",
                            note=f"native with -np {slots} -bs (experimental: sampling in the GPU graph)")
            )  # fmt: skip
        recs += profiler.records(NAME, m)
    return recs
