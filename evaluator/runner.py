"""Plays the plan: conversations turn by turn, full history every turn, every turn stored.

Turns of one conversation are strictly in order. Conversations run concurrently, bounded per
endpoint and overall; an endpoint that is our local llama-cpp-python server is served model by
model, because it holds one model and one conversation's cached prefix at a time. A conversation
holds its endpoint slot for all of its turns, so its prefix stays cached between turns.

Resume is driven by the store: finished turns are read back, the history is rebuilt from them,
and the conversation continues at the first missing turn.

With a `Worker` (evaluator/workers.py; `evaluate` always gives one), each conversation is claimed
in the store before its first request and released after its last, so several `run` processes on
the same configuration share the plan: a conversation another live worker holds is waited for
outside the concurrency slots, then found finished (or taken over, once its worker died, and
continued from its stored turns). A lost lease stops the conversation before the next request
and before the next write.

About 460 lines on purpose: scheduling, the claim around each conversation and the turn loop are
one flow, read top to bottom (the bounded helpers the judges share sit at the top).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from evaluator.budget import count_prompt_tokens
from evaluator.client import RetryPolicy, chat_with_retries
from evaluator.config import ModelEntry
from evaluator.endpoint import Endpoint
from evaluator.flow_control import AdaptiveLimit, FlowControl
from evaluator.plan import Plan, SequenceRun
from evaluator.records import (
    FINAL_OUTCOMES,
    SEQUENCE_ENDING_OUTCOMES,
    ResponseRecord,
    response_id,
    sequence_run_id,
    utcnow,
)
from evaluator.replicas import ReplicaSet, current_limit, guard, servers
from evaluator.store import Store, StoreError
from evaluator.store_writer import StoreWriter
from evaluator.turn_policy import decide_turn
from evaluator.turn_record import TurnContext, assistant_texts, redact, turn_record
from evaluator.workers import Lease, Worker, claimed


@dataclass
class ModelStats:
    total: int = 0
    done: int = 0  # turns finished (this run or earlier), including turns skipped after an end
    written: int = 0
    reused: int = 0  # turns stored by earlier runs of the same plan, kept (not asked again)
    concurrency_limit: int | None = None  # the endpoint's adaptive limit after the last turn
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    completion_tokens: int = 0
    generation_s: float = 0.0
    ttfts: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0
    priced: bool = False  # some turn had a known cost (a free model costs $0, not "-")
    aborted: str | None = None
    messages: list[str] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float | None:
        return self.completion_tokens / self.generation_s if self.generation_s > 0 else None

    @property
    def errors(self) -> int:
        return self.outcomes.get("error", 0)


def history_messages(sequence_system: str | None, done: list[ResponseRecord]) -> list[dict[str, str]]:
    """Rebuild the conversation from stored turns: the model's own earlier answers included."""
    messages: list[dict[str, str]] = []
    if sequence_system:
        messages.append({"role": "system", "content": sequence_system})
    for turn in sorted(done, key=lambda t: t.turn_index):
        messages.append({"role": "user", "content": turn.prompt})
        messages.append({"role": "assistant", "content": turn.response_text})
    return messages


def resume_point(item: SequenceRun, stored: list[ResponseRecord]) -> tuple[int, list[ResponseRecord]]:
    """First turn still to play, and the finished turns before it. len(turns) means complete."""
    by_index = {t.turn_index: t for t in stored if t.outcome in FINAL_OUTCOMES}
    done: list[ResponseRecord] = []
    for index in range(len(item.sequence.turns)):
        turn = by_index.get(index)
        if turn is None:
            return index, done
        if turn.outcome in SEQUENCE_ENDING_OUTCOMES:
            return len(item.sequence.turns), done
        done.append(turn)
    return len(item.sequence.turns), done


T = TypeVar("T")


async def run_all(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; the first failure cancels the rest and propagates (like a TaskGroup)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def run_bounded(items: Iterable[T], work: Callable[[T], Awaitable[None]], limit: int) -> None:
    """`work(item)` for every item, at most `limit` at a time, with `run_all`'s failure rule.
    The judge and the pairwise judge drive their requests through this."""
    gate = asyncio.Semaphore(max(1, limit))

    async def bounded(item: T) -> None:
        async with gate:
            await work(item)

    await run_all(bounded(item) for item in items)


@contextlib.asynccontextmanager
async def holding(*semaphores: asyncio.Semaphore) -> AsyncIterator[None]:
    """All of `semaphores`, acquired in order, released in reverse."""
    async with contextlib.AsyncExitStack() as stack:
        for semaphore in semaphores:
            await stack.enter_async_context(semaphore)
        yield


async def share_bounded(
    items: Iterable[T],
    work: Callable[[T], Awaitable[None]],
    limit: int,
    worker: Worker | None,
    key: Callable[[T], str],
    done: Callable[[T], bool],
) -> None:
    """`run_bounded` shared with other workers: each item is claimed first (evaluator/workers.py);
    one another live worker holds is waited for outside the `limit` slots; one `done(item)`
    says is finished (checked in a thread once claimed) is skipped. The judge and the pairwise
    judge share their work through this. Without a worker, plain `run_bounded`."""
    if worker is None:
        await run_bounded(items, work, limit)
        return
    gate = asyncio.Semaphore(max(1, limit))

    async def one(item: T) -> None:
        async def attempt(lease: Lease) -> None:
            if not await worker.call(done, item):
                await work(item)

        await claimed(worker, key(item), lambda: holding(gate), attempt)

    await run_all(one(item) for item in items)


def conversation_claim(item: SequenceRun) -> str:
    """The claim key of one conversation of the plan (its sequence-run id)."""
    conversation = sequence_run_id(item.experiment_key, item.model.name, item.sequence.name, item.run_index)
    return f"conversation:{conversation}"


def settled_turns(item: SequenceRun, stored: list[ResponseRecord]) -> int:
    """Turns of the conversation that need nothing more (all of them once it ended)."""
    start, _ = resume_point(item, stored)
    return min(start, len(item.sequence.turns))


class RunAborted(Exception):
    """Stops the whole run (e.g. the database went away)."""


class Runner:
    """Plays a plan's conversations against their endpoints and stores every turn."""

    def __init__(
        self,
        plan: Plan,
        store: Store,
        run_id: str,
        endpoints: dict[str, Endpoint],
        policy: RetryPolicy,
        concurrency: int,
        on_progress: Callable[[str, ModelStats], None] | None = None,
        worker: Worker | None = None,
    ) -> None:
        self.plan = plan
        self.worker = worker  # claims each conversation when set (cooperating workers)
        self.conversations_done = 0  # conversations this process played to their end
        self.leases_lost = 0  # conversations given up because another worker took them over
        self.store = store
        self.run_id = run_id
        self.policy = policy
        self.concurrency = max(1, concurrency)
        self.on_progress = on_progress or (lambda name, stats: None)
        self.endpoints = {m.name: endpoints.get(m.name) or Endpoint(m) for m in plan.models}
        self.store_failed: str | None = None  # why the first failed write failed
        self.writer = StoreWriter()  # closed when `run` ends: one run per Runner
        self.stats: dict[str, ModelStats] = {m.name: ModelStats(total=plan.turns_for(m)) for m in plan.models}
        self.flows: dict[str, FlowControl] = {}  # connection key -> its pacing (flow_control.py)
        self._credited: dict[tuple[str, str, str, int], int] = {}  # conversation -> settled turns counted

    # ---- scheduling -------------------------------------------------------------------------

    async def run(self) -> dict[str, ModelStats]:
        try:
            return await self._run()
        finally:
            self.writer.close()

    async def _run(self) -> dict[str, ModelStats]:
        keys = sorted({i.experiment_key for i in self.plan.items})
        # Store calls never run on the event loop: a database round trip would stall the other
        # conversations' streams (and their measured latency).
        stored = await asyncio.to_thread(self.store.done_turns, keys)
        pending: dict[str, list[tuple[SequenceRun, int, list[ResponseRecord]]]] = defaultdict(list)
        for item in self.plan.items:
            start, done = resume_point(item, stored.get(item.key, []))
            stats = self.stats[item.model.name]
            stats.reused += sum(1 for r in stored.get(item.key, []) if r.outcome != "error")
            self._credited[item.key] = settled_turns(item, stored.get(item.key, []))
            stats.done += self._credited[item.key]
            if start < len(item.sequence.turns):
                pending[item.model.name].append((item, start, done))
        for name, stats in self.stats.items():
            self.on_progress(name, stats)

        overall = asyncio.Semaphore(self.concurrency)
        # Models behind one endpoint that holds one model at a time are played one after another.
        groups: dict[str, list[Endpoint]] = defaultdict(list)
        limits: dict[str, int] = {}
        for model in self.plan.models:
            endpoint = self.endpoints[model.name]
            key = endpoint.connection_key
            groups[key if endpoint.one_model_at_a_time else f"{key}|{model.name}"].append(endpoint)
            limits[key] = min(limits.get(key, endpoint.max_connections), endpoint.max_connections)
        bounds = {key: asyncio.Semaphore(limit) for key, limit in limits.items()}
        for model in self.plan.models:
            for endpoint in servers(self.endpoints[model.name]):  # each replica paced on its own
                if endpoint.connection_key not in self.flows:
                    limit = limits.get(endpoint.connection_key, endpoint.max_connections)
                    self.flows[endpoint.connection_key] = FlowControl(
                        AdaptiveLimit(start=min(limit, self.concurrency), maximum=limit),
                        requests_per_minute=model.requests_per_minute,
                        tokens_per_minute=model.tokens_per_minute,
                    )

        async def play_model(endpoint: Endpoint) -> None:
            bound = bounds[endpoint.connection_key]
            try:
                await run_all(
                    self._bounded(overall, bound, endpoint, item, start, done)
                    for item, start, done in pending.get(endpoint.entry.name, [])
                )
            finally:
                await endpoint.aclose()

        async def play_group(endpoints: list[Endpoint]) -> None:
            for endpoint in endpoints:
                await play_model(endpoint)

        await run_all(play_group(endpoints) for endpoints in groups.values())
        if self.worker is not None:
            # Other workers finished conversations this one never played or lost: the stored
            # turns say what is settled, whoever wrote them.
            stored = await asyncio.to_thread(self.store.done_turns, keys)
            for item in self.plan.items:
                self._credit(item, stored.get(item.key, []))
            for name, stats in self.stats.items():
                self.on_progress(name, stats)
        return self.stats

    def _credit(self, item: SequenceRun, stored: list[ResponseRecord]) -> None:
        """Count the turns of `item` settled by other workers since we last looked."""
        settled = settled_turns(item, stored)
        before = self._credited.get(item.key, 0)
        if settled > before:
            self.stats[item.model.name].done += settled - before
            self._credited[item.key] = settled

    async def _bounded(
        self,
        overall: asyncio.Semaphore,
        bound: asyncio.Semaphore,
        endpoint: Endpoint,
        item: SequenceRun,
        start: int,
        done: list[ResponseRecord],
    ) -> None:
        if self.worker is None:
            async with bound, overall:
                await self.play_conversation(endpoint, item, start, done)
            return

        lease_holder = self.worker

        async def play_claimed(lease: Lease) -> None:
            # Read again under the claim: another worker may have played it meanwhile.
            ids = [
                response_id(item.experiment_key, item.model.name, item.sequence.name, item.run_index, t)
                for t in range(len(item.sequence.turns))
            ]
            stored = await lease_holder.call(self.store.responses_by_ids, ids)
            self._credit(item, stored)
            start, done = resume_point(item, stored)
            if start >= len(item.sequence.turns):
                self.on_progress(item.model.name, self.stats[item.model.name])
                return
            await self.play_conversation(endpoint, item, start, done, lease)

        key = conversation_claim(item)
        try:
            await claimed(self.worker, key, lambda: holding(bound, overall), play_claimed)
        except StoreError as exc:  # a claim or a read under it: the database is gone, as for a write
            self.store_failed = self.store_failed or str(exc)
            self.worker.store_gone = True  # its claims expire; releasing them would only wait
            raise RunAborted(str(exc)) from exc

    # ---- one conversation ---------------------------------------------------------------------

    async def play_conversation(
        self,
        endpoint: Endpoint,
        item: SequenceRun,
        start: int,
        done: list[ResponseRecord],
        lease: Lease | None = None,
    ) -> None:
        """Play from turn `start`; with a `lease`, only while it is held (checked before each
        request and before each write)."""
        if isinstance(endpoint, ReplicaSet):  # on one replica, moved when it drains (replicas.py)
            replay = functools.partial(self.play_conversation, lease=lease)
            note = self.stats[endpoint.entry.name].messages.append
            await endpoint.play(item, start, done, replay, self._resume, note)
            return
        entry = endpoint.entry
        stats = self.stats[entry.name]
        messages = history_messages(item.sequence.system, done)
        turns = item.sequence.turns
        for index in range(start, len(turns)):
            if stats.aborted or self._lease_lost(lease, item, index):
                return
            turn = turns[index]
            messages.append({"role": "user", "content": turn.text})
            record = await self.play_turn(endpoint, item, index, messages)
            if self.store_failed is not None:  # another conversation's write already failed
                raise RunAborted(self.store_failed)
            if self._lease_lost(lease, item, index):
                return
            try:
                await self.writer.write(self.store.save_response, record)
            except Exception as exc:  # the store raises StoreError; anything else is as fatal
                # The first failed write stops the run (evaluator/store_writer.py).
                self.store_failed = str(exc)
                if self.worker is not None:  # its claims expire; releasing them would only wait
                    self.worker.store_gone = True
                raise RunAborted(str(exc)) from exc
            self._account(stats, entry, record)
            self._credited[item.key] = max(self._credited.get(item.key, 0), index + 1)
            if record.outcome != "ok":
                # The rest of this conversation cannot be played: count it as settled for progress.
                if record.outcome in SEQUENCE_ENDING_OUTCOMES:
                    stats.done += len(turns) - index - 1
                    self._settled(item)
                self.on_progress(entry.name, stats)
                return
            messages.append({"role": "assistant", "content": record.response_text})
            self.on_progress(entry.name, stats)
        self._settled(item)

    async def _resume(self, item: SequenceRun) -> tuple[int, list[ResponseRecord]]:
        """Where a conversation moved off a drained replica goes on: from its stored turns."""
        key = (item.experiment_key, item.model.name, item.sequence.name, item.run_index)
        ids = [response_id(*key, t) for t in range(len(item.sequence.turns))]
        return resume_point(item, await asyncio.to_thread(self.store.responses_by_ids, ids))

    def _settled(self, item: SequenceRun) -> None:
        self.conversations_done += 1
        self._credited[item.key] = len(item.sequence.turns)

    def _lease_lost(self, lease: Lease | None, item: SequenceRun, index: int) -> bool:
        """True (and noted once) when our claim on the conversation is gone: another worker
        owns it now, so nothing more is requested or written for it here."""
        if lease is None or lease.held:
            return False
        self.leases_lost += 1
        self.stats[item.model.name].messages.append(
            f"{item.model.name} / {item.sequence.name} run {item.run_index} turn {index + 1}: "
            "this worker's claim on the conversation ran out (the database did not take its "
            "renewals in time); another worker continues it"
        )
        return True

    def flow_snapshot(self) -> dict[str, dict[str, Any]]:
        """Per endpoint (connection key): the adaptive limit now, its lowest, how often it was
        halved, the most requests seen in flight, and the rate limits; stored with the run."""
        return {key: flow.snapshot() for key, flow in self.flows.items()}

    def _account(self, stats: ModelStats, entry: ModelEntry, rec: ResponseRecord) -> None:
        stats.concurrency_limit = current_limit(self.flows, self.endpoints[entry.name])
        stats.done += 1
        stats.written += 1
        stats.outcomes[rec.outcome] += 1
        if rec.completion_tokens and rec.latency_s:
            stats.completion_tokens += rec.completion_tokens
            stats.generation_s += rec.latency_s - (rec.ttft_s or 0.0)
        if rec.ttft_s is not None:
            stats.ttfts.append(rec.ttft_s)
        if rec.prompt_tokens:
            stats.prompt_tokens += rec.prompt_tokens
            stats.cached_tokens += rec.cached_tokens or 0
        if rec.cost_usd is not None:
            stats.cost_usd += rec.cost_usd
            stats.priced = True
        if rec.outcome != "ok" and rec.error:
            stats.messages.append(
                f"{entry.name} / {rec.sequence} run {rec.run_index} turn {rec.turn_index + 1}: "
                f"{rec.outcome}: {rec.error}"
            )

    async def play_turn(
        self, endpoint: Endpoint, item: SequenceRun, index: int, messages: list[dict[str, str]]
    ) -> ResponseRecord:
        """Count, decide (evaluator/turn_policy.py), record (evaluator/turn_record.py)."""
        entry = endpoint.entry
        ctx = TurnContext(
            item, index, self.run_id, len(messages), utcnow(), assistant_texts(messages), endpoint.replica
        )
        try:
            prompt_tokens = await count_prompt_tokens(messages, endpoint.count_tokens)
        except Exception:  # a tokenizer hiccup must not lose the turn: fall back to the estimate
            prompt_tokens = await count_prompt_tokens(messages, None)
        client = endpoint.chat_client()

        flow = self.flows.get(endpoint.connection_key)

        async def send(params: dict[str, Any]) -> Any:
            tokens = prompt_tokens + int(params.get("max_tokens") or 0)
            return await chat_with_retries(client, entry.model, messages, params, self.policy, flow, tokens)

        result = await decide_turn(
            guard(endpoint, send),  # a replica that gave up is drained (evaluator/replicas.py)
            entry.generation_params(item.run_index),
            prompt_tokens,
            wanted_tokens=entry.max_tokens,
            context_window=endpoint.context_window,
            min_output_tokens=entry.min_output_tokens,
        )
        if result.aborts_model:
            self.stats[entry.name].aborted = redact(
                f"{entry.name}: {result.error} (stopped this model: every request would fail alike)",
                entry.api_key(),
            )
        return turn_record(ctx, result, entry)
