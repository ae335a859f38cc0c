"""Multi-turn under concurrency: N conversations at once, each sending its full history every turn.

This is what an evaluation does (README, "How a run works"): many conversations in flight, every
turn carrying the system prompt, the earlier user turns and the model's own earlier answers. A
server that keeps each conversation's history in its KV cache evaluates only the new tokens, so
time to first token stays flat as histories grow; one whose conversations evict each other
re-evaluates whole histories. N is the largest --concurrency (ours' slots, native's -np); all N
start together and each sends its next turn as soon as its previous answer has ended.

Per turn: median time to first token, and the share of the history served from cache, where the
history is what the server could hold from the previous turn (its prompt + answer tokens) and
cached is this turn's `timings.cache_n`. The answer travels back as text, and re-tokenising it can
give other tokens than those generated (always so with the synthetic models' random text), so the
share can stay below 100% on any server: native's figure shows what is attainable.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass
from itertools import count

import httpx

from benchmarks.client import chat_body, new_client, stream_chat
from benchmarks.common import Record, make_record, median
from benchmarks.engine_profile import Profiler
from benchmarks.harness import Setup, writing_request
from benchmarks.servers import ServerProcess

NAME = "multiturn_concurrency"
_batch = count(1)


@dataclass(frozen=True)
class Turn:
    """One answered turn of one conversation, in tokens as the server counted them."""

    ttft_ms: float
    prompt: int  # evaluated + cached
    completion: int
    cached: int | None  # None: the server did not say
    end: float = 0.0  # perf_counter when the stream closed
    latency_ms: float = 0.0  # request sent to stream closed


def cache_percent(conversations: list[list[Turn]], t: int) -> float | None:
    """Turn t's (0-based, t >= 1) cached tokens over its history tokens (the previous turn's prompt
    + answer), summed over the conversations, in percent. None for the first turn, or when a server
    did not report what it reused."""
    if t < 1 or not conversations:
        return None
    cached = [c[t].cached for c in conversations]
    history = sum(c[t - 1].prompt + c[t - 1].completion for c in conversations)
    if history <= 0 or any(x is None for x in cached):
        return None
    return 100.0 * sum(x or 0 for x in cached) / history


def lowest_percent(conversations: list[list[Turn]], t: int) -> float | None:
    """The least-served conversation's share at turn t: an evicted conversation shows here even
    when the sum over all of them looks fine."""
    shares = [cache_percent([c], t) for c in conversations]
    values = [x for x in shares if x is not None]
    return min(values) if values else None


def summarize(conversations: list[list[Turn]], wall_s: float) -> dict[str, float]:
    """One run's figures: aggregate tok/s, then per turn t (1-based) `ttft{t}`, `cache{t}`,
    `lowest{t}`, `history{t}` and `cached{t}` (means per conversation), and `ratio` (last / first
    turn's median TTFT)."""
    n, turns = len(conversations), len(conversations[0])
    tokens = sum(turn.completion for c in conversations for turn in c)
    out = {"aggregate": tokens / wall_s if wall_s > 0 else 0.0}
    for t in range(turns):
        out[f"ttft{t + 1}"] = median([c[t].ttft_ms for c in conversations])
        out[f"latency{t + 1}"] = median([c[t].latency_ms for c in conversations])
        share, lowest = cache_percent(conversations, t), lowest_percent(conversations, t)
        if share is not None and lowest is not None:
            out[f"cache{t + 1}"], out[f"lowest{t + 1}"] = share, lowest
            out[f"history{t + 1}"] = sum(c[t - 1].prompt + c[t - 1].completion for c in conversations) / n
            out[f"cached{t + 1}"] = sum(c[t].cached or 0 for c in conversations) / n
    if turns > 1 and out["ttft1"] > 0:
        out["ratio"] = out[f"ttft{turns}"] / out["ttft1"]
    if turns > 1 and out["latency1"] > 0:
        out["latency_ratio"] = out[f"latency{turns}"] / out["latency1"]
    return out


async def conversation(
    client: httpx.AsyncClient, setup: Setup, srv: ServerProcess, who: str, tag: int, k: int
) -> list[Turn]:
    # The batch tag opens the prompt, so no run reuses an earlier run's cached conversations.
    messages = [{"role": "system", "content": f"Batch {tag}, conversation {k}. You are a novelist."}]
    turns: list[Turn] = []
    mt = setup.multiturn_max_tokens
    for t in range(setup.turns):
        # Seeds distinct per conversation and turn, the same for every server and repeat.
        messages.append(
            {"role": "user", "content": writing_request(setup.turn_tokens, seed=20_000 + 1000 * k + t)}
        )
        sent = time.perf_counter()
        r = await stream_chat(client, srv.base_url, chat_body(srv.model.name, messages, mt, setup.logit_bias))
        setup.check_length(f"{who} multiturn turn {t + 1}", r.completion_tokens, mt, r.finish_reason)
        latency = (r.end - sent) * 1000
        prompt = r.prompt_tokens or 0
        turns.append(Turn(r.ttft_s * 1000, prompt, r.completion_tokens, r.prompt_cached, r.end, latency))
        messages.append({"role": "assistant", "content": r.text})
    return turns


async def play(setup: Setup, who: str, n: int) -> dict[str, float]:
    srv = setup.ours if who == "ours" else setup.native_parallel
    assert srv is not None
    tag = next(_batch)
    async with new_client() as client:
        start = time.perf_counter()
        conversations = await asyncio.gather(
            *(conversation(client, setup, srv, who, tag, k) for k in range(n))
        )
    wall = max(c[-1].end for c in conversations) - start
    return summarize(list(conversations), wall)


async def run(setup: Setup) -> list[Record]:
    n = max(setup.concurrency)
    vals: dict[str, dict[str, list[float]]] = {"ours": defaultdict(list), "native": defaultdict(list)}
    profiler = Profiler(setup.ours, n)
    for rep in range(setup.repeats):
        for who in ["ours", "native"] if rep % 2 == 0 else ["native", "ours"]:
            coro = play(setup, who, n)
            result = await (profiler.measure(coro) if who == "ours" else coro)
            for k, v in result.items():
                vals[who][k].append(v)
    o, nat, m, mt = vals["ours"], vals["native"], setup.label, setup.multiturn_max_tokens
    slots = setup.native_parallel.parallel if setup.native_parallel else 0

    def med(d: dict[str, list[float]], key: str) -> str:
        return f"{median(d[key]):.0f}" if d.get(key) else "-"

    recs = [
        make_record(NAME, m, n, f"aggregate generated tok/s ({setup.turns} turns of {mt}-token answers)",
                    "tok/s", o["aggregate"], nat["aggregate"], note=f"native with -np {slots}"),
    ]  # fmt: skip
    for t in range(1, setup.turns + 1):
        recs.append(make_record(NAME, m, n, f"turn {t} median time to first token", "ms",
                                o[f"ttft{t}"], nat[f"ttft{t}"], better="lower"))  # fmt: skip
        if o.get(f"cache{t}") or nat.get(f"cache{t}"):

            def pair(key: str, t: int = t) -> str:
                return f"{med(o, f'{key}{t}')} / {med(nat, f'{key}{t}')}"

            note = (
                f"per conversation, ours / native: history {pair('history')} tokens (previous prompt + "
                f"answer), cached {pair('cached')}; least-served conversation {pair('lowest')} %"
            )
            recs.append(make_record(NAME, m, n, f"turn {t} history served from cache", "%",
                                    o[f"cache{t}"], nat[f"cache{t}"], note=note))  # fmt: skip
    for t in sorted({1, setup.turns}):
        recs.append(make_record(NAME, m, n, f"turn {t} median latency (request to last token)", "ms",
                                o[f"latency{t}"], nat[f"latency{t}"], better="lower"))  # fmt: skip
    if o.get("latency_ratio") or nat.get("latency_ratio"):
        recs.append(make_record(NAME, m, n, f"turn {setup.turns} / turn 1 median latency", "x",
                                o["latency_ratio"], nat["latency_ratio"], better="lower"))  # fmt: skip
    if o.get("ratio") or nat.get("ratio"):
        recs.append(make_record(NAME, m, n, f"turn {setup.turns} / turn 1 time to first token", "x",
                                o["ratio"], nat["ratio"], better="lower"))  # fmt: skip
    return recs + profiler.records(NAME, m)
