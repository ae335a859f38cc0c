"""A real `Store` over an in-memory MongoDB (mongomock): for unit tests of code that writes
and reads documents, without starting a database server.

It is the same Store class with the same queries; only the backend differs, and the store's
contract suite (tests/store/test_store_contract.py) runs against it too, so it cannot drift
from the real store the way hand-written fakes did.
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import mongomock
from mongomock.collection import Collection

from evaluator.store import Store

# mongomock's insert checks that the _id is free, then stores, with Python in between and no
# lock: two threads inserting one _id can both succeed (seen once in CI:
# test_concurrent_saves_of_one_turn_write_it_once[memory]), where a real server, nx-27017
# included, makes that one operation. Its writes, and the reads that walk its documents, go one
# at a time here, as on a server.
_LOCK = threading.RLock()
_SERIALIZED = (
    "insert_one", "insert_many", "replace_one", "update_one", "update_many", "delete_one",
    "delete_many", "find_one_and_update", "bulk_write", "count_documents", "find_one",
)  # fmt: skip


def _one_at_a_time(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return method(*args, **kwargs)

    locked.__dict__["_serialized"] = True
    return locked


for _name in _SERIALIZED:
    if not getattr(getattr(Collection, _name), "_serialized", False):
        setattr(Collection, _name, _one_at_a_time(getattr(Collection, _name)))

MEMORY_URI = "mongodb://memory.invalid/"  # shown in messages only; nothing connects to it
S = TypeVar("S", bound=Store)


def memory_store(kind: type[S] = Store) -> S:  # type: ignore[assignment]
    """A fresh Store (or subclass) on its own in-memory database, indexes created."""
    client: Any = mongomock.MongoClient(tz_aware=True)
    store = kind(client, f"memory_{uuid.uuid4().hex[:8]}", uri=MEMORY_URI)
    store.ensure_indexes()
    return store
