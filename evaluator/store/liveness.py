"""Is a run whose record says "running" still running?

A run records its end when it stops, even on Ctrl-C or a failure, but a process killed with
SIGKILL (or a machine that dies) records nothing and its run would read "running" forever.
So a run also records where it runs (`host`, `pid`) and refreshes `heartbeat_at` while it
lives (evaluator/heartbeat.py), and readers decide here, every time they show a run:

- on the run's own host, the process decides: a pid that no longer exists, or that now
  belongs to a process started after the run, means "abandoned"; a live one means "running";
- elsewhere (or where the pid cannot be checked), a heartbeat older than `stale_after` means
  "abandoned";
- a record from before these fields existed is "unknown" once it is older than that.

Nothing is written back: see docs/store.md ("Abandoned runs") for why.

Several `run` processes sharing one plan (cooperating workers, docs/scale.md) each keep their
own run document; `co_workers` tells which of them worked at the same time as a given one.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from evaluator.records import DEFAULT_HEARTBEAT_S, RunRecord

ABANDONED, UNKNOWN = "abandoned", "unknown"
RESUME = "re-run the same command to resume"
# A heartbeat is late after this many intervals plus a margin for a slow database write and
# clock skew between hosts.
STALE_INTERVALS = 3
STALE_MARGIN_S = 30.0
# /proc gives boot time to the second: a process that started this much after the run did
# cannot be the run's own process (the pid was reused).
PID_START_SLACK_S = 2.0

ProcessState = Literal["alive", "gone", "unverified"]


@dataclass(frozen=True)
class RunState:
    """What to show for a run: its stored status, or a derived one with the reason."""

    status: str
    hint: str | None = None

    @property
    def derived(self) -> bool:
        return self.status in (ABANDONED, UNKNOWN)


def as_utc(value: Any) -> datetime | None:
    """A stored time as an aware UTC datetime: BSON dates (aware or naive, by client option)
    and the `YYYY-MM-DD HH:MM:SS[.ffffff]` strings nx-27017 makes of a `$set` datetime."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def stale_after(run: RunRecord) -> timedelta:
    """How old the heartbeat may get before the run counts as abandoned."""
    interval = run.heartbeat_s
    if interval is None or interval <= 0:
        interval = DEFAULT_HEARTBEAT_S
    return timedelta(seconds=STALE_INTERVALS * float(interval) + STALE_MARGIN_S)


def age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


@functools.lru_cache(maxsize=1)
def _boot_time_and_ticks() -> tuple[float, int] | None:
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            btime = next(int(line.split()[1]) for line in stat if line.startswith("btime "))
        return float(btime), os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return None


def process_start(pid: int) -> datetime | None:
    """When process `pid` started, from /proc (Linux); None where that cannot be read."""
    boot = _boot_time_and_ticks()
    if boot is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
            text = stat.read()
        # Field 2 (the command name, in parentheses) may hold spaces: split after it.
        ticks = int(text[text.rindex(")") + 2 :].split()[19])  # field 22, starttime
    except (OSError, ValueError, IndexError):
        return None
    return datetime.fromtimestamp(boot[0] + ticks / boot[1], timezone.utc)


def process_state(pid: int, started_at: datetime | None) -> ProcessState:
    """Whether the run's process (pid on this host, run started at `started_at`) lives.

    "gone": no such pid, or its process started after the run did (the pid was reused).
    "unverified": a process with that pid exists but its start time cannot be compared.
    """
    if pid <= 0:  # os.kill(0 or -n, ...) would address process groups
        return "unverified"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass  # it exists and belongs to another user
    except OSError:
        return "unverified"
    start = process_start(pid)
    if start is None or started_at is None:
        return "unverified"
    if start > started_at + timedelta(seconds=PID_START_SLACK_S):
        return "gone"
    return "alive"


def run_state(run: RunRecord, *, now: datetime | None = None, hostname: str | None = None) -> RunState:
    """The status to show for a stored run; only "running" is ever changed."""
    status = run.status
    if status != "running":
        return RunState(status)
    now = now or datetime.now(timezone.utc)
    host, pid = run.host, run.pid
    started = as_utc(run.started_at)
    limit = stale_after(run)
    if host is None and pid is None and run.heartbeat_at is None:
        if started is not None and now - started > limit:
            return RunState(
                UNKNOWN,
                "recorded by a version without heartbeats, so whether its process still runs "
                f"cannot be told; if it does not, {RESUME}",
            )
        return RunState(status)
    where = f"pid {pid} on {host}"
    if pid is not None and host == (hostname or socket.gethostname()):
        state = process_state(pid, started)
        if state == "gone":
            return RunState(ABANDONED, f"its process ({where}) is gone; {RESUME}")
        if state == "alive":
            return RunState(status)
    last = as_utc(run.heartbeat_at) or started
    if last is not None and now - last > limit:
        return RunState(
            ABANDONED,
            f"no heartbeat from its process ({where}) for {age(now - last)}: the process is gone "
            f"(or lost the database); {RESUME}",
        )
    return RunState(status)


def _lifetime(run: RunRecord, now: datetime) -> tuple[datetime, datetime]:
    """When a worker started, and its end: recorded, else its last heartbeat (now if it still
    runs by `run_state`)."""
    start = as_utc(run.started_at) or now
    end = as_utc(run.finished_at)
    if end is None:
        end = now if run_state(run, now=now).status == "running" else (as_utc(run.heartbeat_at) or start)
    return start, end


def co_workers(run: RunRecord, plan_runs: list[RunRecord], *, now: datetime | None = None) -> list[RunRecord]:
    """The workers of `run`'s plan (`plan_runs`: the documents with its `plan_key`) whose
    lifetimes overlap its own, `run` included, oldest first. A run without `plan_key` (from
    before workers existed) is its own only worker."""
    now = now or datetime.now(timezone.utc)
    if run.plan_key is None:
        return [run]
    start, end = _lifetime(run, now)
    found = {run.id: run}
    for other in plan_runs:
        if other.plan_key != run.plan_key:
            continue
        other_start, other_end = _lifetime(other, now)
        if other_start <= end and other_end >= start:
            found[other.id] = other
    return sorted(found.values(), key=lambda r: (r.started_at, r.id))
