"""Viewer fixtures: the app over a seeded in-memory store, and a test client on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from evaluator.store import Store
from evaluator.viewer.app import create_app
from tests.support.memory_store import memory_store
from tests.viewer.seed import TEST_WAIT_S, Seeded, seed


@pytest.fixture
def store() -> Store:
    return memory_store()


@pytest.fixture
def seeded(store: Store) -> Seeded:
    return seed(store, live=True)


@pytest.fixture
def app(store: Store, seeded: Seeded) -> FastAPI:
    return create_app(lambda: store, wait_s=TEST_WAIT_S)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c
