"""The viewer's pages on a large store: 100 runs and 50,000 turns in the real embedded database
(nx-27017), with rubric scores and pairwise verdicts for the leaderboard.

Each run plays one of 10 models on 10 sequences x 10 run indexes x 5 turns (500 turns); run k
is generation k // 10 + 1 of its model, so the leaderboard reads the 10 latest generations,
whose 5,000 turns and 1,000 conversations are judged and compared pairwise (both orders). The
store is filled with `insert_many` (setup, not measured); what is measured is each page, served
by the app in-process (FastAPI's TestClient: routing, the store's queries, templates).

Measured: the first answer of each page on a viewer just started with an empty cache folder
(while its background work computes the leaderboard and builds the search index), how long
until the leaderboard, search and a run's report are shown, every page's median afterwards,
runs never viewed before (their report computed on demand), and the first answers of a viewer
restarted over the same cache folder. Issue 15's budget: every page under 300 ms on the
2-core machine.

    .venv/bin/python -m benchmarks.viewer_pages --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from itertools import combinations
from pathlib import Path
from typing import Any
from urllib.parse import quote

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
MODELS = [f"model-{k}" for k in range(10)]
SEQUENCES = [f"seq-{s}" for s in range(10)]
RUN_INDEXES, TURNS, RUNS = 10, 5, 100
BUDGET_MS = 300.0


def _insert(store: Store, collection: str, docs: list[dict[str, Any]]) -> None:
    for start in range(0, len(docs), 2000):
        store.db[collection].insert_many(docs[start : start + 2000], ordered=False)


def _finished(run_id: str, r: int, t: int) -> datetime:
    """Run k plays from minute k; its turns finish a few seconds apart (the search index reads
    the newest answers back to 2 minutes before the newest it had: times matter)."""
    k = int(run_id.rsplit("-", 1)[1])
    return T0 + timedelta(minutes=k, seconds=r * 5 + t)


def _turn(run_id: str, model: str, seq: str, key: str, cfg: str, gen: int, r: int, t: int) -> dict[str, Any]:
    answer = f"{model} {seq} run {r} turn {t}: the keeper climbs the lighthouse stairs. " * 30
    return ResponseRecord(
        run_id=run_id, experiment_key=key, config_hash=cfg, generation=gen, model=model, model_id=model,
        endpoint="http://127.0.0.1:8080/v1", sequence=seq, sequence_hash=f"hash-{seq}", run_index=r,
        seed=r, turn_index=t, turn_name=f"t{t}", outcome="ok", finish_reason="stop", attempts=1, error=None,
        messages_sent=2 * t + 2, prompt_tokens=300 * (t + 1), completion_tokens=250 + t,
        cached_tokens=200 * t, prompt_tokens_estimated=None, max_tokens_sent=400,
        latency_s=2.0 + t / 10, ttft_s=0.1,
        tokens_per_s=100.0, started_at=T0, finished_at=_finished(run_id, r, t), params={},
        prompt="Write the next scene. " * 20, response_text=answer, response_raw=answer,
    ).to_doc()  # fmt: skip


def fill(store: Store) -> tuple[dict[str, int], dict[str, str]]:
    """The documents, and the ids of one of each kind of page's subject."""
    turns = [{"name": f"t{t}", "text": "..."} for t in range(TURNS)]
    specs = [{"name": s, "system": "You are a novelist.", "turns": turns} for s in SEQUENCES]
    responses, runs, latest = [], [], {}
    for k in range(RUNS):
        model, gen = MODELS[k % len(MODELS)], k // len(MODELS) + 1
        run_id = f"bench-{k:03d}"
        experiments = []
        for seq in SEQUENCES:
            cfg = config_hash({"name": model}, f"hash-{seq}")
            key = experiment_key(cfg, gen)
            experiments.append({"model": model, "sequence": seq, "experiment_key": key, "generation": gen})
            for r in range(RUN_INDEXES):
                latest[(model, seq, r)] = sequence_run_id(key, model, seq, r)
                responses += [_turn(run_id, model, seq, key, cfg, gen, r, t) for t in range(TURNS)]
        runs.append(
            RunRecord(
                _id=run_id,
                started_at=T0 + timedelta(minutes=k),
                status="completed",
                command="bench",
                code_version="bench",
                config_snapshot={"sequences": specs},
                config_hashes={},
                experiments=experiments,
                models=[model],
                sequences=SEQUENCES,
                runs_per_sequence=RUN_INDEXES,
                planned_turns=len(SEQUENCES) * RUN_INDEXES * TURNS,
                # Finished runs record their counters (as `run` does at its end); only a run
                # that never recorded its end has them derived from its turns.
                finished_at=T0 + timedelta(minutes=k, seconds=50),
                counts={"ok": len(SEQUENCES) * RUN_INDEXES * TURNS},
                reused=0,
            ).to_doc()  # fmt: skip
        )
    evaluations = []
    for (model, _, _), conv in latest.items():
        quality = 3 + MODELS.index(model) // 2
        evaluations.append(_evaluation(conv, "sequence", {"coherence": quality}))
        evaluations += [_evaluation(f"{conv}:t{t}", "response", {"prose": quality}) for t in range(TURNS)]
    pairwise = []
    for a, b in combinations(MODELS, 2):
        for seq in SEQUENCES:
            for r in range(RUN_INDEXES):
                for first, second in ((a, b), (b, a)):
                    better = MODELS.index(first) > MODELS.index(second)
                    pairwise.append(
                        PairwiseRecord(
                            first_conversation=latest[(first, seq, r)],
                            second_conversation=latest[(second, seq, r)],
                            first_model=first,
                            second_model=second,
                            sequence=seq,
                            sequence_hash=f"hash-{seq}",
                            run_index=r,
                            judge_model="judge",
                            rubric_version="v1",
                            status="ok",
                            verdict="A better" if better else "B better",
                            score_first=0.75 if better else 0.25,
                            rationale="Because. " * 30,
                            error=None,
                            created_at=T0,
                        ).to_doc()  # fmt: skip
                    )
    store.ensure_indexes()
    for run in runs:
        run["revision"] = 0
    _insert(store, "runs", runs)
    _insert(store, "responses", responses)
    _insert(store, "evaluations", evaluations)
    _insert(store, "pairwise", pairwise)
    a, b = latest[(MODELS[0], SEQUENCES[3], 4)], latest[(MODELS[1], SEQUENCES[3], 4)]
    subjects = {"run": "bench-095", "conversation": a, "other": b, "turn": f"{a}:t4"}
    counts = {"runs": len(runs), "responses": len(responses), "evaluations": len(evaluations)}
    return counts | {"pairwise": len(pairwise)}, subjects


def _evaluation(target: str, kind: str, scores: dict[str, int]) -> dict[str, Any]:
    return EvaluationRecord(
        target_id=target, target_kind=kind, judge_model="judge", rubric_version="v1", scores=scores,  # type: ignore[arg-type]
        rationale="Because. " * 30, created_at=T0,
    ).to_doc()  # fmt: skip


COMPUTING = ('id="computing"', 'id="index-building"')


def _get(client: Any, url: str) -> tuple[float, Any]:
    t0 = time.perf_counter()
    response = client.get(url)
    elapsed = (time.perf_counter() - t0) * 1000
    assert response.status_code == 200, (url, response.text[:500])
    return elapsed, response


def _complete(response: Any) -> bool:
    """The page shows its content (not a "computing" or "index building" notice)."""
    return not any(marker in response.text for marker in COMPUTING)


def _until_complete(client: Any, url: str, started: float, limit_s: float = 600) -> float:
    """Seconds from `started` until `url` answers complete (to the second: polled like the
    page's own refresh)."""
    while True:
        _, response = _get(client, url)
        if _complete(response):
            return time.perf_counter() - started
        if time.perf_counter() - started > limit_s:
            raise RuntimeError(f"{url} still incomplete after {limit_s} s")
        time.sleep(1.0)  # as the page's own refresh would (1-2 s)


def _pages(ids: dict[str, str]) -> dict[str, str]:
    return {
        "runs": "/",
        "run": f"/runs/{ids['run']}",
        "conversation": f"/conversations/{quote(ids['conversation'])}",
        "turn": f"/turns/{quote(ids['turn'])}",
        "first turn": f"/turns/{quote(ids['conversation'] + ':t0')}",
        "side by side": f"/side-by-side?a={quote(ids['conversation'])}&b={quote(ids['other'])}",
        "search": "/search?q=model-7%20seq-3%20run%202",
        # Every letter triple of it is in every answer, the text in none: 1,000 candidates checked.
        "search worst": "/search?q=climbs%20the%20keeper",
        "leaderboard": "/leaderboard",
    }


def main(argv: list[str] | None = None) -> int:
    from fastapi.testclient import TestClient

    from evaluator.viewer.app import create_app

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, open_store(data_dir=Path(tmp) / "store") as store:
        started = time.perf_counter()
        counts, ids = fill(store)
        print(f"filled {counts} in {time.perf_counter() - started:.1f} s", flush=True)
        pages, cache = _pages(ids), Path(tmp) / "cache"

        def opener() -> Store:  # each app closes its own store; the embedded server stays up
            return open_store(data_dir=Path(tmp) / "store")

        worst = 0.0

        print("-- a fresh viewer, empty cache folder: first answers while the background work runs")
        with TestClient(create_app(opener, cache_root=cache)) as client:
            opened = time.perf_counter()
            for name, url in pages.items():
                ms, response = _get(client, url)
                worst = max(worst, ms)
                state = "complete" if _complete(response) else "computing notice"
                print(f"{name:14s} first answer {ms:6.0f} ms ({state})", flush=True)
            for name in ("leaderboard", "search", "run"):
                shown = _until_complete(client, pages[name], opened)
                print(f"{name:14s} complete {shown:5.1f} s after the viewer started", flush=True)

            kept = {f.name: f.stat().st_size for f in cache.rglob("*") if f.is_file()}
            index_mb = sum(n for name, n in kept.items() if name.startswith("answers.")) / 1e6
            print(f"cache folder: search index {index_mb:.1f} MB, {len(kept) - 3} computed page(s)")
            print("-- then every page, median of the repeats")
            for name, url in pages.items():
                times = [_get(client, url)[0] for _ in range(args.repeats)]
                median = statistics.median(times)
                worst = max(worst, median)
                print(f"{name:14s} median {median:6.0f} ms, max {max(times):6.0f} ms", flush=True)

            print("-- runs never viewed before (each computes its report)")
            for k in (90, 80, 70):
                url = f"/runs/bench-{k:03d}"
                t0 = time.perf_counter()
                ms, response = _get(client, url)
                worst = max(worst, ms)
                shown = _until_complete(client, url, t0)
                print(f"run bench-{k:03d}  first answer {ms:6.0f} ms, complete after {shown:4.1f} s")

        print("-- the viewer restarted over the same store and cache folder")
        with TestClient(create_app(opener, cache_root=cache)) as client:
            for name, url in pages.items():
                ms, response = _get(client, url)
                worst = max(worst, ms)
                state = "complete" if _complete(response) else "computing notice"
                print(f"{name:14s} first answer {ms:6.0f} ms ({state})", flush=True)
        print(f"slowest answer {worst:.0f} ms (budget {BUDGET_MS:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
