"""Cooperating workers: the claims one process holds, renewed while it lives.

Any number of `storybench-eval run` (or `judge`, `compare`) processes started on the same
configuration and store share the work: before asking a model for a piece of work (a
conversation, a judgement, a comparison) a worker claims it in the store (`Store.claim_work`,
evaluator/store/leases.py). The claim is a lease: it lasts `lease_s` seconds and the worker's
heartbeat thread renews every claim it holds (`Worker.renew_all`); a worker killed with SIGKILL
stops renewing, and once its leases run out the others take its work over and continue it from
what is stored. On the owner's own host a claim whose process is gone (evaluator/store/liveness.py)
is free at once, so re-running a killed command on one machine resumes without waiting.

A worker that cannot renew in time (the database is unreachable, or another worker took the
claim over after it expired) must stop: `Lease.held` turns False once the lease is lost or past
its expiry by our clock, and the runner checks it before each turn and before each write. Clocks
of the workers' hosts should agree to well under `lease_s` (NTP): expiry is compared across hosts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import random
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from evaluator.heartbeat import Heartbeat, heartbeat_interval, process_identity
from evaluator.records import ClaimKind, ClaimRecord, utcnow
from evaluator.store import Store, StoreError
from evaluator.store.liveness import process_state

T = TypeVar("T")
LEASE_ENV = "STORYBENCH_LEASE_S"
# A lease lasts this many heartbeats unless STORYBENCH_LEASE_S says otherwise: two beats may fail
# (a slow database) before anyone may take the work over.
LEASE_INTERVALS = 3
MIN_LEASE_INTERVALS = 2.0
# Work another worker holds is tried again this often (at most): the others learn within about
# this long that it was released (done), so a worker's tail after the last conversation is short.
# Each try is one failed insert and one read; only work held elsewhere is polled.
MAX_POLL_S = 2.0


def lease_seconds(heartbeat_s: float, environ: Mapping[str, str] = os.environ) -> float:
    """How long a claim lasts unrenewed: STORYBENCH_LEASE_S, else 3 heartbeats.

    Raises ValueError with a message for the user when the variable is not a number of at least
    two heartbeats (a shorter lease would expire between two renewals of a live worker).
    """
    raw = environ.get(LEASE_ENV, "").strip()
    if not raw:
        return LEASE_INTERVALS * heartbeat_s
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    low = MIN_LEASE_INTERVALS * heartbeat_s
    if not value >= low or value == float("inf"):
        raise ValueError(
            f"{LEASE_ENV}={raw!r}: must be a number of seconds >= {low:g} (two heartbeats of "
            f"{heartbeat_s:g} s; default {LEASE_INTERVALS * heartbeat_s:g}); unset it to use the default"
        )
    return value


@dataclass
class Lease:
    """One claim this process holds. `held` is what the work checks before it goes on."""

    claim: ClaimRecord
    lost: bool = False  # a renewal found it taken over
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def key(self) -> str:
        return self.claim.id

    @property
    def held(self) -> bool:
        """Still ours: not taken over, and not past its expiry (renewals failed): then another
        worker may already have it, so we must not ask for or store anything more."""
        return not self.lost and utcnow() < self.claim.expires_at


@dataclass
class WorkerCounts:
    claimed: int = 0
    taken_over: int = 0  # claims taken from an expired or dead worker
    busy: int = 0  # attempts that found the work held by a live worker
    lost: int = 0  # leases lost while working


class Worker:
    """The claims of one process on one store. Thread-safe: the event loop claims and releases
    (through `call`, in threads of the worker's own), the heartbeat thread renews."""

    def __init__(
        self,
        store: Store,
        kind: ClaimKind,
        lease_s: float,
        *,
        owner: str | None = None,
        poll_s: float | None = None,
    ) -> None:
        self.store = store
        self.kind = kind
        self.lease_s = lease_s
        self.host, self.pid = process_identity()
        self.owner = owner or f"{kind}-{self.host}-{self.pid}-{uuid.uuid4().hex[:6]}"
        self.started_at = utcnow()
        # How long to wait before trying again for work another worker holds.
        self.poll_s = poll_s if poll_s is not None else min(lease_s / LEASE_INTERVALS, MAX_POLL_S)
        self.counts = WorkerCounts()
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        # Set when the database stopped answering: claims are then dropped without a release
        # (each would wait out the driver's timeout); they expire, or on this host are freed
        # once this process is gone.
        self.store_gone = False
        # Store calls of the claims run here rather than in the event loop's default executor:
        # when the database dies, `asyncio.run` would wait for each one in flight to time out
        # before the run could record its end; these threads finish on their own.
        self._threads = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="storybench-claims")

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in one of the worker's threads (a store call off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args))

    def is_free(self, claim: ClaimRecord, now: datetime) -> bool:
        """A claim may be taken over once expired, or at once when its owner's process is gone
        on this host (a pid that no longer exists, or was reused by a later process)."""
        if claim.expires_at <= now:
            return True
        if claim.host == self.host and claim.pid != self.pid:
            return process_state(claim.pid, claim.owner_started_at) == "gone"
        return False

    def claim(self, key: str) -> Lease | None:
        """Claim `key`: our lease, or None while another live worker holds it."""
        claim = self.store.claim_work(
            key, self.kind, owner=self.owner, host=self.host, pid=self.pid,
            owner_started_at=self.started_at, now=utcnow(), lease_s=self.lease_s, is_free=self.is_free,
        )  # fmt: skip
        with self._lock:
            if claim is None:
                self.counts.busy += 1
                return None
            self.counts.claimed += 1
            self.counts.taken_over += claim.previous_owner is not None
            lease = Lease(claim)
            self._held[key] = lease
            return lease

    def release(self, lease: Lease) -> None:
        """Give the claim back (the work is done, or given up). A release that fails leaves the
        claim to expire: the others then take it over and find the work done."""
        with self._lock:
            self._held.pop(lease.key, None)
        with lease.lock:
            if lease.lost:
                return
            lease.lost = True  # nothing may be done under it any more
            if self.store_gone:
                return
            try:
                self.store.release_claim(lease.claim)
            except StoreError:
                # Unreachable: every further release would wait out the same server selection.
                self.store_gone = True

    def release_all(self) -> None:
        with self._lock:
            leases = list(self._held.values())
        for lease in leases:
            self.release(lease)

    @property
    def holding(self) -> int:
        with self._lock:
            return len(self._held)

    def renew_all(self) -> None:
        """Renew every claim held (the heartbeat calls this). A claim another worker took over
        is marked lost; a store error stops the round and is raised."""
        with self._lock:
            leases = [] if self.store_gone else list(self._held.values())
        for lease in leases:
            if self.store_gone:
                return
            with lease.lock:
                if lease.lost:
                    continue
                # A failure is raised at once: the next renewal would wait out the same
                # unreachable database; the next beat tries them all again.
                renewed = self.store.renew_claim(lease.claim, utcnow(), self.lease_s)
                if renewed is None:
                    lease.lost = True
                    with self._lock:
                        self.counts.lost += 1
                        self._held.pop(lease.key, None)
                else:
                    lease.claim = renewed

    async def pause(self) -> None:
        """Wait before trying again for work another worker holds (jittered: workers that wait
        for the same claims do not all ask at once)."""
        await asyncio.sleep(self.poll_s * random.uniform(0.5, 1.0))


async def claimed(
    worker: Worker,
    key: str,
    slot: Callable[[], contextlib.AbstractAsyncContextManager[Any]],
    work: Callable[[Lease], Awaitable[None]],
) -> None:
    """Do `work(lease)` once `key` is ours, inside `slot()` (the concurrency bounds); while
    another live worker holds it, wait OUTSIDE the slot and try again. `work` checks first
    whether the work was finished meanwhile (by the worker that held it). The claim is released
    afterwards, whatever happened."""
    while True:
        async with slot():
            lease = await worker.call(worker.claim, key)
            if lease is not None:
                try:
                    await work(lease)
                finally:
                    await worker.call(worker.release, lease)
                return
        await worker.pause()


def worker_beats(environ: Mapping[str, str] = os.environ) -> tuple[float, float]:
    """(heartbeat, lease) seconds from STORYBENCH_HEARTBEAT_S and STORYBENCH_LEASE_S; ValueError
    with a message for the user when one is not usable."""
    heartbeat_s = heartbeat_interval(environ)
    return heartbeat_s, lease_seconds(heartbeat_s, environ)


@contextlib.contextmanager
def shared_work(store: Store, kind: ClaimKind, heartbeat_s: float, lease_s: float) -> Iterator[Worker]:
    """A worker for `judge` or `compare` (which write no run document): its claims renewed by a
    heartbeat thread of their own while the block runs, all released when it ends."""
    worker = Worker(store, kind, lease_s)

    def beat() -> bool:
        worker.renew_all()
        return True

    with Heartbeat(beat, heartbeat_s, what=f"the claims of {worker.owner}"):
        try:
            yield worker
        finally:
            worker.release_all()
