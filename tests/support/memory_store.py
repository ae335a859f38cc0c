"""A real `Store` over an in-memory MongoDB (mongomock): for unit tests of code that writes
and reads documents, without starting a database server.

It is the same Store class with the same queries; only the backend differs, and the store's
contract suite (tests/store/test_store_contract.py) runs against it too, so it cannot drift
from the real store the way hand-written fakes did.
"""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

import mongomock

from evaluator.store import Store

MEMORY_URI = "mongodb://memory.invalid/"  # shown in messages only; nothing connects to it
S = TypeVar("S", bound=Store)


def memory_store(kind: type[S] = Store) -> S:  # type: ignore[assignment]
    """A fresh Store (or subclass) on its own in-memory database, indexes created."""
    client: Any = mongomock.MongoClient(tz_aware=True)
    store = kind(client, f"memory_{uuid.uuid4().hex[:8]}", uri=MEMORY_URI)
    store.ensure_indexes()
    return store
