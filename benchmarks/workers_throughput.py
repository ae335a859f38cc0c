"""Cooperating workers: turns stored per second with 1, 2 and 4 `storybench-eval run` processes.

The instant stand-in of `evaluator_overhead` (its own process, streamed answers of
`--answer-tokens` tokens at once) is the model; the embedded nx-27017 (started here, in a fresh
folder) is the shared store; N real `python -m evaluator.cli run` processes on the same
configuration share one plan of `--conversations` conversations, each worker keeping
64 / N conversations in flight, so 64 are in flight overall whatever N. Every conversation is
claimed in the store before it is played (evaluator/workers.py), so the figures include the
claims, their renewals and releases.

Two rates per run: turns stored per second between the first request and the last write (read
from the stored turns: what the workers sustain once started), and over the wall time from
launching the workers to the last one's exit (process start-up included). Each run checks that
every planned turn was stored exactly once and that every worker exited 0. Not a timed test: the
figures go to BENCHMARKS.md ("Cooperating workers").

    .venv/bin/python -m benchmarks.workers_throughput            # 1, 2, 4 workers, 2 repeats
    .venv/bin/python -m benchmarks.workers_throughput --claims   # one Runner with and without claims

`--claims` measures what claiming costs on its own: the same plan played in this process by one
`evaluator.runner.Runner` with a `Worker` (claims) and without (how a run played before
workers), alternated, on the embedded store.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT
from benchmarks.evaluator_overhead import start_standin

IN_FLIGHT = 64


def _config(
    folder: Path, base_url: str, per_worker: int, conversations: int, turns: int, tokens: int
) -> tuple[Path, Path]:
    runs = 4
    sequences = max(1, conversations // runs)
    models = {
        "settings": {"retry_max_attempts": 2, "retry_initial_s": 0.01, "retry_max_backoff_s": 0.05},
        "models": [{"name": "standin", "base_url": base_url, "model": "standin", "max_tokens": tokens,
                    "min_output_tokens": min(16, tokens), "max_concurrency": per_worker, "seed": 1}],
    }  # fmt: skip
    prompts = {
        "sequences": [
            {"name": f"seq{s}", "system": "You are a novelist.",
             "turns": [{"name": f"t{t}", "text": f"Write part {t} of story {s}, 150 words."}
                       for t in range(turns)]}
            for s in range(sequences)
        ]
    }  # fmt: skip
    models_path, prompts_path = folder / "models.yaml", folder / "prompts.json"
    models_path.write_text(json.dumps(models))
    prompts_path.write_text(json.dumps(prompts))
    return models_path, prompts_path


def one_run(
    uri: str, base_url: str, workers: int, conversations: int, turns: int, tokens: int
) -> dict[str, Any]:
    from pymongo import MongoClient

    per_worker = max(1, IN_FLIGHT // workers)
    db = f"wbench_{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory(prefix="sb-workers-") as tmp:
        models, prompts = _config(Path(tmp), base_url, per_worker, conversations, turns, tokens)
        cmd = [sys.executable, "-m", "evaluator.cli", "run", "--config", str(models),
               "--prompts", str(prompts), "--runs", "4", "--concurrency", str(per_worker),
               "--mongo-uri", uri, "--db", db]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "STORYBENCH_MONGO_URI"}
        env.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "120"})
        logs = [Path(tmp) / f"w{n}.log" for n in range(workers)]
        start = time.perf_counter()
        procs = [
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
            for log in logs
        ]
        codes = [p.wait(900) for p in procs]
        wall = time.perf_counter() - start
        if codes != [0] * workers:
            raise RuntimeError(
                f"workers exited {codes}:\n" + "\n".join(log.read_text()[-2000:] for log in logs)
            )
    with MongoClient(uri, tz_aware=True) as client:
        docs = list(
            client[db]["responses"].find({}, projection={"started_at": 1, "finished_at": 1, "run_id": 1})
        )
        claims_left = client[db]["claims"].count_documents({})
        client.drop_database(db)
    planned = (max(1, conversations // 4) * 4) * turns
    if len(docs) != planned or claims_left:
        raise RuntimeError(f"stored {len(docs)} of {planned} turns, {claims_left} claims left")
    first = min(d["started_at"] for d in docs)
    last = max(d["finished_at"] for d in docs)
    active = (last - first).total_seconds()
    per_run: dict[str, int] = {}
    for d in docs:
        per_run[d["run_id"]] = per_run.get(d["run_id"], 0) + 1
    return {"workers": workers, "turns": planned, "active_s": active, "wall_s": wall,
            "stored_per_s": planned / active, "wall_per_s": planned / wall,
            "turns_per_worker": sorted(per_run.values())}  # fmt: skip


def claims_overhead(
    uri: str, base_url: str, conversations: int, turns: int, tokens: int, repeats: int
) -> None:
    """Turns stored/s of one in-process Runner, with claims and without, alternated."""
    import asyncio

    from evaluator.client import RetryPolicy
    from evaluator.config import load_models, load_prompts
    from evaluator.plan import build_plan
    from evaluator.runner import Runner
    from evaluator.store import open_store
    from evaluator.workers import Worker

    rates: dict[str, list[float]] = {"with claims": [], "without claims": []}
    with tempfile.TemporaryDirectory(prefix="sb-claims-") as tmp:
        models, prompts = _config(Path(tmp), base_url, IN_FLIGHT, conversations, turns, tokens)
        entries, _ = load_models(models)
        plan = build_plan(entries, load_prompts(prompts), 4)
        for rep in range(repeats):
            order = ["with claims", "without claims"] if rep % 2 == 0 else ["without claims", "with claims"]
            for label in order:
                db = f"cbench_{uuid.uuid4().hex[:10]}"
                with open_store(uri, db_name=db) as store:
                    store.ensure_indexes()
                    run_id = f"bench-{uuid.uuid4().hex[:8]}"
                    worker = (
                        Worker(store, "conversation", 90.0, owner=run_id) if label == "with claims" else None
                    )
                    runner = Runner(
                        plan, store, run_id, {}, RetryPolicy(max_attempts=2), IN_FLIGHT, worker=worker
                    )
                    start = time.perf_counter()
                    stats = asyncio.run(runner.run())
                    wall = time.perf_counter() - start
                    stored = len(store.responses(run_id=run_id))
                    store.client.drop_database(db)
                if stored != plan.total_turns or sum(s.written for s in stats.values()) != stored:
                    raise RuntimeError(f"{label}: stored {stored} of {plan.total_turns}")
                rates[label].append(plan.total_turns / wall)
                print(json.dumps({"claims": label, "turns": stored, "turns_per_s": plan.total_turns / wall}))
    print("\n| runner | turns | turns stored/s (median; runs) |\n|---|---|---|")
    for label, got in rates.items():
        runs = " / ".join(f"{x:.1f}" for x in got)
        print(f"| {label} | {plan.total_turns} | {statistics.median(got):.1f} ({runs}) |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--conversations", type=int, default=128)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument("--json", type=Path, default=None, help="also write the runs here")
    ap.add_argument("--claims", action="store_true", help="one Runner with and without claims instead")
    args = ap.parse_args(argv)
    from evaluator.store.embedded import running_server

    counts = [int(n) for n in args.workers.split(",")]
    standin, port = start_standin(args.answer_tokens)
    base_url = f"http://127.0.0.1:{port}/v1"
    results: list[dict[str, Any]] = []
    try:
        with (
            tempfile.TemporaryDirectory(prefix="sb-workers-store-") as data,
            running_server(Path(data)) as server,
        ):
            if args.claims:
                claims_overhead(
                    server.uri, base_url, args.conversations, args.turns, args.answer_tokens, args.repeats
                )
                return 0
            for rep in range(args.repeats):
                order = counts if rep % 2 == 0 else list(reversed(counts))
                for n in order:
                    result = one_run(
                        server.uri, base_url, n, args.conversations, args.turns, args.answer_tokens
                    )
                    print(json.dumps(result), flush=True)
                    results.append(result)
    finally:
        standin.terminate()
        standin.wait(10)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    base = statistics.median(r["stored_per_s"] for r in results if r["workers"] == counts[0])
    print(f"\n| workers | conversations in flight | turns | turns stored/s (median; runs) | vs {counts[0]} | "
          "turns/s over wall incl. start-up | turns per worker |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for n in counts:
        mine = [r for r in results if r["workers"] == n]
        rates = [r["stored_per_s"] for r in mine]
        med = statistics.median(rates)
        print(
            f"| {n} | {IN_FLIGHT} ({max(1, IN_FLIGHT // n)} each) | {mine[0]['turns']} | {med:.1f} "
            f"({' / '.join(f'{x:.1f}' for x in rates)}) | {med / base:.2f}x | "
            f"{statistics.median(r['wall_per_s'] for r in mine):.1f} | {mine[-1]['turns_per_worker']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
