"""Soak: many turns against the stand-in with random faults at a fixed seed.

The real run loop (`evaluator.evaluate.evaluate`: run documents, retries, resume) writes to a real
embedded database. Each request's fault is drawn from a generator seeded with (seed, history,
run seed, attempt), so the same faults hit the same requests whatever the interleaving of
conversations.
The run is repeated (resume) until every planned turn is settled. Then: 0 lost, 0 duplicated,
and the totals add up (every request the stand-in received is counted in exactly one written
record's `attempts`; the run documents' counts match what was written).

The default suite plays 200 turns; `-m slow` adds the 1,000-turn soak.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from evaluator.config import EvalSettings, ModelEntry, PromptTurn, Sequence
from evaluator.endpoint import Endpoint
from evaluator.evaluate import Evaluation, evaluate
from evaluator.records import ResponseRecord
from evaluator.store import Store
from tests.reliability.checks import assert_whole, duplicates, history_mismatches, stored_turns, turn_key
from tests.reliability.standin import ChatRequest, StandIn

pytestmark = pytest.mark.integration

SEED = 20261128
FAULT_RATE = 0.25  # of requests
# Relative weights of the faults drawn (hangs are rare: each costs a read timeout).
WEIGHTS = {
    "429": 8, "429_retry_after_ms": 8, "500": 8, "503": 8, "500_html": 3, "reset": 8, "cut": 8,
    "done_early": 6, "invalid_json": 4, "non_object_event": 3, "error_event": 4, "missing_choices": 4,
    "not_sse": 3, "empty": 4, "400": 2, "hang": 1, "hang_mid_stream": 1,
}  # fmt: skip
TURNS = 5
SEQUENCES = 4
MAX_PASSES = 8


def planner(request: ChatRequest) -> str:
    rng = random.Random(f"{SEED}:{request.identity}:{request.attempt}")
    if rng.random() >= FAULT_RATE:
        return "ok"
    return rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]


def soak_sequences() -> list[Sequence]:
    return [
        Sequence(
            name=f"saga-{s}",
            system=f"You are novelist number {s}.",
            turns=[PromptTurn(name=f"t{t}", text=f"Write part {t} of story {s}.") for t in range(TURNS)],
        )
        for s in range(SEQUENCES)
    ]


@pytest.mark.parametrize(
    "runs",
    [pytest.param(10, id="200-turns"), pytest.param(50, id="1000-turns", marks=pytest.mark.slow)],
)
def test_soak_loses_nothing_and_stores_nothing_twice(
    store: Store, figures: dict[str, Any], runs: int
) -> None:
    seqs = soak_sequences()
    planned = SEQUENCES * runs * TURNS
    written: list[tuple[int, ResponseRecord]] = []  # (pass, record) of every write
    save = store.save_response
    current = {"pass": 0}

    def recording_save(rec: ResponseRecord) -> bool:
        ok = save(rec)
        assert ok, f"{rec.id}: a write was refused (the turn was already final)"
        written.append((current["pass"], rec))
        return ok

    store.save_response = recording_save  # type: ignore[method-assign]
    settings = EvalSettings(retry_max_attempts=3, retry_initial_s=0.01, retry_max_backoff_s=0.05,
                            retry_max_wait_s=30.0)  # fmt: skip
    with StandIn(hang_s=5.0, planner=planner) as standin:
        model = ModelEntry(
            name="hosted", base_url=standin.base_url, model="standin-1", max_tokens=64,
            min_output_tokens=16, seed=7, request_timeout_s=2.0, max_concurrency=8,
        )  # fmt: skip
        endpoints = {"hosted": Endpoint(model)}
        evaluation = Evaluation([model], seqs, settings, runs, concurrency=8)
        codes = []
        for n in range(1, MAX_PASSES + 1):
            current["pass"] = n
            codes.append(evaluate(store, evaluation, endpoints).exit_code)
            if codes[-1] == 0:
                break
        requests = list(standin.requests)

    assert codes[-1] == 0, f"not settled after {MAX_PASSES} passes: exit codes {codes}"
    assert set(codes[:-1]) <= {3}, codes  # an unfinished pass says "re-run to retry"
    docs = stored_turns(store)
    for doc in docs:
        assert_whole(doc)

    # 0 lost: every planned turn is stored, or follows a final non-ok outcome in its conversation.
    ended = {turn_key(d)[:4]: d["turn_index"] for d in docs if d["outcome"] in ("empty", "context_exhausted")}
    skipped = sum(TURNS - 1 - index for index in ended.values())
    lost = planned - skipped - len(docs)
    # 0 duplicated: one document per turn, and no turn's answer was paid for twice.
    served_ok = Counter(r.identity for r in requests if r.fault == "ok")
    paid_twice = sum(n - 1 for n in served_ok.values() if n > 1)
    dup = duplicates(docs)
    assert (lost, dup, paid_twice) == (0, 0, 0)
    assert history_mismatches(docs, {s.name: s.system for s in seqs}) == []
    assert all(d["outcome"] in ("ok", "empty") for d in docs)

    # Totals add up. Every request the stand-in saw is counted in exactly one written record.
    assert sum(rec.attempts for _, rec in written) == len(requests)
    # The run documents count what each pass wrote.
    run_docs = sorted(store.list_runs(limit=100), key=lambda r: r.started_at)
    assert len(run_docs) == len(codes)
    for n, run in enumerate(run_docs, start=1):
        wrote = Counter(rec.outcome for p, rec in written if p == n)
        assert {k: v for k, v in run.counts.items() if v} == dict(wrote), run.id
        assert run.status == ("completed" if n == len(codes) else "incomplete")
    ok_written = sum(1 for _, rec in written if rec.outcome == "ok")
    assert ok_written == sum(1 for d in docs if d["outcome"] == "ok") == len(served_ok)

    errors_then_ok = {rec.id for _, rec in written if rec.outcome == "error"} & {
        d["_id"] for d in docs if d["outcome"] == "ok"
    }
    retried_ok = sum(1 for d in docs if d["outcome"] == "ok" and d["attempts"] > 1)
    faults = Counter(r.fault for r in requests if r.fault != "ok")
    figures[f"soak_{planned}_turns"] = {
        "planned_turns": planned,
        "passes": len(codes),
        "turn_attempts_written": len(written),
        "requests": len(requests),
        "faults_injected": sum(faults.values()),
        "faults_by_kind": dict(sorted(faults.items())),
        "lost": lost,
        "duplicated": dup + paid_twice,
        "recovered_within_turn": retried_ok,
        "recovered_on_resume": len(errors_then_ok),
        "final_empty": sum(1 for d in docs if d["outcome"] == "empty"),
    }
