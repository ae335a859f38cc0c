"""The embedded default: started on demand, reused, stopped by the last user, data kept."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from evaluator.records import ResponseRecord
from evaluator.store import EmbeddedServerError, embedded, open_store
from evaluator.store.embedded import LEASES_SUBDIR, PID_FILE, STATE_FILE, _pid_alive

REPO = Path(__file__).resolve().parents[2]


def assert_stopped(data_dir: Path, pid: int) -> None:
    deadline = time.monotonic() + 5
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(pid)
    assert not (data_dir / STATE_FILE).exists()
    assert not (data_dir / PID_FILE).exists()
    assert list((data_dir / LEASES_SUBDIR).iterdir()) == []


def test_data_survives_stop_and_restart(
    tmp_path: Path, response_factory: Callable[..., ResponseRecord]
) -> None:
    data = tmp_path / "mongo"
    with open_store(data_dir=data) as store:
        assert store.embedded is not None and store.embedded.started_here
        first_pid = store.embedded.pid
        state = json.loads((data / STATE_FILE).read_text())
        assert (state["pid"], state["port"]) == (first_pid, store.embedded.port)
        store.ensure_indexes()
        store.save_response(response_factory(0))
        assert "embedded nx-27017" in store.describe()
    assert_stopped(data, first_pid)  # the command that started it stopped it
    assert (data / "db" / "storybench.db").exists()

    with open_store(data_dir=data) as store:
        assert store.embedded is not None and store.embedded.pid != first_pid
        assert store.save_response(response_factory(0)) is False  # still there: not stored twice
        assert len(store.responses()) == 1


def test_default_data_dir_comes_from_env(tmp_path: Path) -> None:
    # conftest points STORYBENCH_DATA_DIR at tmp_path / "default-data-dir".
    with open_store() as store:
        assert store.embedded is not None
        assert store.embedded.data_dir == (tmp_path / "default-data-dir").resolve()


def test_second_open_store_reuses_the_running_server(tmp_path: Path) -> None:
    data = tmp_path / "mongo"
    with open_store(data_dir=data) as first:
        assert first.embedded is not None
        with open_store(data_dir=data) as second:
            assert second.embedded is not None
            assert (second.embedded.pid, second.embedded.port) == (first.embedded.pid, first.embedded.port)
            assert not second.embedded.started_here
        first.ping()  # the reuser's exit did not stop it
        pid = first.embedded.pid
    assert_stopped(data, pid)


def test_starter_leaving_first_does_not_pull_the_database_from_under_a_reuser(tmp_path: Path) -> None:
    data = tmp_path / "mongo"
    starter = open_store(data_dir=data)
    reuser = open_store(data_dir=data)
    assert starter.embedded is not None
    pid = starter.embedded.pid
    starter.close()
    reuser.ping()  # still answering: the reuser's lease keeps it up
    reuser.close()  # the last user stops it
    assert_stopped(data, pid)


def test_server_is_stopped_when_the_command_fails(tmp_path: Path) -> None:
    data = tmp_path / "mongo"
    pid = 0
    with pytest.raises(KeyboardInterrupt), open_store(data_dir=data) as store:
        assert store.embedded is not None
        pid = store.embedded.pid
        raise KeyboardInterrupt  # what Ctrl-C raises
    assert_stopped(data, pid)


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    env = os.environ | {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


SCRIPT_HOLD = """
import json, sys, time
from pathlib import Path
from evaluator.store import open_store
with open_store(data_dir=Path(sys.argv[1])) as store:
    store.db["hits"].insert_one({"proc": sys.argv[2]})
    print(json.dumps({"pid": store.embedded.pid, "started_here": store.embedded.started_here}), flush=True)
    time.sleep(1.5)
"""


def test_commands_starting_at_once_share_one_server(tmp_path: Path) -> None:
    data = tmp_path / "mongo"
    procs = [run_python(SCRIPT_HOLD, str(data), str(i)) for i in range(3)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=40)
        assert proc.returncode == 0, err
        outs.append(json.loads(out))
    assert len({o["pid"] for o in outs}) == 1
    assert sum(o["started_here"] for o in outs) == 1
    assert_stopped(data, outs[0]["pid"])
    with open_store(data_dir=data) as store:
        assert store.db["hits"].count_documents({}) == 3


SCRIPT_NO_WITH = """
import sys
from pathlib import Path
from evaluator.store import open_store
store = open_store(data_dir=Path(sys.argv[1]))
print(store.embedded.pid, flush=True)
sys.exit(0)  # no close(): the atexit hook must stop the server
"""


def test_atexit_stops_a_server_left_open(tmp_path: Path) -> None:
    data = tmp_path / "mongo"
    proc = run_python(SCRIPT_NO_WITH, str(data))
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    assert_stopped(data, int(out))


def test_stale_state_from_a_killed_server_is_replaced(tmp_path: Path) -> None:
    data = tmp_path / "mongo"
    store = open_store(data_dir=data)
    assert store.embedded is not None
    old = store.embedded
    os.kill(old.pid, 9)
    assert_pid_gone = time.monotonic() + 5
    while _pid_alive(old.pid) and time.monotonic() < assert_pid_gone:
        time.sleep(0.05)
    with open_store(data_dir=data) as fresh:
        assert fresh.embedded is not None and fresh.embedded.started_here
        assert fresh.embedded.pid != old.pid
        fresh.ping()
        store.close()  # the dead server's handle must not stop the new one
        fresh.ping()


def test_a_server_that_cannot_start_is_reported_with_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        monkeypatch.setattr(embedded, "_free_port", lambda: busy.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(EmbeddedServerError) as info:
            open_store(data_dir=tmp_path / "mongo")
        assert time.monotonic() - started < 15
    message = str(info.value)
    assert "did not start" in message and str(tmp_path / "mongo" / "server.log") in message
    assert "address already in use" in message.lower()
    assert not (tmp_path / "mongo" / STATE_FILE).exists()
