"""Each stored document kind reads back from the store exactly as it was written (typed both
ways), on every backend of the contract suite."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from evaluator.records import (
    DOCUMENT_KINDS,
    SCHEMA_VERSION,
    ClaimRecord,
    EvaluationRecord,
    PairwiseRecord,
    ResponseRecord,
    RunRecord,
)
from evaluator.store import Store, schema_doc
from tests.support.documents import make_evaluation, make_pairwise, make_response, make_run, replaced


def test_run_round_trip(store: Store) -> None:
    run = make_run("run-rt").model_copy(
        update={
            "server_metadata": {"m1": {"sha256": "ab" * 32, "n_ctx": 2048}},
            "host": "h1",
            "pid": 4242,
            "heartbeat_at": datetime(2026, 12, 1, 8, 30, 1, 123456, tzinfo=timezone.utc),
            "heartbeat_s": 30.0,
        }
    )
    run = RunRecord.model_validate(run.model_dump())  # validators run (milliseconds, derived lists)
    store.create_run(run)
    back = store.get_run("run-rt")
    assert isinstance(back, RunRecord)
    assert back == run
    assert back.heartbeat_at == datetime(2026, 12, 1, 8, 30, 1, 123000, tzinfo=timezone.utc)
    assert back.experiment_keys == [e.experiment_key for e in run.experiments]


def test_run_update_round_trip(store: Store) -> None:
    store.create_run(make_run("run-up"))
    finished = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
    store.update_run("run-up", status="completed", finished_at=finished, counts={"ok": 3}, message=None)
    back = store.get_run("run-up")
    assert back is not None
    expected = make_run("run-up").model_copy(
        update={"status": "completed", "finished_at": finished, "counts": {"ok": 3}, "revision": 1}
    )
    assert back == expected


def test_response_round_trip(store: Store) -> None:
    rec = make_response(2, outcome="ok").model_copy(update={"cost_usd": 0.0, "seed": None})
    assert store.save_response(rec)
    (back,) = store.responses()
    assert isinstance(back, ResponseRecord)
    assert back == rec
    assert back.cost_usd == 0.0  # a price of 0 is a cost, not "unknown"


def test_response_without_text_reads_blank_texts(store: Store) -> None:
    rec = make_response(0)
    store.save_response(rec)
    (summary,) = store.iter_responses(rec.experiment_key, with_text=False)
    assert (summary.prompt, summary.response_text, summary.response_raw) == ("", "", "")
    assert summary.model_copy(update={f: getattr(rec, f) for f in ResponseRecord.TEXT_FIELDS}) == rec


def test_evaluation_round_trip(store: Store) -> None:
    rec = make_evaluation("t-1", kind="sequence").model_copy(
        update={"details": {"judge_model_id": "smollm2", "attempts": 2, "trimmed_turns": 1}, "run_id": "r"}
    )
    assert store.save_evaluation(rec)
    (back,) = store.evaluations(["t-1"])
    assert isinstance(back, EvaluationRecord)
    assert back == rec


def test_pairwise_round_trip_and_retry_of_a_failed_one(store: Store) -> None:
    failed = make_pairwise(status="failed", verdict=None, score_first=None, error="judge gave no JSON")
    assert store.save_pairwise(failed)
    ok = make_pairwise().model_copy(update={"details": {"attempts": 2, "cost_usd": None}})
    assert ok.id == failed.id  # the same comparison: a re-run replaces the failure
    assert store.save_pairwise(ok)
    assert not store.save_pairwise(make_pairwise(score_first=0.0, verdict="B much better"))  # kept
    (back,) = store.pairwise("judge-1", "v1")
    assert isinstance(back, PairwiseRecord)
    assert back == ok
    assert list(store.pairwise("other-judge")) == []
    (bare,) = store.pairwise(with_text=False)
    assert (bare.rationale, bare.details) == ("", ok.details)
    assert bare.pair_key == make_pairwise(first=ok.second_conversation, second=ok.first_conversation).pair_key


def test_model_responses_reads_across_runs(store: Store) -> None:
    store.save_response(make_response(0))
    store.save_response(replaced(make_response(1), run_id="another-run", _id=""))
    got = list(store.model_responses([make_response(0).model]))
    assert [r.turn_index for r in got] == [0, 1]
    assert list(store.model_responses(["nobody"])) == []


def test_claim_round_trip(store: Store) -> None:
    now = datetime(2026, 12, 1, 8, 30, 1, 123456, tzinfo=timezone.utc)
    mine = store.claim_work(
        "conversation:k", "conversation", owner="run-1", host="h1", pid=42,
        owner_started_at=now, now=now, lease_s=90.0,
    )  # fmt: skip
    assert isinstance(mine, ClaimRecord)
    back = store.get_claim("conversation:k")
    assert back == mine and isinstance(back.expires_at, datetime)  # a date, never a string
    assert back.expires_at == datetime(2026, 12, 1, 8, 31, 31, 123000, tzinfo=timezone.utc)
    assert store.claims_of("run-1") == [mine]


def test_every_document_kind_has_a_round_trip_test() -> None:
    tested = {RunRecord, ResponseRecord, EvaluationRecord, PairwiseRecord, ClaimRecord}
    assert set(DOCUMENT_KINDS) == tested, "add a round-trip test for the new document kind"


@pytest.mark.parametrize("kind", DOCUMENT_KINDS, ids=lambda k: k.__name__)
def test_every_field_is_documented(kind: type) -> None:
    """Each field's docstring is the schema's documentation (docs/store.md points to it)."""
    undocumented = [name for name, f in kind.model_fields.items() if not f.description]
    assert undocumented == []


def test_documents_are_written_with_the_current_schema_version(store: Store) -> None:
    store.save_response(make_response(0))
    (raw,) = store.db["responses"].find({})
    assert raw["schema_version"] == SCHEMA_VERSION


def test_docs_store_md_shows_the_generated_schema_tables() -> None:
    """docs/store.md's field tables come from the models' docstrings; regenerate them with
    `python -m evaluator.store.schema_doc` after changing a field."""
    text = schema_doc.DOC_PATH.read_text(encoding="utf-8")
    assert schema_doc.embedded(text) == schema_doc.tables()
