"""The runner with a worker's claims, against an endpoint mocked at the HTTP transport (respx):
a conversation another live worker holds is never requested, one whose lease ran out is taken
over and continued from its stored turns, and a lost lease stops the conversation unwritten."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx

from evaluator.client import RetryPolicy
from evaluator.config import ModelEntry, PromptTurn, Sequence
from evaluator.plan import build_plan
from evaluator.records import ResponseRecord, utcnow
from evaluator.runner import RunAborted, Runner, conversation_claim
from evaluator.store import Store, StoreUnavailableError
from evaluator.workers import Worker
from tests.support.documents import make_response
from tests.support.memory_store import memory_store
from tests.support.sse import sse

BASE = "http://hosted.test/v1"
FAST = RetryPolicy(max_attempts=3, max_total_wait_s=30, initial_backoff_s=0.01, max_backoff_s=0.05)


def entry() -> ModelEntry:
    return ModelEntry(name="hosted", base_url=BASE, model="m-1", max_tokens=50, seed=7, min_output_tokens=16)


def saga(n_turns: int = 3) -> Sequence:
    turns = [PromptTurn(name=f"t{i}", text=f"Write part {i}.") for i in range(n_turns)]
    return Sequence(name="saga", system="You are a novelist.", turns=turns)


def runner(store: Store, worker: Worker, n_turns: int = 3) -> Runner:
    plan = build_plan([entry()], [saga(n_turns)], 1)
    return Runner(plan, store, "run-me", {}, FAST, 4, worker=worker)


def stored_turn(runner: Runner, index: int, run_id: str = "run-other") -> ResponseRecord:
    """Turn `index` of the plan's conversation as another worker would have stored it."""
    item = runner.plan.items[0]
    return make_response(
        index, exp_key=item.experiment_key, model=item.model.name, sequence=item.sequence.name,
        run_id=run_id, text=f"Part {index}.",
    )  # fmt: skip


def held_by_other(store: Store, key: str, lease_s: float) -> None:
    now = utcnow()
    assert store.claim_work(
        key, "conversation", owner="run-other", host="elsewhere", pid=1, owner_started_at=now,
        now=now, lease_s=lease_s,
    )  # fmt: skip


def turn_indexes(store: Store) -> list[int]:
    return sorted(d["turn_index"] for d in store.db["responses"].find({}))


@respx.mock
def test_a_conversation_held_by_a_live_worker_is_waited_for_and_never_requested() -> None:
    route = respx.post(f"{BASE}/chat/completions").mock(side_effect=lambda req: sse("An answer."))
    store = memory_store()
    worker = Worker(store, "conversation", 5.0, owner="run-me", poll_s=0.05)
    play = runner(store, worker)
    key = conversation_claim(play.plan.items[0])
    held_by_other(store, key, 30.0)

    def other_finishes() -> None:  # the other worker plays it to the end, then lets go
        time.sleep(0.3)
        for index in range(3):
            store.save_response(stored_turn(play, index))
        claim = store.get_claim(key)
        assert claim is not None and store.release_claim(claim)

    helper = threading.Thread(target=other_finishes)
    helper.start()
    stats = asyncio.run(play.run())
    helper.join()
    assert route.call_count == 0
    assert stats["hosted"].done == stats["hosted"].total == 3 and stats["hosted"].written == 0
    assert play.conversations_done == 0  # the other worker's
    assert worker.counts.busy >= 1 and worker.holding == 0
    assert store.get_claim(key) is None  # looked at under a claim, then released


@respx.mock
def test_an_expired_claim_is_taken_over_and_continued_from_its_stored_turns() -> None:
    sent: list[tuple[float, int]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append((time.time(), len(json.loads(request.content)["messages"])))
        return sse("An answer.")

    respx.post(f"{BASE}/chat/completions").mock(side_effect=answer)
    store = memory_store()
    worker = Worker(store, "conversation", 5.0, owner="run-me", poll_s=0.05)
    play = runner(store, worker)
    key = conversation_claim(play.plan.items[0])
    held_by_other(store, key, 0.4)  # a worker that dies after storing turn 0
    store.save_response(stored_turn(play, 0))
    expires = store.get_claim(key)
    assert expires is not None
    asyncio.run(play.run())
    # Nothing was asked before the dead worker's lease ran out; then turns 1 and 2, with the
    # stored turn 0 in their history.
    assert [n for _, n in sent] == [4, 6]
    assert sent[0][0] >= expires.expires_at.timestamp()
    assert turn_indexes(store) == [0, 1, 2] and play.conversations_done == 1
    assert worker.counts.taken_over == 1 and store.get_claim(key) is None


@respx.mock
def test_a_lost_lease_stops_the_conversation_before_its_next_write() -> None:
    store = memory_store()
    worker = Worker(store, "conversation", 30.0, owner="run-me")
    play = runner(store, worker)
    key = conversation_claim(play.plan.items[0])
    calls: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        if len(calls) == 2:
            # While turn 1 is in flight, another worker takes the conversation over (our lease
            # ran out while we were cut off) and our next renewal finds it gone.
            assert store.claim_work(
                key, "conversation", owner="run-other", host="elsewhere", pid=1,
                owner_started_at=utcnow(), now=utcnow(), lease_s=30.0, is_free=lambda c, now: True,
            )  # fmt: skip
            worker.renew_all()
        return sse("An answer.")

    respx.post(f"{BASE}/chat/completions").mock(side_effect=answer)
    stats = asyncio.run(play.run())
    assert len(calls) == 2  # turn 2 was never asked for
    assert turn_indexes(store) == [0]  # turn 1's answer was not written
    assert play.leases_lost == 1 and play.conversations_done == 0
    assert any("claim on the conversation ran out" in m for m in stats["hosted"].messages)
    claim = store.get_claim(key)
    assert claim is not None and claim.owner == "run-other"  # our release left it alone


@respx.mock
def test_each_conversation_is_claimed_while_played_and_released_after() -> None:
    store = memory_store()
    worker = Worker(store, "conversation", 30.0, owner="run-me")
    play = runner(store, worker)
    key = conversation_claim(play.plan.items[0])
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        claim = store.get_claim(key)
        seen.append(None if claim is None else claim.owner)
        return sse("An answer.")

    respx.post(f"{BASE}/chat/completions").mock(side_effect=answer)
    asyncio.run(play.run())
    assert seen == ["run-me"] * 3
    assert store.get_claim(key) is None and play.conversations_done == 1
    assert store.claims_of("run-me") == [] and worker.counts.claimed == 1


def test_lease_expiry_is_three_heartbeats_by_default() -> None:
    from evaluator.evaluate import Evaluation

    evaluation = Evaluation([entry()], [saga()], entry_settings(), 1, 1, heartbeat_s=2.0)
    assert evaluation.lease_seconds == 6.0
    assert Evaluation([entry()], [saga()], entry_settings(), 1, 1, lease_s=9.0).lease_seconds == 9.0
    assert timedelta(seconds=evaluation.lease_seconds) > timedelta(seconds=2 * evaluation.heartbeat_s)


def entry_settings() -> Any:
    from evaluator.config import EvalSettings

    return EvalSettings()


@respx.mock
def test_a_claim_the_database_refuses_stops_the_run_like_a_failed_write() -> None:
    route = respx.post(f"{BASE}/chat/completions").mock(side_effect=lambda req: sse("An answer."))

    class GoneStore(Store):
        def claim_work(self, *args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailableError("the database at memory stopped answering while claiming")

    store = memory_store(GoneStore)
    play = runner(store, Worker(store, "conversation", 30.0, owner="run-me"))
    with pytest.raises(RunAborted, match="stopped answering while claiming"):
        asyncio.run(play.run())
    assert route.call_count == 0  # nothing is asked for a conversation that is not ours
