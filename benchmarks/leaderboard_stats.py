"""The leaderboard's statistics at full size: 20 models x 30 sequences x 3 runs, every pair
compared (17,100 verdicts), rated with 1,000 cluster-bootstrap resamples.

Issue 12's budget is 10 s for the whole leaderboard (reading about 50,000 documents, the
statistics and the tables) on the 2-core machine; this measures the statistics alone
(`evaluator.leaderboard.ratings.rate`), on verdicts simulated from known strengths.

    .venv/bin/python -m benchmarks.leaderboard_stats --repeats 3
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np

from evaluator.leaderboard.ratings import PairVerdict, rate


def verdicts(models: int, sequences: int, runs: int, seed: int = 1) -> list[PairVerdict]:
    rng = np.random.default_rng(seed)
    names = [f"m{k}" for k in range(models)]
    theta = rng.normal(0.0, 0.7, models)
    out = []
    for s in range(sequences):
        for _ in range(runs):
            for i in range(models):
                for j in range(i + 1, models):
                    a, b = math.exp(theta[i]), math.exp(theta[j])
                    tie = 0.6 * math.sqrt(a * b)
                    draw = rng.random() * (a + b + tie)
                    score = 1.0 if draw < a else 0.0 if draw < a + b else 0.5
                    out.append(PairVerdict(names[i], names[j], score, f"s{s}"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--sequences", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    data = verdicts(args.models, args.sequences, args.runs)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        rate(data, resamples=args.resamples)
        times.append(time.perf_counter() - start)
    print(f"{len(data)} verdicts, {args.models} models, {args.resamples} resamples: "
          f"median {statistics.median(times):.2f} s over {args.repeats} repeats "
          f"({', '.join(f'{t:.2f}' for t in times)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
