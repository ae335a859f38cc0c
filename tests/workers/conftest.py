"""Workers fixtures: a real embedded nx-27017 shared by the session, a Store on a database of
its own per test (or the in-memory one), and what the worker processes are started with.

Nothing touches the developer's own database (no STORYBENCH_MONGO_URI, data dir under tmp_path).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from evaluator.store import Store
from evaluator.store.embedded import EmbeddedServer, running_server
from tests.support.isolation import _no_user_database, store_on  # noqa: F401  (autouse fixture)
from tests.support.memory_store import memory_store


@pytest.fixture(scope="session")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One embedded nx-27017 for the session: the store every worker of a test shares."""
    with running_server(tmp_path_factory.mktemp("workers-mongo")) as server:
        yield server


@pytest.fixture
def db_name() -> str:
    return f"wk_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["embedded", "memory"])
def store(request: pytest.FixtureRequest, db_name: str) -> Iterator[Store]:
    """A Store on nx-27017 (a database of its own, dropped afterwards) or on mongomock."""
    if request.param == "memory":
        with memory_store() as s:
            yield s
        return
    server: EmbeddedServer = request.getfixturevalue("mongo")
    with store_on(server.uri, db_name) as s:
        yield s
