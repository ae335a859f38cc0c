"""The store contract: runs against the embedded nx-27017, the in-memory backend the unit tests
use (mongomock) and, when STORYBENCH_TEST_MONGO_URI is set, that MongoDB too (the `backend`
fixture), with the same assertions."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError

import evaluator.store as store_pkg
from evaluator.records import SCHEMA_VERSION, EvaluationRecord, ResponseRecord, RunRecord, experiment_key
from evaluator.store import INDEXES, Store, StoreError, StoreUnavailableError

ResponseFactory = Callable[..., ResponseRecord]
RunFactory = Callable[..., RunRecord]


def count(store: Store, **query: Any) -> int:
    return store.db["responses"].count_documents(query)


# -- idempotent turns ---------------------------------------------------------------------


def test_save_response_twice_stores_one_turn(store: Store, response_factory: ResponseFactory) -> None:
    first = response_factory(0)
    assert store.save_response(first) is True
    again = response_factory(0, text="a different answer from a duplicate write")
    assert store.save_response(again) is False
    assert count(store) == 1
    (doc,) = store.responses()
    assert doc.response_text == "Answer 0 of lighthouse"  # the final turn was left untouched
    assert doc.schema_version == SCHEMA_VERSION


def test_error_turn_is_replaced_by_its_retry_but_a_final_one_is_not(
    store: Store, response_factory: ResponseFactory
) -> None:
    assert store.save_response(response_factory(1, outcome="error")) is True
    assert store.save_response(response_factory(1, outcome="error")) is True  # retried, failed again
    assert store.save_response(response_factory(1, outcome="ok", text="retried")) is True
    assert store.save_response(response_factory(1, outcome="error")) is False
    (doc,) = store.responses()
    assert (doc.outcome, doc.response_text, doc.error) == ("ok", "retried", None)
    assert doc.params["extra_body"]["cache_prompt"] is True  # bools survive a replace
    assert isinstance(doc.finished_at, datetime) and doc.finished_at.tzinfo is not None


def test_unique_index_rejects_a_raw_duplicate(store: Store, response_factory: ResponseFactory) -> None:
    rec = response_factory(0)
    store.save_response(rec)
    same_turn_other_id = rec.to_doc() | {"_id": "not-the-deterministic-id"}
    with pytest.raises(DuplicateKeyError):
        store.db["responses"].insert_one(same_turn_other_id)
    with pytest.raises(DuplicateKeyError):
        store.db["responses"].insert_one(rec.to_doc())
    assert count(store) == 1


def test_concurrent_saves_of_one_turn_write_it_once(store: Store, response_factory: ResponseFactory) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def save() -> None:
        barrier.wait()
        results.append(store.save_response(response_factory(2)))

    threads = [threading.Thread(target=save) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]
    assert count(store) == 1


def test_save_response_rejects_unknown_outcome(store: Store, response_factory: ResponseFactory) -> None:
    rec = response_factory(0)
    rec.outcome = "done"  # type: ignore[assignment]  # past the model's own check, as a buggy caller could
    with pytest.raises(ValueError, match="unknown outcome"):
        store.save_response(rec)
    assert count(store) == 0


def test_ensure_indexes_is_idempotent_and_keeps_the_unique_keys(store: Store) -> None:
    store.ensure_indexes()
    store.ensure_indexes()
    for spec in INDEXES:
        found = {
            (tuple(k for k, _ in info["key"]), bool(info.get("unique")))
            for info in store.db[spec.collection].index_information().values()
        }
        # Field names and uniqueness only: nx-27017 keeps neither names nor directions.
        assert (tuple(k for k, _ in spec.keys), spec.unique) in found, spec.name


# -- resume and history -------------------------------------------------------------------


def test_iter_responses_streams_conversations_in_turn_order(
    store: Store, response_factory: ResponseFactory
) -> None:
    for turn in (3, 0, 4, 1, 2):
        store.save_response(response_factory(turn))
    store.save_response(response_factory(0, run_index=1))  # another run: after the first one
    store.save_response(response_factory(0, exp_key=experiment_key("0" * 32, 1)))  # not asked for
    key = response_factory(0).experiment_key
    turns = list(store.iter_responses(key))
    assert [(t.run_index, t.turn_index) for t in turns] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0)]
    assert [t.response_text for t in turns][:2] == ["Answer 0 of lighthouse", "Answer 1 of lighthouse"]


def test_done_turns_is_the_resume_query(store: Store, response_factory: ResponseFactory) -> None:
    key1 = response_factory(0).experiment_key
    key_other = experiment_key("0" * 32, 1)
    for turn in (2, 0, 1):
        store.save_response(response_factory(turn))
    store.save_response(response_factory(0, run_index=1, outcome="error"))
    store.save_response(response_factory(0, sequence="harbour"))
    store.save_response(response_factory(0, exp_key=key_other))  # not asked for
    done = store.done_turns([key1])
    assert set(done) == {
        (key1, "m1", "lighthouse", 0),
        (key1, "m1", "lighthouse", 1),
        (key1, "m1", "harbour", 0),
    }
    assert [d.turn_index for d in done[(key1, "m1", "lighthouse", 0)]] == [0, 1, 2]
    assert done[(key1, "m1", "lighthouse", 1)][0].outcome == "error"
    assert store.done_turns([]) == {}
    assert set(store.done_turns([key1, key_other])) >= {(key_other, "m1", "lighthouse", 0)}


def test_generations(store: Store, response_factory: ResponseFactory, run_factory: RunFactory) -> None:
    cfg = response_factory(0).config_hash
    assert (store.current_generation(cfg), store.next_generation(cfg)) == (1, 1)
    store.save_response(response_factory(0, generation=1))
    assert (store.current_generation(cfg), store.next_generation(cfg)) == (1, 2)
    store.save_response(response_factory(0, generation=2))
    assert (store.current_generation(cfg), store.next_generation(cfg)) == (2, 3)
    # `run --restart` registered generation 3 and stopped before its first turn: it still counts.
    exps = [
        {"model": "m1", "sequence": "lighthouse", "experiment_key": experiment_key(cfg, 3), "generation": 3}
    ]
    store.create_run(run_factory("run-restart", experiments=exps))
    assert (store.current_generation(cfg), store.next_generation(cfg)) == (3, 4)
    assert store.next_generation("f" * 32) == 1  # other configurations are independent


# -- runs -----------------------------------------------------------------------------------


def test_runs_create_update_list_and_get(store: Store, run_factory: RunFactory) -> None:
    t0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
    store.create_run(run_factory("20261128-120000-aaaaaa", started=t0))
    store.create_run(run_factory("20261128-130000-bbbbbb", started=t0 + timedelta(hours=1)))
    store.create_run(run_factory("20261128-130000-bbbccc", started=t0 + timedelta(hours=2)))
    with pytest.raises(StoreError, match="already exists"):
        store.create_run(run_factory("20261128-120000-aaaaaa"))

    end = t0 + timedelta(minutes=5)
    store.update_run(
        "20261128-120000-aaaaaa", status="completed", finished_at=end, counts={"ok": 3}, message=None
    )
    run = store.get_run("20261128-12")  # unique prefix
    assert run is not None
    assert (run.status, run.finished_at, run.counts) == ("completed", end, {"ok": 3})
    assert run.started_at.tzinfo is not None  # datetimes come back tz-aware (UTC)
    assert run.config_snapshot["models"][0]["stream"] is True  # bools set at insert survive
    assert run.experiment_keys == [e.experiment_key for e in run.experiments]

    with pytest.raises(StoreError, match="matches several runs"):
        store.get_run("20261128-130000-bbb")
    assert store.get_run("nope") is None
    assert [r.id for r in store.list_runs()] == [
        "20261128-130000-bbbccc",
        "20261128-130000-bbbbbb",
        "20261128-120000-aaaaaa",
    ]
    assert len(store.list_runs(limit=1)) == 1

    store.update_run("20261128-120000-aaaaaa", config_snapshot={"dry": True, "at": end}, message="x")
    run = store.get_run("20261128-120000-aaaaaa")
    assert run is not None
    assert run.config_snapshot == {"dry": True, "at": end}  # types survive an update
    assert (run.finished_at, run.message, run.revision) == (end, "x", 2)
    with pytest.raises(TypeError, match="not RunRecord fields"):
        store.update_run("20261128-120000-aaaaaa", progress=3)
    with pytest.raises(ValueError):
        store.update_run("20261128-120000-aaaaaa", status="done")
    with pytest.raises(StoreError, match="no run"):
        store.update_run("missing", status="failed")


def test_responses_by_run_and_by_plan(
    store: Store, response_factory: ResponseFactory, run_factory: RunFactory
) -> None:
    store.create_run(run_factory("run-a"))
    store.create_run(run_factory("run-b"))
    store.save_response(response_factory(0, run_id="run-a"))  # interrupted run wrote turn 0
    store.save_response(response_factory(1, run_id="run-b"))  # the resume wrote turn 1
    assert [d.turn_index for d in store.responses(run_id="run-b")] == [1]
    assert [d.turn_index for d in store.run_responses("run-b")] == [0, 1]
    assert len(store.responses()) == 2
    assert store.responses(experiment_keys=["unknown-g1"]) == []


# -- evaluations ------------------------------------------------------------------------------


def test_evaluations_are_unique_per_target_judge_rubric(
    store: Store, evaluation_factory: Callable[..., EvaluationRecord]
) -> None:
    assert store.save_evaluation(evaluation_factory("t1")) is True
    assert store.save_evaluation(evaluation_factory("t1")) is False
    assert store.save_evaluation(evaluation_factory("t1", rubric="v2")) is True
    assert store.save_evaluation(evaluation_factory("t1", judge="judge-2")) is True
    assert store.save_evaluation(evaluation_factory("t2")) is True
    with pytest.raises(DuplicateKeyError):
        store.db["evaluations"].insert_one(evaluation_factory("t1").to_doc() | {"_id": "other"})
    found = store.evaluations(["t1"])
    assert [(e.judge_model, e.rubric_version) for e in found] == [
        ("judge-1", "v1"),
        ("judge-1", "v2"),
        ("judge-2", "v1"),
    ]
    assert store.evaluations([]) == []


def test_ping_answers_while_the_database_answers(store: Store, backend: str) -> None:
    store.ping()
    if backend == "memory":
        return  # mongomock has no connection to lose
    gone = "mongodb://127.0.0.1:9/"  # nothing listens there: a server that went away
    lost = Store(MongoClient(gone, serverSelectionTimeoutMS=300), store.db_name, uri=gone)
    with lost, pytest.raises(StoreUnavailableError, match="127.0.0.1:9"):
        lost.ping()


def test_public_api_is_declared() -> None:
    for name in (
        "Store",
        "StoreError",
        "open_store",
        "export_responses",
        "format_runs_table",
        "format_run_detail",
    ):
        assert name in store_pkg.__all__
    assert all(hasattr(store_pkg, name) for name in store_pkg.__all__)
