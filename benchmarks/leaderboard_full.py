"""The whole leaderboard at full size, on the real embedded database: 20 models x 30 sequences x
3 runs x 5 turns, every pair compared in both orders, every turn and conversation judged
(about 54,000 documents), then `storybench-eval leaderboard` computed with 1,000 bootstrap
resamples, and the HTML page with its charts.

Issue 12's budgets: under 10 s for the leaderboard, under 15 s for the HTML with charts, on the
2-core machine. The store is filled with `insert_many` (setup, not measured); what is measured
is what the command does: read the store (gather), compute (build), render.

    .venv/bin/python -m benchmarks.leaderboard_full --repeats 3
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from evaluator.leaderboard.build import build
from evaluator.leaderboard.gather import gather
from evaluator.leaderboard.render import charts, render_html
from evaluator.records import (
    EvaluationRecord,
    PairwiseRecord,
    ResponseRecord,
    RunRecord,
    config_hash,
    experiment_key,
    sequence_run_id,
)
from evaluator.store import Store, open_store

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
LABELS = ["A much better", "A better", "tie", "B better", "B much better"]


def _insert(store: Store, collection: str, docs: list[dict[str, Any]]) -> None:
    for start in range(0, len(docs), 2000):
        store.db[collection].insert_many(docs[start : start + 2000], ordered=False)


def fill(store: Store, models: int, sequences: int, runs: int, turns: int, seed: int = 1) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    names = [f"model-{k:02d}" for k in range(models)]
    theta = dict(zip(names, rng.normal(0.0, 0.7, models), strict=True))
    seqs = [f"seq-{s:02d}" for s in range(sequences)]
    specs = [
        {
            "name": s,
            "system": "You are a novelist.",
            "turns": [{"name": f"t{t}", "text": "..."} for t in range(turns)],
        }
        for s in seqs
    ]
    responses, evaluations, conv_of = [], [], {}
    experiments = []
    for m in names:
        for s in seqs:
            cfg = config_hash({"name": m}, f"hash-{s}")
            key = experiment_key(cfg, 1)
            experiments.append({"model": m, "sequence": s, "experiment_key": key, "generation": 1})
            for r in range(runs):
                conv = sequence_run_id(key, m, s, r)
                conv_of[(m, s, r)] = conv
                quality = 5 + 2 * theta[m]
                for t in range(turns):
                    rec = ResponseRecord(
                        run_id="bench-run", experiment_key=key, config_hash=cfg, generation=1, model=m,
                        model_id=m, endpoint="http://127.0.0.1:8080/v1", sequence=s,
                        sequence_hash=f"hash-{s}", run_index=r, seed=r, turn_index=t, turn_name=f"t{t}",
                        outcome="ok", finish_reason="stop",
                        attempts=1, error=None, messages_sent=2 * t + 2, prompt_tokens=300 * (t + 1),
                        completion_tokens=int(rng.integers(200, 400)), cached_tokens=None,
                        prompt_tokens_estimated=None, max_tokens_sent=400, latency_s=2.0, ttft_s=0.1,
                        tokens_per_s=100.0, started_at=T0, finished_at=T0 + timedelta(seconds=2), params={},
                        prompt="Write the next scene. " * 20, response_text="The keeper climbs. " * 100,
                        response_raw="The keeper climbs. " * 100,
                    )  # fmt: skip
                    responses.append(rec.to_doc())
                    score = int(np.clip(round(quality + rng.normal(0, 1.5)), 1, 10))
                    evaluations.append(
                        EvaluationRecord(
                            target_id=rec.id,
                            target_kind="response",
                            judge_model="judge",
                            rubric_version="2-bench",
                            scores={"prose": score, "continuity": score},
                            rationale="Because. " * 30,
                            created_at=T0,
                        ).to_doc()  # fmt: skip
                    )
                evaluations.append(
                    EvaluationRecord(
                        target_id=conv,
                        target_kind="sequence",
                        judge_model="judge",
                        rubric_version="2-bench",
                        scores={"coherence": int(np.clip(round(quality), 1, 10))},
                        rationale="Because. " * 30,
                        created_at=T0,
                    ).to_doc()  # fmt: skip
                )
    pairwise = []
    for a, b in combinations(names, 2):
        for s in seqs:
            for r in range(runs):
                for first, second in ((a, b), (b, a)):
                    p_first = 1 / (1 + math.exp(theta[second] - theta[first] - 0.3))
                    u = rng.random()
                    label = LABELS[1] if u < p_first * 0.8 else LABELS[2] if u < p_first else LABELS[3]
                    pairwise.append(
                        PairwiseRecord(
                            first_conversation=conv_of[(first, s, r)],
                            second_conversation=conv_of[(second, s, r)],
                            first_model=first,
                            second_model=second,
                            sequence=s,
                            sequence_hash=f"hash-{s}",
                            run_index=r,
                            judge_model="judge",
                            rubric_version="2-bench",
                            status="ok",
                            verdict=label,
                            score_first=1 - LABELS.index(label) / 4,
                            rationale="Because. " * 30,
                            error=None,
                            created_at=T0,
                            details={"attempts": 1},
                        ).to_doc()  # fmt: skip
                    )
    run = RunRecord(
        _id="bench-run", started_at=T0, status="completed", command="bench", code_version="bench",
        config_snapshot={"sequences": specs}, config_hashes={}, experiments=experiments, models=names,
        sequences=seqs, runs_per_sequence=runs, planned_turns=len(responses),
    )  # fmt: skip
    store.ensure_indexes()
    store.create_run(run)
    _insert(store, "responses", responses)
    _insert(store, "evaluations", evaluations)
    _insert(store, "pairwise", pairwise)
    return {"responses": len(responses), "evaluations": len(evaluations), "pairwise": len(pairwise)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--sequences", type=int, default=30)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, open_store(data_dir=Path(tmp)) as store:
        started = time.perf_counter()
        counts = fill(store, args.models, args.sequences, args.runs, args.turns)
        print(
            f"filled {counts} ({sum(counts.values())} documents) in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        board_times, html_times = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            inputs = gather(store, judge="judge")
            t1 = time.perf_counter()
            board = build(inputs, resamples=args.resamples)
            t2 = time.perf_counter()
            out = io.StringIO()
            render_html(board, out, charts(board, scale=(1, 10)))
            t3 = time.perf_counter()
            board_times.append(t2 - t0)
            html_times.append(t3 - t0)
            print(
                f"gather {t1 - t0:.2f} s, build {t2 - t1:.2f} s (leaderboard {t2 - t0:.2f} s), "
                f"HTML with charts {t3 - t2:.2f} s (total {t3 - t0:.2f} s, "
                f"{len(out.getvalue()) // 1024} KiB)",
                flush=True,
            )
        print(
            f"median: leaderboard {statistics.median(board_times):.2f} s (budget 10 s), "
            f"HTML with charts {statistics.median(html_times):.2f} s (budget 15 s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
