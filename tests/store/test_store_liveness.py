"""Abandoned runs as the user meets them: `runs` and `show` on a real store (embedded, and the
external MongoDB when configured), plus the store's heartbeat write."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner, Result

from evaluator.cli import cli
from evaluator.records import RunRecord, utcnow
from evaluator.store import Store
from tests.store.conftest import WIRE_BACKENDS

RunFactory = Callable[..., RunRecord]


@pytest.fixture(scope="session", params=WIRE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Only servers a command can connect to: these tests drive the CLI with --mongo-uri."""
    return str(request.param)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def cli_on(store: Store, *args: str) -> Result:
    result = CliRunner().invoke(
        cli, [*args, "--mongo-uri", store.uri, "--db", store.db_name], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result


def status_of(listing: str, run_id: str) -> str:
    (row,) = [line.split() for line in listing.splitlines() if line.split()[:1] == [run_id]]
    return row[-1]


def flat(text: str) -> str:
    return " ".join(text.split())


def test_runs_tells_live_runs_from_abandoned_ones(store: Store, run_factory: RunFactory) -> None:
    here, now = socket.gethostname(), utcnow()

    def add(run_id: str, **fields: object) -> None:
        run = run_factory(run_id, started=now - timedelta(minutes=10))
        for name, value in fields.items():
            setattr(run, name, value)
        store.create_run(run)

    add("dead-here", host=here, pid=dead_pid(), heartbeat_at=now, heartbeat_s=30.0)
    add("live-here", host=here, pid=os.getpid(), started_at=now, heartbeat_at=now, heartbeat_s=30.0)
    add("stale-away", host="elsewhere", pid=4242, heartbeat_at=now - timedelta(minutes=5), heartbeat_s=30.0)
    add("fresh-away", host="elsewhere", pid=4242, heartbeat_at=now - timedelta(seconds=20), heartbeat_s=30.0)
    add("old-record", started_at=now - timedelta(days=3))  # written before heartbeats existed
    add("done", host=here, pid=dead_pid(), heartbeat_at=now)
    store.update_run("done", status="completed", finished_at=now)

    listing = cli_on(store, "runs").output
    assert status_of(listing, "dead-here") == "abandoned"
    assert status_of(listing, "live-here") == "running"
    assert status_of(listing, "stale-away") == "abandoned"
    assert status_of(listing, "fresh-away") == "running"
    assert status_of(listing, "old-record") == "unknown"
    assert status_of(listing, "done") == "completed"
    assert "the run's process is gone; re-run the same command to resume" in flat(listing)

    shown = flat(cli_on(store, "show", "dead-here").output)
    assert "status abandoned" in shown
    assert "is gone; re-run the same command to resume" in shown and f"on {here}" in shown
    shown = flat(cli_on(store, "show", "stale-away").output)
    assert "status abandoned" in shown and "no heartbeat from its process (pid 4242 on elsewhere)" in shown
    shown = flat(cli_on(store, "show", "live-here").output)
    assert "status running" in shown and f"pid {os.getpid()} on {here}" in shown and "heartbeat" in shown

    # Reading never writes: the records still say what their runs wrote (docs/store.md).
    stored = {doc.id: doc.status for doc in store.list_runs()}
    assert stored == {
        "dead-here": "running", "live-here": "running", "stale-away": "running",
        "fresh-away": "running", "old-record": "running", "done": "completed",
    }  # fmt: skip


def test_heartbeat_refreshes_a_running_run_and_never_touches_a_finished_one(
    store: Store, run_factory: RunFactory
) -> None:
    run = run_factory("beating")
    run.heartbeat_at = run.started_at
    store.create_run(run)
    later = run.started_at + timedelta(seconds=30, milliseconds=250)
    assert store.heartbeat("beating", later) is True
    doc = store.get_run("beating")
    assert doc is not None
    assert doc.heartbeat_at == later  # a BSON date on nx-27017 too (no $set)
    assert doc.config_snapshot["models"][0]["stream"] is True  # bools survive the replace
    assert doc.revision == 1

    store.update_run("beating", status="completed", finished_at=later)
    assert store.heartbeat("beating", later + timedelta(seconds=30)) is False
    doc = store.get_run("beating")
    assert doc is not None and doc.status == "completed" and doc.heartbeat_at == later
    assert store.heartbeat("no-such-run", later) is False


def test_new_run_fields_round_trip(store: Store, run_factory: RunFactory) -> None:
    run = run_factory("where")
    run.host, run.pid, run.heartbeat_s = "box-1", 1234, 0.5
    run.heartbeat_at = datetime(2026, 11, 28, 12, 0, 1, tzinfo=timezone.utc)
    store.create_run(run)
    doc = store.get_run("where")
    assert doc is not None
    assert (doc.host, doc.pid, doc.heartbeat_s) == ("box-1", 1234, 0.5)
    assert doc.heartbeat_at == run.heartbeat_at
