"""Workers fixtures: a real embedded nx-27017 shared by the session, a Store on a database of
its own per test (or the in-memory one), and what the worker processes are started with.

Nothing touches the developer's own database (no STORYBENCH_MONGO_URI, data dir under tmp_path).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from evaluator.store import Store, open_store
from evaluator.store.connect import URI_ENV
from evaluator.store.embedded import DATA_DIR_ENV, EmbeddedServer, running_server
from tests.support.memory_store import memory_store


@pytest.fixture(autouse=True)
def _no_user_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(URI_ENV, raising=False)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "default-data-dir"))


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
    with open_store(server.uri, db_name=db_name) as s:
        s.ensure_indexes()
        yield s
        s.client.drop_database(db_name)
