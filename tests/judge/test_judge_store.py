"""`judge` against the real embedded nx-27017 (the judge endpoint is still respx): the stored
documents, the idempotent re-run and the export's judgement columns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import respx
from pymongo import MongoClient

from evaluator.judge.rubric import load_rubric
from evaluator.records import SCHEMA_VERSION, sequence_run_id
from evaluator.store import EmbeddedServer, export_responses, open_store
from evaluator.store.embedded import running_server
from tests.judge.conftest import (
    EXP,
    JUDGE_BASE,
    REPO,
    RUN_ID,
    good_judge,
    invoke,
    judge_args,
    models_yaml,
    no_storybench_server,
    seed,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with running_server(tmp_path_factory.mktemp("judge-mongo")) as server:
        yield server


def test_judgements_in_the_real_store_are_idempotent_and_exported(
    mongo: EmbeddedServer, tmp_path: Path
) -> None:
    db = "judge_" + tmp_path.name[-12:].replace("-", "_")
    with open_store(mongo.uri, db_name=db) as store:
        store.ensure_indexes()
        seed(store)
    version = load_rubric(REPO / "config" / "rubric.json").version_id
    # A free prompt and a paid answer: 0 is a price, so every judgement records its cost.
    models = models_yaml(tmp_path, price_input_per_mtok=0.0, price_output_per_mtok=5.0)
    args = [*judge_args(tmp_path, models=models), "--mongo-uri", mongo.uri, "--db", db]
    with respx.mock:
        no_storybench_server()
        route = respx.post(f"{JUDGE_BASE}/chat/completions").mock(side_effect=good_judge)
        first = invoke(*args)
        assert first.exit_code == 0, first.output
        assert route.call_count == 5
        again = invoke(*args)
        assert again.exit_code == 0 and route.call_count == 5

    client: MongoClient[dict[str, Any]] = MongoClient(mongo.uri, tz_aware=True)
    with client:
        docs = list(client[db]["evaluations"].find({}))
    assert len(docs) == 5
    for doc in docs:
        assert doc["_id"] == f"{doc['target_id']}|judge|{version}"
        assert doc["created_at"].tzinfo is not None and doc["schema_version"] == SCHEMA_VERSION
        assert doc["details"]["judge_endpoint"] == JUDGE_BASE and doc["run_id"] == RUN_ID
        assert doc["details"]["cost_usd"] == pytest.approx(40 * 5.0 / 1e6)  # 40 completion tokens
    assert {d["target_kind"] for d in docs} == {"response", "sequence"}

    with open_store(mongo.uri, db_name=db) as store:
        out = tmp_path / "export.jsonl"
        export_responses(store, RUN_ID, "jsonl", out)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        store.client.drop_database(db)
    by_id = {r["response_id"]: r for r in rows}
    judged = by_id[f"{EXP}:writer:lighthouse:r0:t2"]
    assert [e["rubric_version"] for e in judged["evaluations"]] == [version]
    assert judged["sequence_evaluations"][0]["scores"]["coherence"] == 7
    assert by_id[f"{EXP}:writer:lighthouse:r1:t1"]["evaluations"] == []  # the empty turn: not judged
    assert sequence_run_id(EXP, "writer", "lighthouse", 1) not in {d["target_id"] for d in docs}
