"""Conversations held per GiB of KV cache: a shared pool against slots reserved up front (issue 16,
goal 4).

Native llama-server with `-np N` reserves `n_ctx` cells for every slot, so a memory of P cells
holds P / n_ctx conversations however short they are. With `-kvu` its slots share the P cells,
but nothing checks that the running stories still fit: when the pool runs out, llama.cpp fails
the decode and the server ends every running conversation with an error ("Context size has been
exceeded"). Ours with `"kv_pool"` admits a request only when it fits beside the running ones at
their full length, so stories wait instead of failing.

Five servers, each with the same P cells, get the same C stories at once (each turn sends the
full history; end of generation banned so every answer has its full length):
- native `-np P/n_ctx -c P` (slots reserved up front, its host prompt cache on by default), and
  ours with as many slots of `n_ctx`, without and with `host_cache_mib`;
- native `-np C -kvu -c P` (shared, unchecked);
- ours with C slots of `n_ctx` in a `kv_pool` of P (shared, admitted when a request fits).
Per server: the KV cells and their MiB (llama.cpp's own `KV buffer size` from native's log,
as MiB a cell, times each server's cells), the server process's peak resident memory, the
most and the mean conversations running at once (polled: ours' slots, native's `/slots`),
the turns answered in full and the stories that failed, and the wall time. Conversations per
GiB = the most running at once over the KV GiB.

    python -m benchmarks.kv_pool --conversations 8 --turns 4 --answer 48 --ctx 1024 --pool 2048
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.client import chat_body, new_client, stream_chat
from benchmarks.harness import writing_request
from benchmarks.native import ensure
from benchmarks.run import bundled_model, model_label
from benchmarks.servers import ModelSpec, ServerProcess, eog_token_ids, native, ours

_KV_BUFFER = re.compile(r"KV buffer size\s*=\s*([0-9.]+)\s*MiB")


@dataclass
class Held:
    """One server's run: what it reserved, what it held at once, and what it finished."""

    label: str
    cells: int
    kv_mib: float = 0.0
    rss_peak_mib: float = 0.0
    most_running: int = 0
    mean_running: float = 0.0
    turns_ok: int = 0
    stories_failed: int = 0
    first_failure: str = ""
    wall_s: float = 0.0
    # ours: pool_waits, pool_evictions, pool_peak and the host_cache_* counters over the run
    counters: dict[str, int] = field(default_factory=dict)
    command: str = ""  # how the server was started (native's extra arguments included)

    @property
    def per_gib(self) -> float:
        return self.most_running / (self.kv_mib / 1024) if self.kv_mib > 0 else 0.0


def kv_mib(log: str) -> float:
    """llama.cpp's KV buffers of one context, in MiB, summed over devices (its load log)."""
    return sum(float(m) for m in _KV_BUFFER.findall(log))


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MiB; 0 where /proc does not say."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    found = re.search(r"VmHWM:\s*(\d+)\s*kB", status)
    return int(found.group(1)) / 1024 if found else 0.0


async def running(client: httpx.AsyncClient, srv: ServerProcess) -> int | None:
    """Conversations being served now: ours' busy slots, native's processing slots."""
    try:
        if srv.label.startswith("ours"):
            doc = (await client.get(f"{srv.root_url}/storybench/models")).json()
            return sum(1 for s in doc["loaded_model_settings"]["slots"] if s.get("busy"))
        return sum(1 for s in (await client.get(f"{srv.root_url}/slots")).json() if s.get("is_processing"))
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


async def story(
    client: httpx.AsyncClient, srv: ServerProcess, k: int, a: argparse.Namespace, ban: dict[str, float]
) -> tuple[int, str]:
    """One story, turn after turn with its full history; (turns answered in full, why it stopped
    early or ""). A turn that errs or ends short ends the story: its conversation is lost."""
    messages = [{"role": "system", "content": f"Story {k}. You are a novelist."}]
    for t in range(a.turns):
        messages.append(
            {"role": "user", "content": writing_request(a.turn_tokens, seed=50_000 + 100 * k + t)}
        )
        try:
            r = await stream_chat(client, srv.base_url, chat_body(srv.model.name, messages, a.answer, ban))
        except (RuntimeError, httpx.HTTPError, ValueError) as exc:
            return t, f"turn {t + 1}: {exc}"[:300]
        if r.finish_reason != "length" or r.completion_tokens != a.answer:
            why = f"turn {t + 1}: {r.completion_tokens} tokens, finish_reason {r.finish_reason}"
            return t, why + (f", error: {r.error}" if r.error else "")
        messages.append({"role": "assistant", "content": r.text})
    return a.turns, ""


async def play(srv: ServerProcess, held: Held, a: argparse.Namespace, ban: dict[str, float]) -> None:
    """All stories at once, the server polled for how many it serves until they end."""
    samples: list[int] = []
    async with new_client() as client, httpx.AsyncClient(timeout=10) as poll:
        start = time.perf_counter()
        tasks = [asyncio.create_task(story(client, srv, k, a, ban)) for k in range(a.conversations)]
        while not all(t.done() for t in tasks):
            now = await running(poll, srv)
            if now is not None:
                samples.append(now)
            await asyncio.sleep(0.1)
        held.wall_s = time.perf_counter() - start
        results = [t.result() for t in tasks]
    held.most_running = max(samples, default=0)
    held.mean_running = sum(samples) / len(samples) if samples else 0.0
    held.turns_ok = sum(n for n, _ in results)
    failures = [why for _, why in results if why]
    held.stories_failed, held.first_failure = len(failures), (failures[0] if failures else "")


def serve(srv: ServerProcess, held: Held, a: argparse.Namespace, ban: dict[str, float]) -> Held:
    held.command = srv.shown_command()
    srv.start()
    try:
        srv.wait_ready()
        before = _engine_counters(srv)
        asyncio.run(play(srv, held, a, ban))
        after = _engine_counters(srv)
        held.counters = {k: after[k] - before.get(k, 0) if k != "pool_peak" else after[k] for k in after}
        assert srv.proc is not None
        held.rss_peak_mib = peak_rss_mib(srv.proc.pid)
    finally:
        srv.stop()
    held.kv_mib = kv_mib(srv.log_tail(10**7))
    return held


def _engine_counters(srv: ServerProcess) -> dict[str, int]:
    if not srv.label.startswith("ours"):
        return {}
    stats = httpx.get(f"{srv.root_url}/storybench/models", timeout=60).json()["loaded_model_settings"][
        "stats"
    ]
    keys = (
        *("pool_waits", "pool_evictions", "pool_peak"),
        *("host_cache_saves", "host_cache_restores", "host_cache_tokens"),
    )
    return {k: int(stats.get(k) or 0) for k in keys}


def table(results: list[Held]) -> str:
    rows = [
        "| server | KV cells | KV MiB | peak RSS MiB | most / mean running | conversations per GiB of KV "
        "| turns answered | stories failed | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for h in results:
        rows.append(
            f"| {h.label} | {h.cells:,} | {h.kv_mib:.1f} | {h.rss_peak_mib:.0f} | {h.most_running} / "
            f"{h.mean_running:.1f} | {h.per_gib:.0f} | {h.turns_ok} | {h.stories_failed} | {h.wall_s:.1f} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="a GGUF file (default: the bundled model)")
    ap.add_argument("--conversations", type=int, default=8, help="stories at once (ours' and -kvu's slots)")
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--answer", type=int, default=48, help="tokens per answer")
    ap.add_argument("--turn-tokens", type=int, default=60, help="new user tokens per turn (approx.)")
    ap.add_argument("--ctx", type=int, default=1024, help="a story's most tokens: context per slot")
    ap.add_argument("--pool", type=int, default=2048, help="KV cells every server gets")
    ap.add_argument(
        "--host-cache", type=int, default=1024, help="ours' host_cache_mib where it has one (native: 8192)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gpu", action="store_true", help="full offload and flash attention")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: stdout)")
    a = ap.parse_args(argv)
    if a.pool % a.ctx or a.pool % a.conversations or a.pool < a.ctx:
        ap.error("--pool must be a multiple of --ctx and of --conversations, and at least --ctx")
    path = a.model or bundled_model()
    tools = ensure()
    ban = {str(t): -100.0 for t in eog_token_ids(path)}

    def spec(n_ctx: int) -> ModelSpec:
        return ModelSpec(model_label(path), path, n_ctx, -1 if a.gpu else 0, a.gpu, a.threads)

    results: list[Held] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reserved = a.pool // a.ctx
        shared = spec(a.pool // a.conversations)  # -c is n_ctx x -np: the pool
        mib = a.host_cache
        # Each server made when its turn comes: a port is free only until the one before binds it.
        runs: list[tuple[Callable[[], ServerProcess], Held]] = [
            (
                lambda: native(tools, spec(a.ctx), work, parallel=reserved, verbosity=4),
                Held(f"native -np {reserved}", a.pool),
            ),
            (
                # The libllama the native tools use, as in benchmarks.run: only the servers differ.
                lambda: ours(spec(a.ctx), work, tools.lib_dir, "batched", reserved),
                Held(f"ours, {reserved} slots", a.pool),
            ),
            (
                lambda: ours(spec(a.ctx), work, tools.lib_dir, "batched", reserved, host_cache_mib=mib),
                Held(f"ours, {reserved} slots, host_cache_mib {mib}", a.pool),
            ),
            (
                lambda: native(tools, shared, work, a.conversations, kv_unified=True, verbosity=4),
                Held(f"native -np {a.conversations} -kvu", a.pool),
            ),
            (
                lambda: ours(spec(a.ctx), work, tools.lib_dir, "batched", a.conversations, kv_pool=a.pool),
                Held(f"ours, {a.conversations} slots, kv_pool", a.pool),
            ),
        ]
        for make, held in runs:
            print(f"{held.label}: {a.conversations} stories of {a.turns} turns", file=sys.stderr)
            results.append(serve(make(), held, a, ban))
    # llama.cpp's own MiB a cell (native's log), for the server whose log does not say it.
    per_cell = next((h.kv_mib / h.cells for h in results if h.kv_mib > 0), 0.0)
    for h in results:
        if h.kv_mib == 0:
            h.kv_mib = h.cells * per_cell
    print(table(results), file=sys.stderr)
    doc: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "model": model_label(path),
        "native": tools.source,
        "results": [asdict(h) | {"per_gib": h.per_gib} for h in results],
    }
    text = json.dumps(doc, indent=1)
    if a.out:
        a.out.write_text(text, encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
