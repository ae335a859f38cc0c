"""Concurrency: aggregate generated tokens per second with 1, 4 and 16 concurrent conversations.

All conversations start together against one model; each asks for a full-length answer to its own
prompt. Aggregate = all generated tokens / wall time from the first request to the last token.
Ours serves one request at a time (llama-cpp-python's server holds one lock around the model);
native llama-server runs with `-np` slots and continuous batching.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from itertools import count

from benchmarks.client import chat_body, new_client, stream_chat
from benchmarks.common import Record, make_record, median
from benchmarks.harness import Setup, writing_request

NAME = "concurrency"
_batch = count(1)


async def burst(setup: Setup, who: str, n: int) -> dict[str, float]:
    srv = setup.ours if who == "ours" else setup.native_parallel
    assert srv is not None
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
    for n in setup.concurrency:
        vals: dict[str, dict[str, list[float]]] = {"ours": defaultdict(list), "native": defaultdict(list)}
        for rep in range(setup.repeats):
            for who in ["ours", "native"] if rep % 2 == 0 else ["native", "ours"]:
                for k, v in (await burst(setup, who, n)).items():
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
    return recs
