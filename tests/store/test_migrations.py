"""Documents written by the previous schema version read back upgraded; newer ones are refused."""

from __future__ import annotations

from typing import Any

import pytest

from evaluator.records import SCHEMA_VERSION, EvaluationRecord
from evaluator.store import Store, StoreError, upgrade
from evaluator.store.migrations import FIRST_VERSION, MIGRATIONS
from tests.support.documents import make_evaluation, make_response, make_run


def version_1(doc: dict[str, Any], *, drop: tuple[str, ...]) -> dict[str, Any]:
    """`doc` as schema version 1 wrote it: without the fields version 2 added."""
    old = {k: v for k, v in doc.items() if k not in drop}
    old["schema_version"] = 1
    return old


def test_a_version_1_run_reads_upgraded(store: Store) -> None:
    current = make_run("run-v1")
    old = version_1(current.to_doc(), drop=("experiment_keys", "experiment_config_hashes", "revision"))
    for entry in old["experiments"]:
        del entry["generation"]
    store.db["runs"].insert_one(old)
    back = store.get_run("run-v1")
    assert back is not None
    assert back.schema_version == SCHEMA_VERSION
    assert back.experiment_keys == current.experiment_keys
    assert [e.generation for e in back.experiments] == [1]
    assert back == current
    # Reading never rewrites: the stored document is still version 1.
    assert store.db["runs"].find_one({"_id": "run-v1"})["schema_version"] == 1  # type: ignore[index]


def test_a_version_1_run_is_written_back_as_the_current_version(store: Store) -> None:
    old = version_1(make_run("run-v1w").to_doc(), drop=("experiment_keys", "revision"))
    store.db["runs"].insert_one(old)
    store.update_run("run-v1w", status="completed")
    raw = store.db["runs"].find_one({"_id": "run-v1w"})
    assert raw is not None and raw["schema_version"] == SCHEMA_VERSION and raw["experiment_keys"]


def test_a_version_1_turn_reads_upgraded(store: Store) -> None:
    current = make_response(1)
    store.db["responses"].insert_one(version_1(current.to_doc(), drop=("server_timings", "cost_usd")))
    (back,) = store.responses()
    assert back.schema_version == SCHEMA_VERSION
    assert back.server_timings is None and back.cost_usd is None
    assert back == current.model_copy(update={"server_timings": None})


def test_a_document_without_a_schema_version_is_version_1(store: Store) -> None:
    current = make_evaluation("t-0")
    old = {k: v for k, v in current.to_doc().items() if k not in ("details", "schema_version")}
    store.db["evaluations"].insert_one(old)
    (back,) = store.evaluations(["t-0"])
    assert isinstance(back, EvaluationRecord)
    assert back.details == {} and back == current


def test_a_document_from_a_newer_version_is_refused(store: Store) -> None:
    doc = make_evaluation("t-9").to_doc() | {"schema_version": SCHEMA_VERSION + 1}
    store.db["evaluations"].insert_one(doc)
    with pytest.raises(StoreError, match="newer StoryBench.*upgrade StoryBench"):
        store.evaluations(["t-9"])


def test_a_malformed_document_names_itself_and_the_field(store: Store) -> None:
    doc = make_response(0).to_doc() | {"turn_index": "first"}
    store.db["responses"].insert_one(doc)
    with pytest.raises(StoreError, match=r"responses document '.*:t0' does not match the schema: turn_index"):
        store.responses()


def test_every_version_step_has_a_migration_entry() -> None:
    """Each collection lists a step (possibly a no-op it states) for every version below the current."""
    for collection, steps in MIGRATIONS.items():
        assert sorted(steps) == list(range(FIRST_VERSION, SCHEMA_VERSION)), collection


def test_upgrade_leaves_a_current_document_alone() -> None:
    doc = make_response(0).to_doc()
    assert upgrade("responses", dict(doc)) == doc
