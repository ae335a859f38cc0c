"""`storybench-eval metrics` against the real embedded nx-27017: the backfill's whole-document
replace keeps every stored type (a `$set` would turn dates into strings there), and a re-run
writes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from pymongo import MongoClient

from evaluator.store import EmbeddedServer, open_store
from evaluator.store.embedded import running_server
from evaluator.text_metrics import text_metrics
from tests.metrics.conftest import COPYING, EARLIER, flat, invoke, seed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with running_server(tmp_path_factory.mktemp("metrics-mongo")) as server:
        yield server


def test_the_backfill_on_nx_27017_keeps_types_and_is_idempotent(
    mongo: EmbeddedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = "metrics_" + tmp_path.name[-12:].replace("-", "_")
    with open_store(mongo.uri, db_name=db) as store:
        store.ensure_indexes()
        seed(store)
    # --all writes while the store's cursor is open: small batches make it fetch more between writes.
    monkeypatch.setattr("evaluator.store.store.CURSOR_BATCH", 2)
    first = invoke("--all", "--mongo-uri", mongo.uri, "--db", db)
    assert first.exit_code == 0, first.output
    assert "6 turn(s), 5 to compute" in flat(first.output)
    client: MongoClient[dict[str, object]] = MongoClient(mongo.uri)
    try:
        raw = {
            (d["run_index"], d["turn_index"]): d for d in client[db]["responses"].find({"run_id": "run-a"})
        }
        copying = raw[(0, 1)]
        assert isinstance(copying["started_at"], datetime) and isinstance(copying["finished_at"], datetime)
        assert copying["metrics"] == text_metrics(COPYING, "Prompt 1", [EARLIER]).model_dump()
        assert isinstance(copying["metrics"]["words"], int) and raw[(1, 1)]["metrics"] is None  # type: ignore[index]
        assert client[db]["responses"].count_documents({"metrics.version": 1}) == 5
    finally:
        client.close()
    again = invoke("--all", "--mongo-uri", mongo.uri, "--db", db)
    assert again.exit_code == 0 and "0 to compute, 5 already current" in flat(again.output)
