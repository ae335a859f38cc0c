"""Assertions on stored turns shared by the fault tests: complete, once, and the right history.

They look at the documents as the database holds them (`stored_turns`), not through the typed
reads: "half-written" is about what is physically stored.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from evaluator.records import OUTCOMES, SCHEMA_VERSION, ResponseRecord
from evaluator.store import Store
from tests.reliability.standin import expected_answer

RECORD_FIELDS = frozenset(ResponseRecord.field_names())
TurnKey = tuple[str, str, str, int, int]


def stored_turns(store: Store) -> list[dict[str, Any]]:
    """Every `responses` document as stored, in conversation order."""
    order = [(f, 1) for f in ("model", "sequence", "run_index", "turn_index", "experiment_key")]
    return list(store.db["responses"].find({}).sort(order))


def turn_key(doc: dict[str, Any]) -> TurnKey:
    return (doc["experiment_key"], doc["model"], doc["sequence"], doc["run_index"], doc["turn_index"])


def assert_whole(doc: dict[str, Any]) -> None:
    """A stored turn is complete: every field of the schema, a known outcome, an explanation."""
    missing = RECORD_FIELDS - set(doc)
    assert not missing, f"{doc['_id']}: half-written, missing {sorted(missing)}"
    assert doc["schema_version"] == SCHEMA_VERSION
    assert doc["outcome"] in OUTCOMES
    if doc["outcome"] == "ok":
        assert doc["response_text"].strip() and doc["finish_reason"], doc["_id"]
        assert doc["error"] is None
    else:
        assert doc["error"] and doc["error"].strip(), f"{doc['_id']}: {doc['outcome']} without a reason"


def duplicates(docs: list[dict[str, Any]]) -> int:
    """Turns stored more than once (same experiment, model, sequence, run and turn)."""
    return sum(n - 1 for n in Counter(turn_key(d) for d in docs).values() if n > 1)


def history_mismatches(docs: list[dict[str, Any]], systems: Mapping[str, str | None]) -> list[str]:
    """Turns whose stored answer is not what the stand-in answers to the full history rebuilt
    from the stored turns before it (proves the history sent and the answer stored)."""
    bad: list[str] = []
    conversations: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    for doc in docs:
        conversations.setdefault(turn_key(doc)[:4], []).append(doc)
    for turns in conversations.values():
        turns.sort(key=lambda d: d["turn_index"])
        system = systems.get(turns[0]["sequence"])
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        for index, doc in enumerate(turns):
            if doc["turn_index"] != index:
                bad.append(f"{doc['_id']}: stored after a gap (turn {index} is missing)")
                break
            messages.append({"role": "user", "content": doc["prompt"]})
            if doc["messages_sent"] != len(messages):
                bad.append(f"{doc['_id']}: sent {doc['messages_sent']} messages, history has {len(messages)}")
            if doc["outcome"] != "ok":
                break
            if doc["response_raw"] != expected_answer(messages):
                bad.append(f"{doc['_id']}: the stored answer is not the answer to its history")
            messages.append({"role": "assistant", "content": doc["response_text"]})
    return bad
