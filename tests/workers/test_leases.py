"""The lease rules, on nx-27017 and on the in-memory store: claim, renew, takeover after expiry
(or at once when the owner's process is gone on this host), release, and a lost lease that stops
the worker. Racing processes check that nx-27017's single-document writes decide alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone

import pytest

from evaluator.heartbeat import process_identity
from evaluator.records import ClaimRecord, utcnow
from evaluator.store import Store, open_store
from evaluator.store.embedded import EmbeddedServer
from evaluator.workers import LEASE_ENV, Worker, lease_seconds
from tests.support.servers import REPO

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


def claim(
    store: Store, key: str, owner: str, now: datetime, lease_s: float = 10.0, **kw: object
) -> ClaimRecord | None:
    fields: dict[str, object] = {"host": "h-" + owner, "pid": 100, "owner_started_at": T0}
    fields.update(kw)
    return store.claim_work(key, "conversation", owner=owner, now=now, lease_s=lease_s, **fields)  # type: ignore[arg-type]


def test_a_claim_is_exclusive_until_released(store: Store) -> None:
    mine = claim(store, "k", "a", T0)
    assert mine is not None and mine.owner == "a" and mine.expires_at == T0 + timedelta(seconds=10)
    assert claim(store, "k", "b", T0 + timedelta(seconds=9)) is None  # live: not taken
    assert store.get_claim("k") == mine
    assert store.release_claim(mine)
    assert store.get_claim("k") is None
    theirs = claim(store, "k", "b", T0 + timedelta(seconds=1))
    assert theirs is not None and theirs.owner == "b" and theirs.takeovers == 0


def test_renewal_extends_the_lease_and_a_stale_renewal_fails(store: Store) -> None:
    mine = claim(store, "k", "a", T0)
    assert mine is not None
    renewed = store.renew_claim(mine, T0 + timedelta(seconds=8), 10.0)
    assert renewed is not None and renewed.revision == mine.revision + 1
    assert renewed.expires_at == T0 + timedelta(seconds=18)
    # At T0 + 12 the first lease would have run out; the renewal keeps it ours.
    assert claim(store, "k", "b", T0 + timedelta(seconds=12)) is None
    assert store.renew_claim(mine, T0 + timedelta(seconds=9), 10.0) is None  # an old revision
    assert store.get_claim("k") == renewed


def test_an_expired_claim_is_taken_over_once_and_its_owner_learns_it_lost(store: Store) -> None:
    mine = claim(store, "k", "a", T0)
    assert mine is not None
    taken = claim(store, "k", "b", T0 + timedelta(seconds=11))
    assert taken is not None
    assert (taken.owner, taken.previous_owner, taken.takeovers) == ("b", "a", 1)
    assert taken.revision == mine.revision + 1
    assert claim(store, "k", "c", T0 + timedelta(seconds=12)) is None  # b's lease is fresh
    # The old owner can neither renew nor release what is no longer its own.
    assert store.renew_claim(mine, T0 + timedelta(seconds=11), 10.0) is None
    assert not store.release_claim(mine)
    assert store.get_claim("k") == taken


def test_a_claim_whose_process_is_gone_on_this_host_is_free_at_once(store: Store) -> None:
    worker = Worker(store, "conversation", 60.0, owner="me")
    host, _ = process_identity()
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "30"])
    try:
        started = utcnow()  # as a worker records it: after its process started
        assert claim(store, "gone", "dead", utcnow(), 60.0, host=host, pid=dead.pid, owner_started_at=started)
        assert claim(
            store, "live", "alive", utcnow(), 60.0, host=host, pid=alive.pid, owner_started_at=started
        )
        assert claim(
            store, "far", "remote", utcnow(), 60.0, host="elsewhere", pid=dead.pid, owner_started_at=started
        )
        got = worker.claim("gone")
        assert got is not None and got.claim.previous_owner == "dead"
        assert worker.claim("live") is None  # its process lives: wait for it
        assert worker.claim("far") is None  # another host: only the expiry frees it
        assert worker.counts.taken_over == 1 and worker.counts.busy == 2
    finally:
        alive.kill()
        alive.wait()


def test_a_lost_lease_is_noticed_by_the_renewal_and_by_the_clock(store: Store) -> None:
    worker = Worker(store, "conversation", 60.0, owner="me")
    lease = worker.claim("k")
    assert lease is not None and lease.held
    # Another worker takes it over (as if ours had expired while we were cut off).
    assert store.claim_work(
        "k", "conversation", owner="other", host="elsewhere", pid=1, owner_started_at=T0,
        now=utcnow(), lease_s=60.0, is_free=lambda c, now: True,
    )  # fmt: skip
    worker.renew_all()
    assert not lease.held and worker.counts.lost == 1 and worker.holding == 0
    worker.release(lease)  # never deletes the other worker's claim
    got = store.get_claim("k")
    assert got is not None and got.owner == "other"
    # A lease past its expiry by our own clock is not held either (its renewals failed).
    short = Worker(store, "conversation", 0.001, owner="brief").claim("k2")
    assert short is not None
    time.sleep(0.01)
    assert not short.held


def test_release_all_frees_every_claim_for_the_others(store: Store) -> None:
    worker = Worker(store, "conversation", 60.0, owner="me")
    leases = [worker.claim(f"k{i}") for i in range(3)]
    assert all(leases) and worker.holding == 3
    worker.release_all()
    assert worker.holding == 0 and store.claims_of("me") == []
    assert all(claim(store, f"k{i}", "b", utcnow()) for i in range(3))


def test_lease_seconds_defaults_to_three_heartbeats_and_refuses_a_too_short_lease() -> None:
    assert lease_seconds(30.0, {}) == 90.0
    assert lease_seconds(0.5, {LEASE_ENV: "2"}) == 2.0
    for raw in ("0.9", "soon", "inf"):
        with pytest.raises(ValueError, match=LEASE_ENV):
            lease_seconds(0.5, {LEASE_ENV: raw})


RACER = textwrap.dedent(
    """
    import json, sys, time
    from datetime import datetime, timedelta, timezone
    from evaluator.store import open_store
    uri, db, name, start, keys = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])
    won = []
    with open_store(uri, db_name=db) as store:
        while time.time() < start:
            time.sleep(0.001)
        now = datetime.now(timezone.utc)
        for i in range(keys):
            got = store.claim_work(
                f"k{i}", "conversation", owner=name, host="racer-" + name, pid=1,
                owner_started_at=now, now=now, lease_s=60.0,
            )
            if got is not None:
                won.append([f"k{i}", got.takeovers])
    print(json.dumps(won))
    """
)


@pytest.mark.integration
def test_racing_processes_on_nx27017_each_key_has_exactly_one_winner(
    mongo: EmbeddedServer, db_name: str
) -> None:
    """Six processes claim the same keys at the same moment: half of them new, half held by a
    dead worker whose lease ran out (a takeover race). Each key goes to exactly one process."""
    keys = 20
    with open_store(mongo.uri, db_name=db_name) as store:
        store.ensure_indexes()
        expired = utcnow() - timedelta(seconds=120)
        for i in range(0, keys, 2):
            assert claim(store, f"k{i}", "dead", expired, 60.0)
        start = time.time() + 3.0
        racers = [
            subprocess.Popen(
                [sys.executable, "-c", RACER, mongo.uri, db_name, f"w{n}", str(start), str(keys)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for n in range(6)
        ]
        won: dict[str, list[str]] = {}
        for n, proc in enumerate(racers):
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0
            for key, _takeovers in json.loads(out):
                won.setdefault(key, []).append(f"w{n}")
        assert sorted(won) == sorted(f"k{i}" for i in range(keys))
        assert all(len(owners) == 1 for owners in won.values()), won
        for key, (owner,) in won.items():
            stored = store.get_claim(key)
            assert stored is not None and stored.owner == owner
            assert stored.takeovers == (1 if int(key[1:]) % 2 == 0 else 0)
        store.client.drop_database(db_name)
