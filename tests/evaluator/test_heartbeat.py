"""The heartbeat thread and the reading of a "running" record (no database: see
tests/store/test_store_liveness.py and tests/evaluator/test_run_liveness.py for those)."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from evaluator.heartbeat import HEARTBEAT_ENV, Heartbeat, heartbeat_interval
from evaluator.records import DEFAULT_HEARTBEAT_S, RunRecord
from evaluator.store.liveness import (
    ABANDONED,
    UNKNOWN,
    as_utc,
    process_start,
    process_state,
    run_state,
    stale_after,
)
from tests.support.documents import make_run

HERE = "this-host"
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def running(**fields: Any) -> RunRecord:
    """A run stored as "running" five minutes ago, as the store reads it back (validated)."""
    doc = make_run("r", started=NOW - timedelta(minutes=5)).to_doc() | fields
    return RunRecord.model_validate(doc)


def state(doc: RunRecord) -> tuple[str, str | None]:
    found = run_state(doc, now=NOW, hostname=HERE)
    return found.status, found.hint


# -- the thread ---------------------------------------------------------------------------------
# No test here depends on speed: beats are counted by events, and every wait has a deadline far
# beyond what a busy machine needs, so a failure means a broken heartbeat, not a slow one.

DEADLINE_S = 30.0


def wait_until(condition: Callable[[], bool], deadline_s: float = DEADLINE_S) -> bool:
    """Poll `condition` until it holds (True) or the deadline passes (False)."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_heartbeat_beats_until_stopped_and_never_after() -> None:
    calls = 0
    three = threading.Event()

    def beat() -> bool:
        nonlocal calls
        calls += 1
        if calls == 3:
            three.set()
        return True

    with Heartbeat(beat, 0.01) as beats:
        assert beats.running
        assert three.wait(DEADLINE_S), "three beats never came"
    # stop() waits for the thread only briefly; once it has ended no beat can follow.
    assert wait_until(lambda: not beats.running), "the heartbeat thread outlived stop()"
    assert calls >= 3 and beats.beats == calls and beats.failures == 0


def test_heartbeat_ends_when_the_run_is_no_longer_running() -> None:
    calls = 0

    def beat() -> bool:
        nonlocal calls
        calls += 1
        return calls < 2

    beats = Heartbeat(beat, 0.01)
    beats.start()
    try:
        # Nobody calls stop(): the thread must end by itself after the beat that returned False.
        assert wait_until(lambda: not beats.running), "the heartbeat went on after beat() said False"
    finally:
        beats.stop()
    assert calls == 2 and beats.beats == 1


def test_a_failing_beat_is_logged_once_and_the_beats_go_on(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    recovered = threading.Event()

    def beat() -> bool:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError("the database at mongodb://x stopped answering")
        recovered.set()
        return True

    with (
        caplog.at_level(logging.WARNING, logger="evaluator.heartbeat"),
        Heartbeat(beat, 0.01, what="run r1") as beats,
    ):
        assert recovered.wait(DEADLINE_S), "the beats stopped after a failure"
    assert wait_until(lambda: not beats.running)
    warnings = [r.getMessage() for r in caplog.records if r.name == "evaluator.heartbeat"]
    assert len(warnings) == 1, warnings
    assert "run r1" in warnings[0] and "stopped answering" in warnings[0] and "goes on" in warnings[0]
    assert beats.failures == 3 and beats.beats >= 1


def test_stop_does_not_wait_for_a_hung_beat() -> None:
    release = threading.Event()
    started = threading.Event()

    def beat() -> bool:
        started.set()
        release.wait()  # a database that never answers, until the test lets it
        return True

    beats = Heartbeat(beat, 0.01)
    beats.start()
    try:
        assert started.wait(DEADLINE_S)
        stopper = threading.Thread(target=beats.stop, daemon=True)
        stopper.start()
        stopper.join(DEADLINE_S)
        assert not stopper.is_alive(), "stop() waited for the hung beat"
        assert beats.running, "the beat was not hung when stop() returned"
    finally:
        release.set()
    assert wait_until(lambda: not beats.running), "the thread did not end once the beat returned"
    assert beats.beats == 1


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, DEFAULT_HEARTBEAT_S), ("", DEFAULT_HEARTBEAT_S), ("5", 5.0), (" 0.1 ", 0.1)],
)
def test_heartbeat_interval_from_the_environment(raw: str | None, expected: float) -> None:
    env = {} if raw is None else {HEARTBEAT_ENV: raw}
    assert heartbeat_interval(env) == expected


@pytest.mark.parametrize("raw", ["0", "-3", "0.001", "soon", "nan", "inf"])
def test_a_bad_heartbeat_interval_is_a_message_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=HEARTBEAT_ENV) as caught:
        heartbeat_interval({HEARTBEAT_ENV: raw})
    assert repr(raw) in str(caught.value)


# -- the process check --------------------------------------------------------------------------


def test_process_state_of_this_process_a_dead_one_and_a_reused_pid() -> None:
    me = os.getpid()
    assert process_state(me, datetime.now(timezone.utc)) == "alive"
    assert process_state(dead_pid(), datetime.now(timezone.utc)) == "gone"
    # A run that started long before this process did cannot be this process: the pid was reused.
    assert process_state(me, datetime(2001, 1, 1, tzinfo=timezone.utc)) == "gone"
    assert process_state(0, NOW) == "unverified"  # never signal a process group


def test_process_start_reads_proc_when_there_is_one() -> None:
    start = process_start(os.getpid())
    if not os.path.exists("/proc/self/stat"):
        assert start is None
        return
    assert start is not None
    assert timedelta(0) <= datetime.now(timezone.utc) - start < timedelta(days=1)


# -- the status a reader shows ------------------------------------------------------------------


@pytest.mark.parametrize("status", ["completed", "incomplete", "interrupted", "failed"])
def test_only_running_is_ever_reinterpreted(status: str) -> None:
    doc = running(status=status, host=HERE, pid=dead_pid(), heartbeat_at=NOW - timedelta(days=9))
    assert state(doc) == (status, None)


def test_a_dead_pid_on_this_host_is_abandoned_at_once() -> None:
    pid = dead_pid()
    status, hint = state(running(host=HERE, pid=pid, heartbeat_at=NOW, heartbeat_s=30.0))
    assert status == ABANDONED
    assert hint is not None and f"pid {pid} on {HERE}" in hint and "re-run the same command" in hint


def test_a_live_pid_on_this_host_is_running_even_with_a_late_heartbeat() -> None:
    doc = running(
        host=HERE,
        pid=os.getpid(),
        started_at=datetime.now(timezone.utc),
        heartbeat_at=NOW - timedelta(hours=3),
    )
    assert state(doc) == ("running", None)


def test_a_reused_pid_on_this_host_is_abandoned() -> None:
    doc = running(host=HERE, pid=os.getpid(), started_at=datetime(2001, 1, 1, tzinfo=timezone.utc))
    assert state(doc)[0] == ABANDONED


def test_another_hosts_run_is_judged_by_its_heartbeat() -> None:
    fresh = running(host="elsewhere", pid=1, heartbeat_at=NOW - timedelta(seconds=100), heartbeat_s=30.0)
    assert state(fresh) == ("running", None)  # 100 s < 3 x 30 s + 30 s
    stale = running(host="elsewhere", pid=1, heartbeat_at=NOW - timedelta(seconds=121), heartbeat_s=30.0)
    status, hint = state(stale)
    assert status == ABANDONED
    assert hint is not None and "no heartbeat" in hint and "2m01s" in hint and "elsewhere" in hint


def test_the_threshold_follows_the_runs_own_interval() -> None:
    doc = running(host="elsewhere", pid=1, heartbeat_s=1.0, heartbeat_at=NOW - timedelta(seconds=40))
    assert stale_after(doc) == timedelta(seconds=33)
    assert state(doc)[0] == ABANDONED
    assert stale_after(running()) == timedelta(seconds=3 * DEFAULT_HEARTBEAT_S + 30)


def test_records_from_before_heartbeats_are_unknown_once_old() -> None:
    assert state(running(started_at=NOW - timedelta(seconds=30))) == ("running", None)
    status, hint = state(running(started_at=NOW - timedelta(days=2)))
    assert status == UNKNOWN and hint is not None and "without heartbeats" in hint


def test_a_heartbeat_stored_as_a_string_is_read() -> None:
    # nx-27017 stores a datetime written by $set as this string (docs/store.md, known gaps).
    assert as_utc("2026-11-28 12:05:00.234000") == datetime(
        2026, 11, 28, 12, 5, 0, 234000, tzinfo=timezone.utc
    )
    assert as_utc(datetime(2026, 11, 28, 12, 5)) == datetime(2026, 11, 28, 12, 5, tzinfo=timezone.utc)
    assert as_utc("not a time") is None and as_utc(None) is None
    doc = running(host="elsewhere", pid=1, heartbeat_at="2026-11-28 11:59:50")
    assert state(doc) == ("running", None)
