"""Store fixtures: a real embedded nx-27017 per session, the same Store over mongomock (the
in-memory backend the runner and judge unit tests use), and a real MongoDB when
STORYBENCH_TEST_MONGO_URI is set: the contract suite runs against each.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from evaluator.records import EvaluationRecord, ResponseRecord, RunRecord
from evaluator.store import Store
from evaluator.store.embedded import EmbeddedServer, running_server
from tests.support.documents import T0, make_evaluation, make_response, make_run
from tests.support.isolation import _no_user_database, store_on  # noqa: F401  (autouse fixture)
from tests.support.memory_store import memory_store

__all__ = ["T0", "make_evaluation", "make_response", "make_run"]  # re-exported for other folders

EXTERNAL_ENV = "STORYBENCH_TEST_MONGO_URI"
# "memory": the same Store over mongomock (tests/support/memory_store.py), which unit tests of
# the runner and the judge use: the contract suite keeps it honest.
WIRE_BACKENDS = ["embedded"] + (["external"] if os.environ.get(EXTERNAL_ENV) else [])
BACKENDS = [*WIRE_BACKENDS, "memory"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)  # they start nx-27017


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One nx-27017 for the session: fresh data dir, free port, its own pid and log file."""
    with running_server(tmp_path_factory.mktemp("nx-27017")) as server:
        yield server


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def mongo_uri(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "external":
        return os.environ[EXTERNAL_ENV]
    if backend == "memory":
        pytest.skip("needs a MongoDB-wire server; the memory backend has no URI")
    server: EmbeddedServer = request.getfixturevalue("embedded_server")
    return server.uri


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    """A Store on a database of its own (dropped afterwards), indexes created."""
    if backend == "memory":
        with memory_store() as s:
            yield s
        return
    mongo_uri = request.getfixturevalue("mongo_uri")
    with store_on(mongo_uri, f"sbtest_{uuid.uuid4().hex[:12]}") as s:
        yield s


@pytest.fixture
def embedded_db(embedded_server: EmbeddedServer) -> Iterator[Database[dict[str, Any]]]:
    """A raw pymongo database on the embedded server (for the known-gap checks)."""
    client: MongoClient[dict[str, Any]] = MongoClient(
        embedded_server.uri, tz_aware=True, serverSelectionTimeoutMS=3000
    )
    name = f"gap_{uuid.uuid4().hex[:12]}"
    try:
        yield client[name]
        client.drop_database(name)
    finally:
        client.close()


@pytest.fixture
def response_factory() -> Callable[..., ResponseRecord]:
    return make_response


@pytest.fixture
def run_factory() -> Callable[..., RunRecord]:
    return make_run


@pytest.fixture
def evaluation_factory() -> Callable[..., EvaluationRecord]:
    return make_evaluation
