"""A stored run whose turns predate the text metrics, in the in-memory Store that
`storybench-eval metrics` is pointed at (as tests/judge/conftest.py does for `judge`)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner, Result

from evaluator.metrics.cli import metrics_command
from evaluator.records import TextMetrics
from evaluator.store import Store
from tests.support.documents import make_response, make_run, replaced
from tests.support.isolation import _no_user_database  # noqa: F401  (autouse fixture)
from tests.support.memory_store import memory_store as memory_store_of

EARLIER = "The keeper climbs the stairs at dusk."
COPYING = "The keeper climbs the stairs again, then the keeper climbs the stairs."
OTHER_EXP = "other-g1"  # an experiment outside run-a's plan


class ObservedStore(Store):
    """The real Store over mongomock, counting metric writes and able to stop after some."""

    writes = 0
    interrupt_after: int | None = None

    def set_response_metrics(self, response_id: str, metrics: TextMetrics) -> bool:
        if self.interrupt_after is not None and self.writes >= self.interrupt_after:
            raise KeyboardInterrupt
        self.writes += 1
        return super().set_response_metrics(response_id, metrics)


def seed(store: Store) -> None:
    """run-a: run 0 plays three ok turns (turn 1 copies turn 0); run 1 an ok turn then `empty`.
    Another experiment, not in run-a's plan, holds one ok turn. No turn has metrics."""
    store.create_run(make_run("run-a"))
    texts = [EARLIER, COPYING, "A ballad of the sea, sung by the keeper."]
    for t, text in enumerate(texts):
        store.save_response(make_response(t, text=text))
    store.save_response(make_response(0, run_index=1, text=COPYING))
    store.save_response(
        replaced(make_response(1, run_index=1, outcome="empty", text=""), finish_reason="stop")
    )
    store.save_response(make_response(0, exp_key=OTHER_EXP, text=EARLIER))


@pytest.fixture
def memory_store(monkeypatch: pytest.MonkeyPatch) -> ObservedStore:
    store = memory_store_of(ObservedStore)
    seed(store)
    monkeypatch.setattr("evaluator.metrics.cli.open_store", lambda uri=None, db_name="storybench": store)
    return store


def invoke(*args: str) -> Result:
    return CliRunner().invoke(metrics_command, list(args), catch_exceptions=False)


def flat(text: str) -> str:
    return " ".join(text.split())
