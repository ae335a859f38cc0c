"""Connecting: URI selection, fast clear failures, and a database that dies mid-run."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from evaluator.records import ResponseRecord
from evaluator.store import StoreError, StoreUnavailableError, open_store, redact_uri
from evaluator.store.connect import URI_ENV
from evaluator.store.embedded import running_server

FAST = 6.0  # seconds: "within a few seconds", with slack for a busy machine


def closed_port_uri(port: int, user: str = "") -> str:
    return f"mongodb://{user}127.0.0.1:{port}/"


def test_unreachable_database_fails_fast_with_uri_cause_and_fix(free_port: int) -> None:
    uri = closed_port_uri(free_port, "reader:hunter2@")
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as info:
        open_store(uri)
    assert time.monotonic() - started < FAST
    message = str(info.value)
    assert "hunter2" not in message
    assert redact_uri(uri) in message and "reader:***@" in message
    assert "refused" in message.lower()  # the cause
    assert "Fix:" in message


def test_env_uri_is_used_when_no_argument(monkeypatch: pytest.MonkeyPatch, free_port: int) -> None:
    uri = closed_port_uri(free_port)
    monkeypatch.setenv(URI_ENV, uri)
    with pytest.raises(StoreUnavailableError, match=URI_ENV) as info:
        open_store()
    assert uri.rstrip("/") in str(info.value)


def test_not_a_mongodb_uri() -> None:
    with pytest.raises(StoreError, match="not a MongoDB URI"):
        open_store("localhost:27017")


def test_bad_credentials_fail_fast(mongo_uri: str, backend: str) -> None:
    if backend == "embedded":
        # nx-27017 has no authentication: any credentials are refused with a clear message.
        uri = mongo_uri.replace("mongodb://", "mongodb://storybench:wrong-password@")
        expected = "does not support authentication"
    else:
        if "@" not in mongo_uri:
            pytest.skip("STORYBENCH_TEST_MONGO_URI has no credentials to falsify")
        scheme, rest = mongo_uri.split("://", 1)
        user = rest.split("@", 1)[0].split(":", 1)[0]
        uri = f"{scheme}://{user}:wrong-password@{rest.split('@', 1)[1]}"
        expected = "refused the credentials"
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match=expected) as info:
        open_store(uri)
    assert time.monotonic() - started < FAST
    assert "wrong-password" not in str(info.value)


def test_redact_uri_hides_secrets() -> None:
    assert redact_uri("mongodb+srv://u:p%40ss@cluster0.example.net/db?retryWrites=true") == (
        "mongodb+srv://u:***@cluster0.example.net/db?retryWrites=true"
    )
    assert redact_uri("mongodb://h:1/?authMechanismProperties=AWS_SESSION_TOKEN:abc") == (
        "mongodb://h:1/?authMechanismProperties=***"
    )
    assert redact_uri("mongodb://u@h/") == "mongodb://u@h/"


def test_killed_database_surfaces_as_store_error_not_a_hang(
    tmp_path: Path, response_factory: Callable[..., ResponseRecord]
) -> None:
    with running_server(tmp_path / "doomed") as server:
        store = open_store(server.uri)
        store.ensure_indexes()
        assert store.save_response(response_factory(0))
        os.kill(server.pid, signal.SIGKILL)
        for action in (
            lambda: store.save_response(response_factory(1)),
            lambda: store.done_turns([response_factory(0).experiment_key]),
            store.ping,
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError) as info:
                action()
            assert time.monotonic() - started < 2 * FAST
            message = str(info.value)
            assert "stopped answering" in message and "re-run the same command to resume" in message
        store.close()
    # The turn written before the kill is there after a restart on the same folder.
    with running_server(tmp_path / "doomed") as again, open_store(again.uri) as store:
        assert again.pid != server.pid
        assert [d.turn_index for d in store.responses()] == [0]
