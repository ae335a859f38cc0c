"""What every store-touching test directory shares: never the developer's own database, and a
Store on a database of its own that is dropped afterwards.

A conftest imports `_no_user_database` (autouse: it applies to that directory's tests) and
builds its `store` fixture with `store_on`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from evaluator.store import Store, open_store
from evaluator.store.connect import URI_ENV
from evaluator.store.embedded import DATA_DIR_ENV


@pytest.fixture(autouse=True)
def _no_user_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never touch the developer's database: no env URI, data dir under tmp_path."""
    monkeypatch.delenv(URI_ENV, raising=False)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "default-data-dir"))


@contextmanager
def store_on(uri: str, db_name: str) -> Iterator[Store]:
    """A Store on `db_name` at `uri`, indexes created, the database dropped afterwards."""
    with open_store(uri, db_name=db_name) as s:
        s.ensure_indexes()
        yield s
        s.client.drop_database(db_name)
