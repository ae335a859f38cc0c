"""The embedded default database: an nx-27017 server (MongoDB wire protocol on SQLite).

One data folder holds everything (default `~/.local/share/storybench/mongo`, or
`STORYBENCH_DATA_DIR`):

    db/            the SQLite files, one `<database>.db` per logical database
    server.json    state of the running instance: pid, port, started_at
    server.pid     nx-27017's own pid file
    server.log     nx-27017's log (startup errors land here)
    server.lock    fcntl lock: one command at a time starts, reuses or stops the server
    leases/        one file per open handle (`<pid>.<token>`)

`acquire()` reuses the running instance when its pid is alive and it answers a ping, and
starts one on a free 127.0.0.1 port otherwise. `EmbeddedServer.release()` drops the
handle's lease; the last live lease stops the server, so the command that started it stops
it on exit unless another command is still using it (that one stops it instead). POSIX only.

Over 400 lines because starting, reusing, leasing and stopping a shared daemon are one
protocol on one lock file; split, its invariants would be spread across modules.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from evaluator.store.errors import EmbeddedServerError

DATA_DIR_ENV = "STORYBENCH_DATA_DIR"
HOST = "127.0.0.1"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
LOCK_TIMEOUT_S = 30.0

DB_SUBDIR = "db"
STATE_FILE = "server.json"
PID_FILE = "server.pid"
LOG_FILE = "server.log"
LOCK_FILE = "server.lock"
LEASES_SUBDIR = "leases"

# Run nx-27017's entry point with this interpreter, so the pinned version in this
# environment is the one started (and no RuntimeWarning from `-m nx_27017.nx_27017`).
_SERVER_MAIN = "import sys; from nx_27017.nx_27017 import main; sys.exit(main())"


def default_data_dir() -> Path:
    """`STORYBENCH_DATA_DIR`, else `~/.local/share/storybench/mongo`."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "storybench" / "mongo"


def nx_version() -> str:
    try:
        return metadata.version("nx-27017")
    except metadata.PackageNotFoundError:
        return "not installed"


@dataclass
class EmbeddedServer:
    """A handle on a running embedded server; `release()` it when done (idempotent)."""

    data_dir: Path
    port: int
    pid: int
    started_here: bool  # this handle started the process (it did not reuse one)
    lease: Path | None = None
    _released: bool = field(default=False, repr=False)

    @property
    def uri(self) -> str:
        return f"mongodb://{HOST}:{self.port}/"

    @property
    def log_file(self) -> Path:
        return self.data_dir / LOG_FILE

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def release(self) -> None:
        """Drop this handle's lease; stop the server if no other live lease remains."""
        if self._released:
            return
        self._released = True
        atexit.unregister(self.release)
        if not self.data_dir.is_dir():  # folder removed under us (a test's temp dir)
            if self.started_here and pid_alive(self.pid) and _is_nx_process(self.pid):
                _stop_pid(self.pid)
            return
        with _locked(self.data_dir):
            if self.lease is not None:
                self.lease.unlink(missing_ok=True)
            if _live_leases(self.data_dir):
                return
            state = _read_state(self.data_dir)
            if state is not None and state.get("pid") == self.pid:
                _stop_pid(self.pid)
                _clear_state(self.data_dir)
                # nx-27017 removes its pid file on a clean exit, not after SIGKILL or when slow.
                (self.data_dir / PID_FILE).unlink(missing_ok=True)


def acquire(data_dir: Path | None = None, *, start_timeout: float = START_TIMEOUT_S) -> EmbeddedServer:
    """Reuse the server running on `data_dir`, or start one; register a lease on it.

    Raises EmbeddedServerError naming the log file when the server does not come up.
    The handle is released at interpreter exit if the caller forgets to.
    """
    root = _prepare_dir(data_dir)
    with _locked(root):
        server = _reuse(root)
        if server is None:
            server = _start(root, timeout=start_timeout)
        server.lease = _add_lease(root)
    atexit.register(server.release)
    return server


@contextlib.contextmanager
def running_server(data_dir: Path, *, start_timeout: float = START_TIMEOUT_S) -> Iterator[EmbeddedServer]:
    """An embedded server on `data_dir` for the duration of the block (e.g. a test session).

    With a fresh `data_dir` this always starts a new instance (free port, own pid file), and
    it is stopped when the block ends unless another handle still holds a lease on it.
    """
    server = acquire(data_dir, start_timeout=start_timeout)
    try:
        yield server
    finally:
        server.release()


# -- state, leases and the lock ----------------------------------------------------------


def _prepare_dir(data_dir: Path | None) -> Path:
    root = (data_dir if data_dir is not None else default_data_dir()).expanduser().resolve()
    try:
        (root / DB_SUBDIR).mkdir(parents=True, exist_ok=True)
        (root / LEASES_SUBDIR).mkdir(exist_ok=True)
    except OSError as exc:
        raise EmbeddedServerError(
            f"cannot create the embedded database folder {root}: {exc}. "
            f"Fix: set {DATA_DIR_ENV} to a writable folder, or pass --mongo-uri."
        ) from exc
    return root


@contextlib.contextmanager
def _locked(root: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Exclusive fcntl lock on `server.lock` (per open file, so it also orders threads)."""
    with open(root / LOCK_FILE, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedServerError(
                        f"another StoryBench command has held {root / LOCK_FILE} for "
                        f"{timeout:.0f} s while starting or stopping the embedded database. "
                        "Fix: wait for it to finish, or stop the stuck command."
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_state(root: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("pid"), int):
        return None
    if not isinstance(state.get("port"), int):
        return None
    return state


def _write_state(root: Path, state: dict[str, Any]) -> None:
    tmp = root / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, root / STATE_FILE)


def _clear_state(root: Path) -> None:
    (root / STATE_FILE).unlink(missing_ok=True)
    for lease in (root / LEASES_SUBDIR).glob("*"):
        lease.unlink(missing_ok=True)


def _add_lease(root: Path) -> Path:
    lease = root / LEASES_SUBDIR / f"{os.getpid()}.{uuid.uuid4().hex[:12]}"
    lease.write_text(" ".join(sys.argv) + "\n")
    return lease


def _live_leases(root: Path) -> list[Path]:
    """Leases whose process is alive; those of dead processes are removed."""
    live = []
    for lease in (root / LEASES_SUBDIR).glob("*"):
        pid_text = lease.name.split(".", 1)[0]
        if pid_text.isdigit() and pid_alive(int(pid_text)):
            live.append(lease)
        else:
            lease.unlink(missing_ok=True)
    return live


# -- processes ------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie (a container's PID 1 may never reap it).

    Public so that tests can wait for a server to be gone the way this module does.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS) or it just exited: os.kill said alive
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_nx_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # cannot tell: assume it is ours rather than start a second server
    return b"nx_27017" in cmdline or b"nx-27017" in cmdline


def _answers_ping(port: int, timeout: float) -> bool:
    client: MongoClient[dict[str, Any]] = MongoClient(
        HOST,
        port,
        directConnection=True,
        serverSelectionTimeoutMS=max(int(timeout * 1000), 50),
        connectTimeoutMS=max(int(timeout * 1000), 50),
        socketTimeoutMS=max(int(timeout * 1000), 50),
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _log_since(log: Path, offset: int) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _log_error(log: Path, offset: int) -> str:
    """The last line nx-27017 logged since `offset` (the exception of a traceback)."""
    lines = [line.strip() for line in _log_since(log, offset).splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _stop_pid(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM (nx-27017 exits cleanly and removes its pid file), SIGKILL after `timeout`."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 3.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(0.05)
    raise EmbeddedServerError(f"the embedded database (pid {pid}) did not stop; kill it by hand")


def _reuse(root: Path) -> EmbeddedServer | None:
    """The running instance recorded in server.json, or None after clearing stale state."""
    state = _read_state(root)
    pid_file = root / PID_FILE
    if state is not None and pid_alive(state["pid"]):
        if _answers_ping(state["port"], timeout=2.0):
            return EmbeddedServer(root, state["port"], state["pid"], started_here=False)
        if _is_nx_process(state["pid"]):
            raise EmbeddedServerError(
                f"the embedded database (pid {state['pid']}) holds {root} but does not answer "
                f"on port {state['port']}; see {root / LOG_FILE}. Fix: stop it with "
                f"`kill {state['pid']}` and re-run."
            )
    # Stale: the recorded process is gone (crash, reboot, SIGKILL) or the pid was reused.
    _clear_state(root)
    other = _read_pid(pid_file)
    if other is not None and pid_alive(other) and _is_nx_process(other):
        raise EmbeddedServerError(
            f"an nx-27017 process (pid {other}) not started by StoryBench uses {root}. "
            f"Fix: stop it (`nx-27017 --stop --pid-file {pid_file}`) and re-run."
        )
    pid_file.unlink(missing_ok=True)
    return None


def _start(root: Path, *, timeout: float, attempts: int = 3) -> EmbeddedServer:
    last_error = ""
    for _ in range(attempts):
        port = _free_port()
        pid, error = _spawn(root, port, timeout)
        if pid is not None:
            _write_state(
                root,
                {
                    "pid": pid,
                    "port": port,
                    "host": HOST,
                    "uri": f"mongodb://{HOST}:{port}/",
                    "data_dir": str(root / DB_SUBDIR),
                    "log_file": str(root / LOG_FILE),
                    "started_at": datetime.now(timezone.utc).isoformat(),
                    "started_by_pid": os.getpid(),
                    "nx_27017": nx_version(),
                },
            )
            return EmbeddedServer(root, port, pid, started_here=True)
        last_error = error
        if "address already in use" not in error.lower():
            break  # only a lost race for the port is worth another try
    raise EmbeddedServerError(
        f"the embedded database (nx-27017 {nx_version()}) did not start: {last_error}. "
        f"Its log: {root / LOG_FILE}. Fix: check that folder is writable and nx-27017 is "
        "installed, or pass --mongo-uri."
    )


def _spawn(root: Path, port: int, timeout: float) -> tuple[int | None, str]:
    """Start a daemonised nx-27017 on `port`; (pid, "") once it answers, else (None, why)."""
    log, pid_file = root / LOG_FILE, root / PID_FILE
    offset = log.stat().st_size if log.exists() else 0
    cmd = [
        sys.executable, "-c", _SERVER_MAIN, "-d",
        "--data-dir", str(root / DB_SUBDIR), "--host", HOST, "-p", str(port),
        "--log-file", str(log), "--pid-file", str(pid_file),
    ]  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        with open(log, "ab") as log_fh:
            # -d double-forks and setsid()s: the server leaves our process group, so a Ctrl-C
            # reaches only us and we stop it after the last write. This call returns at once.
            first = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
                cwd=root, timeout=timeout, check=False,
            )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"could not run {sys.executable}: {exc}"
    if first.returncode != 0:
        return None, _log_error(log, offset) or f"exit status {first.returncode}"
    seen_pid: int | None = None
    while time.monotonic() < deadline:
        pid = _read_pid(pid_file)
        if pid is not None and pid_alive(pid):
            seen_pid = pid
            if _answers_ping(port, timeout=0.5):
                return pid, ""
        elif "Traceback" in _log_since(log, offset) or seen_pid is not None:
            time.sleep(0.3)  # let it finish writing the traceback
            return None, _log_error(log, offset) or "the server exited"
        time.sleep(0.1)
    if seen_pid is not None and pid_alive(seen_pid):
        with contextlib.suppress(EmbeddedServerError):
            _stop_pid(seen_pid)
    last = _log_error(log, offset)
    return None, f"no answer to a ping within {timeout:.0f} s" + (f" (last log line: {last})" if last else "")
