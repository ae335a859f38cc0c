"""Endpoint replicas: several servers of one model entry (`base_urls`), used as one endpoint.

Why a unit of its own: the runner plays conversations against "an endpoint"; spreading them
over K servers, keeping each on its server, and moving them off a server that died are
decisions about the set of servers, not about one conversation. The runner hands a
`ReplicaSet` each conversation (`play`) and wraps each request (`guard`); everything else here.

- **Spread and stickiness.** A conversation takes the least-loaded live replica (conversations
  playing on it, relative to its capacity; ties go round robin) and plays all its turns there:
  the server keeps that conversation's history cached between turns.
- **Drain.** A request that gave up on a replica (connection refused, repeated 5xx or timeouts,
  after every retry of the policy) drains that replica for the rest of the run: no conversation
  is sent there again, and the conversations on it move, each to the least-loaded live replica,
  continuing from their stored turns (the full history is sent again, as on resume). The turn
  that failed is not stored; it is played on the new replica. When the last replica drains, the
  model stops with one error naming every replica and why it was drained.
- **Same model everywhere.** At start every replica is probed; our servers must agree on
  `MATCHED_METADATA` (the model file's SHA-256, the chat template's, the context size), other
  servers on the model ids their `GET /models` lists, or the run refuses to start naming the
  replica that differs (docs/configuration.md#replicas).
- **Pacing per replica.** Each replica is its own server: its own connection key, so the
  runner gives it its own adaptive limit and rate limits (evaluator/flow_control.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from openai import AsyncOpenAI

from evaluator.client import FatalRequestError, GaveUp
from evaluator.config import ModelEntry
from evaluator.endpoint import PROBE_TIMEOUT_S, Endpoint, EndpointError, probe, public_url
from evaluator.flow_control import FlowControl
from evaluator.plan import SequenceRun
from evaluator.records import ResponseRecord
from evaluator.turn_policy import Send

__all__ = [
    "MATCHED_METADATA",
    "Replica",
    "ReplicaDrained",
    "ReplicaSet",
    "check_same_model",
    "current_limit",
    "guard",
    "probe_all",
    "probe_entry",
    "servers",
]

# What every storybench-serve replica of one entry must report alike: the model file, the chat
# template that formats its prompts, and the context size (it decides where a conversation
# stops as context_exhausted).
MATCHED_METADATA = ("sha256", "chat_template_sha256", "n_ctx")

Play = Callable[[Endpoint, SequenceRun, int, list[ResponseRecord]], Awaitable[None]]
Resume = Callable[[SequenceRun], Awaitable[tuple[int, list[ResponseRecord]]]]
Note = Callable[[str], None]


class ReplicaDrained(Exception):
    """The conversation's replica was drained: the conversation moves to another one."""


class Replica(Endpoint):
    """One server of a replica set: the probed endpoint, with its load and its drain state."""

    def __init__(self, server: Endpoint, owner: ReplicaSet) -> None:
        super().__init__(server.entry, metadata=server.metadata, url=server.url)
        self.server = server
        self.owner = owner
        self.active = 0  # conversations playing on this replica now
        self.drained: str | None = None  # why it was drained; None while it is live

    @property
    def context_window(self) -> int | None:
        return self.server.context_window

    @property
    def max_connections(self) -> int:
        return self.server.max_connections

    @property
    def connection_key(self) -> str:
        return self.server.connection_key

    @property
    def one_model_at_a_time(self) -> bool:
        return self.server.one_model_at_a_time

    async def count_tokens(self, text: str) -> int:
        return await self.server.count_tokens(text)

    def chat_client(self) -> AsyncOpenAI:
        return self.server.chat_client()

    async def aclose(self) -> None:
        await self.server.aclose()


class ReplicaSet(Endpoint):
    """The servers of one entry, seen by the runner as one endpoint of their summed capacity."""

    def __init__(self, entry: ModelEntry, servers: list[Endpoint]) -> None:
        first = servers[0]
        metadata = dict(first.metadata) | {"replicas": [s.replica for s in servers]}
        super().__init__(entry, metadata=metadata, url=first.url)
        self.replicas = [Replica(server, self) for server in servers]
        self._next = 0  # round-robin cursor: where the search for the least loaded starts
        self._changed: asyncio.Condition | None = None  # made in the running loop

    @property
    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.drained is None]

    @property
    def context_window(self) -> int | None:
        windows = [w for w in (r.context_window for r in self.replicas) if w is not None]
        return min(windows) if windows else None

    @property
    def max_connections(self) -> int:
        return sum(r.max_connections for r in self.replicas)

    @property
    def connection_key(self) -> str:
        return "+".join(r.connection_key for r in self.replicas)

    @property
    def one_model_at_a_time(self) -> bool:
        return any(r.one_model_at_a_time for r in self.replicas)

    async def count_tokens(self, text: str) -> int:
        return await (self.live or self.replicas)[0].count_tokens(text)

    def chat_client(self) -> AsyncOpenAI:
        return (self.live or self.replicas)[0].chat_client()

    async def aclose(self) -> None:
        for replica in self.replicas:
            await replica.aclose()

    # ---- choosing and draining ---------------------------------------------------------------

    def choose(self) -> Replica:
        """The live replica with the least load for its capacity; ties go round robin."""
        n = len(self.replicas)
        order = [self.replicas[(self._next + i) % n] for i in range(n)]
        live = [r for r in order if r.drained is None]
        if not live:
            raise ReplicaDrained(self.exhausted())
        best = min(live, key=lambda r: r.active / r.max_connections)  # the first of equals
        self._next = (self.replicas.index(best) + 1) % n
        return best

    def exhausted(self) -> str:
        drained = "; ".join(f"{r.replica} ({r.drained})" for r in self.replicas)
        return f"every replica was drained: {drained}"

    def check(self, replica: Replica, attempts: int = 0) -> None:
        """Raise when `replica` was drained: ReplicaDrained while another replica lives (the
        conversation moves), else an error that stops the model (every replica failed)."""
        if replica.drained is None:
            return
        if self.live:
            raise ReplicaDrained(f"{replica.replica} was drained: {replica.drained}")
        raise FatalRequestError(status=None, message=self.exhausted(), aborts_model=True, attempts=attempts)

    async def drain(self, replica: Replica, reason: str) -> None:
        """No conversation is sent to `replica` again in this run."""
        if replica.drained is None:
            replica.drained = reason
        async with self._condition():
            self._condition().notify_all()

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _take(self) -> Replica | None:
        """A replica for a new conversation, once one has room; None when all are drained."""
        changed = self._condition()
        async with changed:
            await changed.wait_for(
                lambda: not self.live or any(r.active < r.max_connections for r in self.live)
            )
            if not self.live:
                return None
            replica = self.choose()
            replica.active += 1
            return replica

    async def _give(self, replica: Replica) -> None:
        changed = self._condition()
        async with changed:
            replica.active -= 1
            changed.notify_all()

    async def play(
        self,
        item: SequenceRun,
        start: int,
        done: list[ResponseRecord],
        play: Play,
        resume: Resume,
        note: Note | None = None,
    ) -> None:
        """Play one conversation on one replica; if that replica is drained, go on from the
        stored turns (`resume`) on another, telling `note` about the move. Returns without
        playing once every replica is drained: the model has stopped and its message says why."""
        while True:
            replica = await self._take()
            if replica is None:
                return
            try:
                await play(replica, item, start, done)
                return
            except ReplicaDrained as moved:
                if note is not None:
                    note(
                        f"{self.entry.name} / {item.sequence.name} run {item.run_index}: {moved}; "
                        "the conversation continues on another replica from its stored turns"
                    )
            finally:
                await self._give(replica)
            start, done = await resume(item)


def guard(endpoint: Endpoint, send: Send) -> Send:
    """`send` for a turn played on `endpoint`: on a replica, a request that gave up drains the
    replica and moves the conversation (ReplicaDrained), and no request goes to a replica that
    was drained meanwhile. Any other endpoint's `send` is returned unchanged."""
    if not isinstance(endpoint, Replica):
        return send
    replica = endpoint

    async def guarded(params: dict[str, Any]) -> Any:
        replica.owner.check(replica)
        try:
            return await send(params)
        except GaveUp as exc:
            await replica.owner.drain(replica, str(exc))
            replica.owner.check(replica, exc.attempts)
            raise  # unreachable: check raises for a drained replica

    return guarded


def servers(endpoint: Endpoint) -> list[Endpoint]:
    """The servers behind `endpoint`, each paced on its own: the replicas of a set, or itself."""
    return list(endpoint.replicas) if isinstance(endpoint, ReplicaSet) else [endpoint]


def current_limit(flows: dict[str, FlowControl], endpoint: Endpoint) -> int | None:
    """Requests `endpoint` may have in flight now (shown in the progress line): a set's live
    replicas' adaptive limits summed."""
    keys = [s.connection_key for s in servers(endpoint) if not (isinstance(s, Replica) and s.drained)]
    limits = [flows[key].limit.limit for key in keys if key in flows]
    return sum(limits) if limits else None


# ---- probing --------------------------------------------------------------------------------


async def probe_entry(entry: ModelEntry) -> Endpoint:
    """The entry's endpoint: a `ReplicaSet` of its probed `base_urls` once they are checked to
    serve the same model, else the one probed endpoint."""
    urls = entry.replica_urls
    if len(urls) == 1:
        return await probe(entry, urls[0])
    found = await asyncio.gather(*(probe(entry, url) for url in urls))
    await check_same_model(entry, list(found))
    return ReplicaSet(entry, list(found))


async def probe_all(entries: list[ModelEntry]) -> dict[str, Endpoint]:
    """Every entry's endpoint, by entry name, probed concurrently."""
    endpoints = await asyncio.gather(*(probe_entry(entry) for entry in entries))
    return {entry.name: endpoint for entry, endpoint in zip(entries, endpoints, strict=True)}


async def check_same_model(entry: ModelEntry, found: list[Endpoint]) -> None:
    """Raise EndpointError naming the first replica that serves something else than the first.

    Our servers are compared on MATCHED_METADATA. Servers without our metadata (llama-server,
    vLLM, a hosted API) are compared on the model ids their `GET /models` lists; one whose list
    cannot be read is not compared (nothing to compare on), one that does not answer at all is
    an error. Our servers and others are not mixed.
    """
    where = f"model '{entry.name}'"
    ours = [e for e in found if e.metadata]
    others = [e for e in found if not e.metadata]
    listed = await asyncio.gather(*(_listed_models(entry, e.url) for e in others))
    if ours and others:
        other = others[0]
        raise EndpointError(
            f"{where}: replica {ours[0].replica} is a storybench-serve server and {other.replica} is "
            "not, so their model files cannot be compared; list replicas of one kind in base_urls"
        )
    if ours:
        first = ours[0]
        for other in ours[1:]:
            for field in MATCHED_METADATA:
                mine, theirs = first.metadata.get(field), other.metadata.get(field)
                if mine != theirs:
                    raise EndpointError(
                        f"{where}: replica {other.replica} serves a different model than "
                        f"{first.replica}: {field} is {theirs!r} there and {mine!r} on the first "
                        "replica; every replica in base_urls must serve the same model file with "
                        "the same chat template and context size"
                    )
        return
    compared = [(e, ids) for e, ids in zip(others, listed, strict=True) if ids is not None]
    for other, ids in compared[1:]:
        first, first_ids = compared[0]
        if ids != first_ids:
            raise EndpointError(
                f"{where}: replica {other.replica} lists the models {sorted(ids)} and "
                f"{first.replica} lists {sorted(first_ids)}; every replica in base_urls must "
                "serve the same model"
            )


async def _listed_models(entry: ModelEntry, url: str) -> frozenset[str] | None:
    """The ids in the server's OpenAI `GET /models` list; None when it cannot be read.
    Raises EndpointError when nothing answers there: an unreachable replica cannot be checked."""
    key = entry.api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
            response = await client.get(url.rstrip("/") + "/models", headers=headers)
        body = response.json() if response.status_code == 200 else None
    except httpx.TransportError as exc:
        raise EndpointError(
            f"model '{entry.name}': replica {public_url(url)} does not answer ({type(exc).__name__}), "
            "so it cannot be checked to serve the same model; start it or remove it from base_urls"
        ) from exc
    except (httpx.HTTPError, ValueError):
        return None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return None
    return frozenset(str(m["id"]) for m in data if isinstance(m, dict) and "id" in m)
