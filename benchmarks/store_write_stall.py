"""Do store writes stall the other conversations? Time to first token with 16 in flight.

The evaluator plays 16 conversations at once on one event loop. When a turn's store write runs
inside the coroutine (synchronous pymongo, as before issue 11), the whole loop waits for the
database round trip, and every other conversation's stream, including its first token, waits
with it. Since issue 11 the runner hands each write to a worker thread (`asyncio.to_thread`).

This benchmark plays the same plan with two copies of the evaluator, the one in this checkout
and one in `--before-tree` (an earlier commit unpacked with `git archive`), alternating, against the
instant stand-in of benchmarks/evaluator_overhead.py (a separate process) and the real embedded
store (nx-27017), and reports the time to first token of every turn (the runner's own
measurement, `ModelStats.ttfts`) and the wall time.

    mkdir -p /tmp/sb-before && git archive 35edd63 | tar -x -C /tmp/sb-before
    .venv/bin/python -m benchmarks.store_write_stall --before-tree /tmp/sb-before --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT
from benchmarks.evaluator_overhead import start_standin

# Runs in a subprocess whose PYTHONPATH puts the tree to measure first. It uses only names both
# versions have (the prompt-turn class was renamed in issue 11).
_PLAY = r"""
import asyncio, json, sys, time
from pathlib import Path
import evaluator
from evaluator import config
from evaluator.client import RetryPolicy
from evaluator.plan import build_plan
from evaluator.runner import Runner
from evaluator.store import open_store
base_url, data_dir, conversations, turns, tokens = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
delay_s = float(sys.argv[6]) / 1000
PromptTurn = getattr(config, "PromptTurn", None) or getattr(config, "Turn")
model = config.ModelEntry(name="standin", base_url=base_url, model="standin", max_tokens=tokens,
                          max_concurrency=conversations, seed=1)
seqs = [config.Sequence(name=f"s{s}", system="You are a novelist.",
                        turns=[PromptTurn(name=f"t{t}", text=f"Write part {t} of story {s}. " * 20)
                               for t in range(turns)])
        for s in range(conversations)]
plan = build_plan([model], seqs, 1)
with open_store(None, db_name=f"stall{time.time_ns()}", data_dir=Path(data_dir)) as store:
    store.ensure_indexes()
    if delay_s:  # a database farther away than this machine's embedded one (one round trip per write)
        save = store.save_response
        store.save_response = lambda rec: (time.sleep(delay_s), save(rec))[1]
    runner = Runner(plan, store, f"stall-{time.time_ns()}", {}, RetryPolicy(max_attempts=1), conversations)
    start = time.perf_counter()
    stats = asyncio.run(runner.run())
    wall = time.perf_counter() - start
s = stats["standin"]
print(json.dumps({"code": evaluator.__file__, "ttfts": s.ttfts, "ok": s.outcomes.get("ok", 0), "wall": wall}))
"""


def play(
    tree: Path, base_url: str, data_dir: Path, conversations: int, turns: int, tokens: int, delay_ms: float
) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("STORYBENCH_MONGO_URI", None)
    args = [base_url, str(data_dir), str(conversations), str(turns), str(tokens), str(delay_ms)]
    done = subprocess.run(
        [sys.executable, "-c", _PLAY, *args], cwd=tree, env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["code"].startswith(str(tree)):
        raise RuntimeError(f"measured the wrong tree: {result['code']}")
    if result["ok"] != conversations * turns:
        raise RuntimeError(f"only {result['ok']} of {conversations * turns} turns were ok")
    return result


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before-tree", type=Path, required=True, help="a checkout of the code to compare")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--conversations", type=int, default=16)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument(
        "--write-latency-ms",
        type=float,
        nargs="+",
        default=[0.0, 20.0],
        help="extra round trip added to every turn write (0: the embedded store as it is; 20: a "
        "database in another data centre)",
    )
    args = ap.parse_args(argv)
    trees = {"before": args.before_tree.resolve(), "after": ROOT}
    proc, port = start_standin(args.answer_tokens)
    base_url = f"http://127.0.0.1:{port}/v1"
    found: dict[tuple[float, str], dict[str, list[float]]] = {
        (d, name): {"ttfts": [], "walls": []} for d in args.write_latency_ms for name in trees
    }
    try:
        with tempfile.TemporaryDirectory(prefix="sb-stall-") as tmp:
            for delay in args.write_latency_ms:
                for rep in range(args.repeats):
                    order = list(trees) if rep % 2 == 0 else list(reversed(trees))
                    for name in order:
                        result = play(trees[name], base_url, Path(tmp) / name, args.conversations, args.turns,
                                      args.answer_tokens, delay)  # fmt: skip
                        found[(delay, name)]["ttfts"] += result["ttfts"]
                        found[(delay, name)]["walls"].append(result["wall"])
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"{args.conversations} conversations x {args.turns} turns in flight together, "
          f"{args.answer_tokens}-token answers, {args.repeats} repeats each, alternating")  # fmt: skip
    print(
        "| added write latency | code | TTFT median (ms) | TTFT p90 (ms) | TTFT max (ms) | wall (s, median) |"
    )
    print("|---|---|---|---|---|---|")
    for (delay, name), got in found.items():
        t = [x * 1000 for x in got["ttfts"]]
        print(f"| {delay:.0f} ms | {name} | {statistics.median(t):.1f} | {quantile(t, 0.9):.1f} | "
              f"{max(t):.1f} | {statistics.median(got['walls']):.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
