"""The embedded default: started on demand, reused, stopped by the last user, data kept.

Nothing here depends on speed: processes that must overlap hold the store until the test lets
them go, and every wait polls with a deadline far beyond what a busy machine needs.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from evaluator.records import ResponseRecord
from evaluator.store import EmbeddedServerError, embedded, open_store
from evaluator.store.embedded import LEASES_SUBDIR, PID_FILE, STATE_FILE, pid_alive

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0  # for any wait below: far beyond a start (15 s) or a stop (10 s + 3 s)


def wait_until(condition: Callable[[], bool], deadline_s: float = DEADLINE_S) -> bool:
    """Poll `condition` until it holds (True) or the deadline passes (False)."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def assert_stopped(data_dir: Path, pid: int) -> None:
    assert wait_until(lambda: not pid_alive(pid)), f"the embedded server (pid {pid}) still runs"
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
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def first_line(proc: subprocess.Popen[str], deadline_s: float = DEADLINE_S) -> str:
    """The first line `proc` prints, waiting at most `deadline_s`; fails with its stderr if none."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], deadline_s)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"pid {proc.pid} printed nothing within {deadline_s:.0f} s; stderr:\n{err}")
    return line


SCRIPT_HOLD = """
import json, sys
from pathlib import Path
from evaluator.store import open_store
with open_store(data_dir=Path(sys.argv[1])) as store:
    store.db["hits"].insert_one({"proc": sys.argv[2]})
    print(json.dumps({"pid": store.embedded.pid, "started_here": store.embedded.started_here}), flush=True)
    sys.stdin.read()  # hold the store until the test has seen every command open it
"""


def test_commands_starting_at_once_share_one_server(tmp_path: Path) -> None:
    data = tmp_path / "mongo"
    procs = [run_python(SCRIPT_HOLD, str(data), str(i)) for i in range(3)]
    try:
        # All three hold the store at once here, however slowly each one started.
        outs = [json.loads(first_line(proc)) for proc in procs]
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
    for proc in procs:
        assert proc.stderr is not None
        assert proc.wait(timeout=DEADLINE_S) == 0, proc.stderr.read()
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
    assert wait_until(lambda: not pid_alive(old.pid))
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
        with pytest.raises(EmbeddedServerError) as info:
            open_store(data_dir=tmp_path / "mongo")
    message = str(info.value)
    assert "did not start" in message and str(tmp_path / "mongo" / "server.log") in message
    assert "address already in use" in message.lower()
    # Seen failing from its log, not waited out until the start timeout.
    assert "no answer to a ping" not in message, message
    assert not (tmp_path / "mongo" / STATE_FILE).exists()
