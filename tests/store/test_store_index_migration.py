"""The evaluations' unique index gained `repeat` (`judge --repeat K`): a database made before
keeps the old (target, judge, rubric version) unique index, which would refuse repeat 1.
`ensure_indexes` drops it, found by key pattern (nx-27017 keeps its own index names), and
creates the new one. Judgements stored before `repeat` existed have no such field; their `_id`
is the repeat-0 id, so `_id` uniqueness still refuses a second repeat-0 judgement of them.

Run on each MongoDB-wire backend (the embedded nx-27017; a real MongoDB when
STORYBENCH_TEST_MONGO_URI is set) and on mongomock, the unit tests' backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import mongomock
import pytest
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from evaluator.records import EvaluationRecord
from evaluator.store import Store
from evaluator.store.store import INDEXES, RETIRED_UNIQUE_INDEXES
from tests.store.conftest import EXTERNAL_ENV, WIRE_BACKENDS
from tests.support.documents import make_evaluation, make_pairwise

Db = Database[dict[str, Any]]
OLD_FIELDS = ["target_id", "judge_model", "rubric_version"]
NEW_FIELDS = [*OLD_FIELDS, "repeat"]


@pytest.fixture(params=[*WIRE_BACKENDS, "memory"])
def raw_db(request: pytest.FixtureRequest) -> Iterator[Db]:
    """An empty database as pymongo sees it, with no StoryBench index yet."""
    if request.param == "embedded":
        yield request.getfixturevalue("embedded_db")
        return
    if request.param == "memory":
        yield mongomock.MongoClient(tz_aware=True)[f"memory_{uuid.uuid4().hex[:8]}"]
        return
    client: MongoClient[dict[str, Any]] = MongoClient(os.environ[EXTERNAL_ENV], tz_aware=True)
    name = f"sbtest_{uuid.uuid4().hex[:12]}"
    try:
        yield client[name]
        client.drop_database(name)
    finally:
        client.close()


def store_on(db: Db) -> Store:
    """The real Store on that database (never closed here: the fixture owns the client)."""
    return Store(db.client, db.name, uri="mongodb://test.invalid/")


def unique_keys(db: Db, collection: str) -> list[list[str]]:
    return [
        [field for field, _ in info["key"]]
        for info in db[collection].index_information().values()
        if info.get("unique")
    ]


def old_database(db: Db) -> EvaluationRecord:
    """What an earlier version left: its unique index, and a judgement without `repeat`."""
    (old,) = RETIRED_UNIQUE_INDEXES
    db.evaluations.create_index(list(old.keys), name=old.name, unique=True)
    rec = make_evaluation("k-g1:m:s:r0:t0")
    doc = rec.to_doc()
    del doc["repeat"]
    db.evaluations.insert_one(doc)
    return rec


def test_the_old_unique_index_is_replaced_and_repeats_can_be_stored(raw_db: Db) -> None:
    rec = old_database(raw_db)
    again = EvaluationRecord.model_validate(rec.to_doc() | {"_id": "", "repeat": 1})
    assert again.id == f"{rec.id}|r1"
    with pytest.raises(DuplicateKeyError):  # what the old index does to a repeat
        raw_db.evaluations.insert_one(again.to_doc())

    store = store_on(raw_db)
    store.ensure_indexes()
    assert OLD_FIELDS not in unique_keys(raw_db, "evaluations")
    assert NEW_FIELDS in unique_keys(raw_db, "evaluations")
    assert store.save_evaluation(again) is True
    store.ensure_indexes()  # idempotent on a migrated database
    assert unique_keys(raw_db, "evaluations").count(NEW_FIELDS) == 1

    stored = store.evaluations([rec.target_id])
    assert sorted((e.id, e.repeat) for e in stored) == [(rec.id, 0), (again.id, 1)]


def test_a_second_repeat_0_judgement_of_an_old_document_is_refused(raw_db: Db) -> None:
    rec = old_database(raw_db)
    store = store_on(raw_db)
    store.ensure_indexes()
    second = make_evaluation(rec.target_id)  # repeat 0: the same `_id` as the old document
    assert second.repeat == 0 and second.id == rec.id
    assert store.save_evaluation(second) is False
    assert raw_db.evaluations.count_documents({"target_id": rec.target_id}) == 1
    assert "repeat" not in (raw_db.evaluations.find_one({"_id": rec.id}) or {})


def test_a_fresh_database_gets_the_new_index_and_pairwise_stays_unique_by_id_only(raw_db: Db) -> None:
    store = store_on(raw_db)
    store.ensure_indexes()
    assert unique_keys(raw_db, "evaluations") == [NEW_FIELDS]
    names = {spec.name for spec in INDEXES}
    assert "evaluations_target_judge_rubric_repeat_unique" in names
    assert "evaluations_target_judge_rubric_unique" not in names
    first = make_pairwise()
    assert store.save_pairwise(first)
    repeat = make_pairwise().model_copy(update={"repeat": 1, "id": f"{first.id}|r1"})
    assert store.save_pairwise(repeat)
    assert unique_keys(raw_db, "pairwise") == []  # `_id` only (its index is not marked unique)
    assert raw_db.pairwise.count_documents({}) == 2
