"""A store seeded for the viewer: three judged models with rubric scores and pairwise verdicts
(the leaderboard's fixtures), a run whose answer is a stored `<script>`, and optionally a run
that is playing now. Shared by the page tests, the browser test and `make screenshots`."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone

from evaluator.store import Store
from tests.leaderboard.conftest import add_ordered_verdicts, add_scores, seed_models
from tests.support.documents import make_evaluation, make_response, make_run, replaced

MODELS = ("alpha", "beta", "gamma")
HOSTILE = '<script>alert("stored")</script><img src=x onerror=alert(1)> The keeper lights the lamp.'
HOSTILE_RUN = "run-hostile"
LIVE_RUN = "run-live"
# Tests let a page wait for its background work (the product answers within 0.1 s and
# refreshes): the pages they check are then always complete.
TEST_WAIT_S = 60.0


@dataclass(frozen=True)
class Seeded:
    conversations: dict[str, list[str]]  # model -> conversation ids of run-1
    hostile_turn: str  # id of the turn whose answer is HOSTILE


def seed(store: Store, *, live: bool = False) -> Seeded:
    store.ensure_indexes()
    convs = seed_models(store, list(MODELS), sequences=3, runs=1, turns=2, run_id="run-1")
    for k, model in enumerate(MODELS):
        add_scores(store, convs[model], 3 + 2 * k, judge="judge", rubric="v1", turns=2)
    add_ordered_verdicts(store, convs, list(MODELS))
    store.create_run(replaced(make_run(HOSTILE_RUN), status="completed"))
    turns = [make_response(t, run_id=HOSTILE_RUN, text=HOSTILE if t == 1 else None) for t in range(3)]
    for turn in turns:
        store.save_response(turn)
    store.save_evaluation(make_evaluation(turns[1].id, judge="judge"))
    if live:
        now = datetime.now(timezone.utc)
        run = replaced(
            make_run(LIVE_RUN, started=now),
            host=socket.gethostname(),
            pid=os.getpid(),
            heartbeat_at=now,
            experiments=[],
            models=["delta"],
            planned_turns=10,
        )
        store.create_run(run)
    return Seeded(convs, turns[1].id)
