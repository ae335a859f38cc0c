"""The sampling tail's numpy passes on this host, without a model (issue 16): `host_tail.penalize`
with the penalties' windows matched against the candidates and with them counted per slot
(`PenaltyCounts`), and `finish_prepared`, at several numbers of rows, with warm caches and
after a sweep of `--sweep-mb` of memory (what a CPU decode does to the caches).

Why: a step's host work after the decode is time the GPU waits. The engine's own split
(`engine_steps --split`) times these functions inside a run; this gives the same functions on
synthetic rows, so two hosts (the VM, the GPU machine's) can be compared in a second:
`python -m benchmarks.tail_host`. Writes one JSON document (medians in microseconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from server.engine.host_tail import (
    PENALTY_HISTORY,
    PenaltyCounts,
    TailPlan,
    finish_prepared,
    penalize,
    prepare,
)


def _median_us(fn: Callable[[], object], reps: int, before: Callable[[], object] | None = None) -> float:
    for _ in range(min(reps, 20)):
        fn()
    spent = []
    for _ in range(reps):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        spent.append(time.perf_counter() - t0)
    return round(float(np.median(spent)) * 1e6, 1)


def measure(rows: int, k: int, n_vocab: int, reps: int, sweep: np.ndarray | None) -> dict[str, Any]:
    """One number of rows: each request's window filled past 64 tokens from a small range of
    tokens (repeats among the candidates, as in real text)."""
    rng = np.random.default_rng(rows)
    n = k + PENALTY_HISTORY
    ids = rng.integers(0, 2000, (rows, n)).astype(np.int32)
    logits = -np.sort(-rng.normal(0, 3, (rows, n)).astype(np.float32), axis=1)
    counts = PenaltyCounts(rows, n_vocab)
    counted, matched = [], []
    for r in range(rows):
        for plans in (counted, matched):
            plan = TailPlan(k, 0.95, 0.05, 0.8, seed=r)
            plan.penalties = (1.1, 0.0, 0.0)
            plans.append(plan)
        counts.lend(r, counted[r])
        for token in rng.integers(0, 2000, 2 * PENALTY_HISTORY):
            counted[r].remember(int(token))
            matched[r].remember(int(token))
    top_ids, top_logits = penalize(ids, logits, counted)
    prepared = prepare(counted)
    cases: dict[str, Callable[[], object]] = {
        "penalize_matched": lambda: penalize(ids, logits, matched),
        "penalize_counted": lambda: penalize(ids, logits, counted),
        "finish_prepared": lambda: finish_prepared(top_ids, top_logits, prepared),
    }
    out: dict[str, Any] = {"rows": rows}
    for name, fn in cases.items():
        out[name] = _median_us(fn, reps)
        if sweep is not None:
            out[name + "_after_sweep"] = _median_us(fn, max(reps // 10, 20), before=sweep.sum)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rows", default="16,32,64", help="numbers of rows, comma-separated")
    ap.add_argument("--k", type=int, default=40, help="the requests' top-k")
    ap.add_argument("--n-vocab", type=int, default=128_256, help="vocabulary size (Llama 3: 128256)")
    ap.add_argument("--reps", type=int, default=400, help="timed calls per figure (median)")
    ap.add_argument("--sweep-mb", type=int, default=100, help="memory swept before each cold call (0: none)")
    ap.add_argument("--out", help="JSON file (default: stdout)")
    args = ap.parse_args(argv)
    sweep = np.ones(args.sweep_mb * 1024 * 1024 // 8) if args.sweep_mb else None
    levels = [measure(int(r), args.k, args.n_vocab, args.reps, sweep) for r in args.rows.split(",")]
    doc = {"settings": vars(args), "microseconds": levels}
    text = json.dumps(doc, indent=1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        sys.stdout.write(text + "\n")
    for level in levels:
        print(level, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
