"""nx-27017 0.8.1 behaviours that differ from MongoDB, asserted as they are today.

Only against the embedded server. If one of these fails after an upgrade, the gap was fixed
(or changed): update docs/store.md ("Known gaps") and this file, and decide whether the
store's workaround can go.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient, ReturnDocument
from pymongo.database import Database

from evaluator.store import EmbeddedServer

Db = Database[dict[str, Any]]


def test_filter_on_objectid_field_other_than_id_finds_nothing(embedded_db: Db) -> None:
    ref = ObjectId()
    embedded_db.t.insert_one({"_id": "a", "ref": ref})
    assert embedded_db.t.find_one({"ref": ref}) is None  # MongoDB: finds "a"
    assert embedded_db.t.find_one({"ref": {"$in": [ref]}}) is not None  # $in works


def test_count_and_match_on_objectid_id_find_nothing(embedded_db: Db) -> None:
    oid = embedded_db.t.insert_one({"v": 1}).inserted_id
    assert embedded_db.t.find_one({"_id": oid}) is not None
    assert embedded_db.t.count_documents({"_id": oid}) == 0  # MongoDB: 1
    assert list(embedded_db.t.aggregate([{"$match": {"_id": oid}}])) == []  # MongoDB: 1 doc


def test_create_index_stores_its_own_name(embedded_db: Db) -> None:
    returned = embedded_db.t.create_index([("a", 1), ("b", 1)], unique=True, name="my_name")
    assert returned == "my_name"
    names = set(embedded_db.t.index_information())
    assert "my_name" not in names  # MongoDB: stored as my_name
    assert "idx_t_a_b" in names


def test_index_directions_are_not_kept(embedded_db: Db) -> None:
    embedded_db.t.create_index([("a", 1), ("b", -1)], name="a_1_b_-1")
    keys = [info["key"] for info in embedded_db.t.index_information().values()]
    assert [("a", 1), ("b", 1)] in keys  # MongoDB: [("a", 1), ("b", -1)]


def test_bool_set_with_dollar_set_comes_back_as_int(embedded_db: Db) -> None:
    embedded_db.t.insert_one({"_id": "x", "at_insert": True})
    embedded_db.t.update_one({"_id": "x"}, {"$set": {"flag": True, "sub.flag": True, "doc": {"flag": True}}})
    doc = embedded_db.t.find_one({"_id": "x"})
    assert doc is not None
    assert doc["at_insert"] is True
    assert doc["flag"] == 1 and doc["flag"] is not True  # MongoDB: True
    assert doc["sub"]["flag"] == 1 and doc["sub"]["flag"] is not True
    assert doc["doc"]["flag"] is True  # a bool inside a whole sub-document survives


def test_transactions_are_not_isolated(embedded_server: EmbeddedServer, embedded_db: Db) -> None:
    other: MongoClient[dict[str, Any]] = MongoClient(embedded_server.uri, serverSelectionTimeoutMS=3000)
    try:
        other_coll = other[embedded_db.name].t
        with embedded_db.client.start_session() as session:
            session.start_transaction()
            embedded_db.t.insert_one({"_id": "in_txn"}, session=session)
            other_coll.insert_one({"_id": "other_client"})
            assert other_coll.find_one({"_id": "in_txn"}) is not None  # MongoDB: not visible yet
            session.abort_transaction()
        assert embedded_db.t.find_one({"_id": "other_client"}) is None  # MongoDB: kept
    finally:
        other.close()


def test_find_one_and_replace_turns_objectid_id_into_string(embedded_db: Db) -> None:
    oid = embedded_db.t.insert_one({"v": 1}).inserted_id
    after = embedded_db.t.find_one_and_replace({"_id": oid}, {"v": 2}, return_document=ReturnDocument.AFTER)
    assert after is not None and after["_id"] == str(oid)  # MongoDB: the ObjectId
    stored = embedded_db.t.find_one({"v": 2})
    assert stored is not None and isinstance(stored["_id"], str)  # MongoDB: still an ObjectId


def test_server_info_has_no_version(embedded_db: Db) -> None:
    info = embedded_db.client.server_info()
    assert "version" not in info  # MongoDB: "7.0.x" etc.
    assert embedded_db.client.admin.command("ping")["ok"] == 1  # what the store uses instead


# -- found while building the store (not in shared/README.md) --------------------------------


def test_datetime_set_with_dollar_set_comes_back_as_string(embedded_db: Db) -> None:
    when = datetime(2026, 11, 28, 12, 5, tzinfo=timezone.utc)
    embedded_db.t.insert_one({"_id": "x", "at_insert": when, "finished_at": None})
    embedded_db.t.update_one({"_id": "x"}, {"$set": {"finished_at": when, "sub.at": when}})
    doc = embedded_db.t.find_one({"_id": "x"})
    assert doc is not None
    assert doc["at_insert"] == when
    assert doc["finished_at"] == "2026-11-28 12:05:00"  # MongoDB: the datetime
    assert doc["sub"]["at"] == "2026-11-28 12:05:00"
    # An ObjectId anywhere in the same $set takes another code path that keeps every type.
    embedded_db.t.update_one({"_id": "x"}, {"$set": {"finished_at": when, "o": ObjectId()}})
    doc = embedded_db.t.find_one({"_id": "x"})
    assert doc is not None and doc["finished_at"] == when


def test_equality_on_an_indexed_array_field_finds_nothing(embedded_db: Db) -> None:
    embedded_db.t.insert_one({"_id": "r", "keys": ["h1", "h2"]})
    assert [d["_id"] for d in embedded_db.t.find({"keys": "h2"})] == ["r"]
    embedded_db.t.create_index([("keys", 1)], name="keys_1")
    assert list(embedded_db.t.find({"keys": "h2"})) == []  # MongoDB: ["r"]
    assert [d["_id"] for d in embedded_db.t.find({"keys": {"$in": ["h2"]}})] == ["r"]


def test_no_authentication(embedded_server: EmbeddedServer) -> None:
    uri = embedded_server.uri.replace("mongodb://", "mongodb://u:p@")
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=2000)
    try:
        # saslStart is answered without a payload; pymongo's SCRAM code raises a bare KeyError.
        with pytest.raises(KeyError, match="payload"):
            client.admin.command("ping")
    finally:
        client.close()


def test_query_operators_do_not_look_inside_arrays(embedded_db: Db) -> None:
    embedded_db.t.insert_one({"_id": "r", "keys": ["abc-g1", "zzz-g1"], "exps": [{"k": "abc-g3", "g": 3}]})

    def ids(query: dict[str, Any]) -> list[str]:
        return [d["_id"] for d in embedded_db.t.find(query)]

    assert ids({"keys": "abc-g1"}) == ["r"]  # equality on an element works
    assert ids({"keys": {"$in": ["zzz-g1"]}}) == ["r"]  # $in on a plain array works
    assert ids({"exps.k": "abc-g3"}) == ["r"]  # dotted equality into sub-documents works
    assert ids({"keys": {"$regex": "^abc"}}) == []  # MongoDB: ["r"]
    assert ids({"exps.k": {"$in": ["abc-g3"]}}) == []  # MongoDB: ["r"]
    assert ids({"exps.g": {"$gte": 2}}) == []  # MongoDB: ["r"]


def test_datetimes_round_trip_to_the_millisecond(embedded_server: EmbeddedServer, embedded_db: Db) -> None:
    # Like MongoDB (BSON dates are UTC milliseconds; pymongo returns naive datetimes unless
    # tz_aware=True, which the store sets). Kept because every stored time relies on it.
    when = datetime(2026, 1, 1, 12, 0, 0, 456789, tzinfo=timezone.utc)
    embedded_db.t.insert_one({"_id": "d", "at": when})
    got = embedded_db.t.find_one({"_id": "d"})
    assert got is not None and got["at"] == when.replace(microsecond=456000)
    naive: MongoClient[dict[str, Any]] = MongoClient(embedded_server.uri)
    try:
        raw = naive[embedded_db.name].t.find_one({"_id": "d"})
        assert raw is not None and raw["at"].tzinfo is None
    finally:
        naive.close()
