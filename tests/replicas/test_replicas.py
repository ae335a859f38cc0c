"""Endpoint replicas (evaluator/replicas.py) with every server mocked at the HTTP transport (respx):
spread, stickiness, drain and continuation from the stored turns, the same-model check at
start, the replica recorded per turn, pacing per replica, and the config field."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

import httpx
import pytest
import respx

from evaluator.client import FatalRequestError, RetryPolicy
from evaluator.config import ModelEntry, PromptTurn, Sequence
from evaluator.endpoint import Endpoint, EndpointError, public_url
from evaluator.plan import build_plan, model_config_hashes
from evaluator.replicas import ReplicaDrained, ReplicaSet, guard, probe_all
from evaluator.runner import Runner
from evaluator.store import Store
from tests.support.memory_store import memory_store
from tests.support.sse import sse

A = "http://replica-a.test/v1"
B = "http://replica-b.test/v1"
FAST = RetryPolicy(max_attempts=3, max_total_wait_s=30, initial_backoff_s=0.01, max_backoff_s=0.02)


def entry(urls: list[str] | None = None, **kw: Any) -> ModelEntry:
    fields: dict[str, Any] = {
        "name": "m",
        "base_urls": urls or [A, B],
        "model": "m-1",
        "max_tokens": 50,
        "seed": 7,
        "min_output_tokens": 16,
    }
    return ModelEntry(**fields | kw)


def sequence(n_turns: int = 3) -> Sequence:
    turns = [PromptTurn(name=f"t{i}", text=f"Write part {i}.") for i in range(n_turns)]
    return Sequence(name="saga", system="You are a novelist.", turns=turns)


def hosted_set(model: ModelEntry) -> ReplicaSet:
    return ReplicaSet(model, [Endpoint(model, url=url) for url in model.replica_urls])


def play(model: ModelEntry, store: Store, *, runs: int, turns: int = 3) -> Runner:
    plan = build_plan([model], [sequence(turns)], runs)
    runner = Runner(plan, store, "run-test", {model.name: hosted_set(model)}, FAST, concurrency=8)
    asyncio.run(runner.run())
    return runner


def stored(store: Store) -> list[dict[str, Any]]:
    return sorted(store.db["responses"].find({}), key=lambda d: (d["run_index"], d["turn_index"]))


class Servers:
    """Both replicas' chat routes; each answer names its server, conversation (seed) and turn."""

    def __init__(self, failing: dict[str, Any] | None = None) -> None:
        self.seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.failing = failing or {}  # url -> predicate(body) that makes the request fail
        for url in (A, B):
            respx.post(f"{url}/chat/completions").mock(side_effect=self._answer(url))

    def _answer(self, url: str) -> Any:
        def answer(request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content)
            self.seen[url].append(body)
            fails = self.failing.get(url)
            if fails is not None and fails(body):
                raise httpx.ConnectError("connection refused", request=request)
            turn = sum(1 for m in body["messages"] if m["role"] == "user") - 1
            return sse(f"{url[7:16]} seed {body['seed']} turn {turn}")

        return answer


@respx.mock
def test_conversations_are_spread_and_each_stays_on_its_replica() -> None:
    servers = Servers()
    store = memory_store()
    play(entry(max_concurrency=2), store, runs=4)

    seeds = {url: {b["seed"] for b in bodies} for url, bodies in servers.seen.items()}
    assert len(seeds[A]) == 2 and len(seeds[B]) == 2  # least-loaded: two conversations each
    assert not seeds[A] & seeds[B]  # no conversation ever touched both servers
    assert len(servers.seen[A]) == len(servers.seen[B]) == 6  # every turn of its conversations
    docs = stored(store)
    assert len(docs) == 12 and all(d["outcome"] == "ok" for d in docs)
    for doc in docs:  # each turn records the server that answered it, and that server's answer
        assert doc["replica"] == (A if doc["seed"] in seeds[A] else B)
        assert doc["response_text"].startswith(doc["replica"][7:16])
        assert doc["endpoint"] == A  # the entry's first URL, as for a single base_url


@respx.mock
def test_a_failed_replica_is_drained_and_its_conversations_continue_elsewhere_from_the_stored_turns() -> None:
    # Replica A answers each conversation's first turn, then refuses every connection.
    servers = Servers(failing={A: lambda body: len(body["messages"]) > 2})
    store = memory_store()
    runner = play(entry(max_concurrency=1), store, runs=2)

    on_a = {b["seed"] for b in servers.seen[A] if len(b["messages"]) == 2}
    assert len(on_a) == 1  # one conversation started on A (the other on B)
    (moved,) = on_a
    assert len([b for b in servers.seen[A] if b["seed"] == moved]) == 1 + FAST.max_attempts
    docs = stored(store)
    assert [d["outcome"] for d in docs] == ["ok"] * 6  # the failed attempt was not stored
    turns = [d for d in docs if d["seed"] == moved]
    assert [d["turn_index"] for d in turns] == [0, 1, 2]
    assert [d["replica"] for d in turns] == [A, B, B]
    # B got the whole history, A's answer included, read back from the store.
    resent = next(b for b in servers.seen[B] if b["seed"] == moved and len(b["messages"]) == 4)
    assert resent["messages"][2] == {"role": "assistant", "content": turns[0]["response_text"]}
    assert all(t["messages_sent"] == 2 * t["turn_index"] + 2 for t in turns)
    assert runner.stats["m"].done == runner.stats["m"].total == 6
    assert not runner.stats["m"].aborted
    (note,) = runner.stats["m"].messages  # the move is reported with the run's summary
    assert note.startswith(f"m / saga run {moved - 7}: {A} was drained: gave up after 3 attempt(s)")
    # After the drain, no conversation is sent to A again.
    assert all(b["seed"] == moved for b in servers.seen[A])


@respx.mock
def test_every_replica_drained_stops_the_model_naming_each_replica() -> None:
    Servers(failing={A: lambda body: True, B: lambda body: True})
    store = memory_store()
    runner = play(entry(max_concurrency=1), store, runs=3, turns=2)

    message = runner.stats["m"].aborted
    assert message is not None and "every replica was drained" in message
    assert A in message and B in message and "connection refused" in message
    errors = stored(store)
    assert errors and all(d["outcome"] == "error" for d in errors)  # retried on resume
    assert runner.stats["m"].done < runner.stats["m"].total


@respx.mock
def test_each_replica_is_paced_on_its_own() -> None:
    Servers()
    runner = play(entry(max_concurrency=3, requests_per_minute=600), memory_store(), runs=2, turns=1)
    flows = runner.flow_snapshot()
    assert set(flows) == {"http://replica-a.test", "http://replica-b.test"}
    assert all(f["maximum"] == 3 and f["requests_per_minute"] == 600 for f in flows.values())
    assert runner.stats["m"].concurrency_limit == 6  # both replicas' limits, shown as one


def test_the_least_loaded_replica_is_chosen_and_equals_go_round_robin() -> None:
    replicas = hosted_set(entry(max_concurrency=2))
    a, b = replicas.replicas
    assert [replicas.choose() for _ in range(3)] == [a, b, a]
    a.active, b.active = 1, 2  # the cursor now points at b, but a has more room
    assert replicas.choose() is a
    # A server with more slots (our server's n_parallel, here max_concurrency) takes more.
    servers = [Endpoint(entry(max_concurrency=8), url=A), Endpoint(entry(max_concurrency=2), url=B)]
    wide = ReplicaSet(entry(), servers)
    big, small = wide.replicas
    big.active, small.active = 3, 1
    assert wide.choose() is big  # 3 of 8 is less loaded than 1 of 2


def test_no_request_goes_to_a_replica_drained_meanwhile() -> None:
    replicas = hosted_set(entry())
    a, b = replicas.replicas
    sent: list[dict[str, Any]] = []

    async def send(params: dict[str, Any]) -> Any:
        sent.append(params)

    async def scenario() -> None:
        await replicas.drain(a, "gave up after 3 attempt(s)")
        with pytest.raises(ReplicaDrained, match="replica-a.test/v1 was drained: gave up"):
            await guard(a, send)({})
        await guard(b, send)({"on": "b"})
        await replicas.drain(b, "gave up")
        with pytest.raises(FatalRequestError, match="every replica was drained") as caught:
            await guard(b, send)({})
        assert caught.value.aborts_model

    asyncio.run(scenario())
    assert sent == [{"on": "b"}]


def test_a_replica_recorded_never_carries_credentials() -> None:
    assert public_url("https://user:s3cret@gpu-1.test:8443/v1?key=abc") == "https://gpu-1.test:8443/v1"
    assert public_url("http://[::1]:8080/v1") == "http://[::1]:8080/v1"
    model = entry([f"http://u:pw@{A[7:]}", B])
    assert [r.replica for r in hosted_set(model).replicas] == [A, B]


# ---- the same model on every replica ---------------------------------------------------------

OURS_A = "http://127.0.0.1:18081/v1"
OURS_B = "http://127.0.0.1:18082/v1"


def metadata(**kw: Any) -> dict[str, Any]:
    model = {"name": "m-1", "sha256": "aa" * 32, "chat_template_sha256": "cc" * 32, "n_ctx": 2048} | kw
    return {"server": "storybench", "n_parallel": 2, "models": [model]}


def serve_metadata(url: str, body: dict[str, Any]) -> None:
    route = respx.get(url.removesuffix("/v1") + "/storybench/models")
    route.mock(return_value=httpx.Response(200, json=body))


@respx.mock
def test_replicas_serving_the_same_model_file_make_one_set() -> None:
    serve_metadata(OURS_A, metadata())
    serve_metadata(OURS_B, metadata())
    endpoints = asyncio.run(probe_all([entry([OURS_A, OURS_B])]))
    found = endpoints["m"]
    assert isinstance(found, ReplicaSet)
    assert [r.replica for r in found.replicas] == [OURS_A, OURS_B]
    assert found.max_connections == 4 and found.context_window == 2048
    assert found.metadata["sha256"] == "aa" * 32 and found.metadata["replicas"] == [OURS_A, OURS_B]


@respx.mock
@pytest.mark.parametrize(
    ("field", "value"),
    [("sha256", "bb" * 32), ("chat_template_sha256", "dd" * 32), ("n_ctx", 4096)],
)
def test_a_replica_serving_another_model_refuses_the_run_and_is_named(field: str, value: Any) -> None:
    serve_metadata(OURS_A, metadata())
    serve_metadata(OURS_B, metadata(**{field: value}))
    with pytest.raises(EndpointError) as caught:
        asyncio.run(probe_all([entry([OURS_A, OURS_B])]))
    message = str(caught.value)
    assert f"replica {OURS_B} serves a different model than {OURS_A}" in message
    assert field in message and repr(value) in message


@respx.mock
def test_our_server_and_another_server_are_not_mixed() -> None:
    serve_metadata(OURS_A, metadata())
    respx.get("http://127.0.0.1:18082/storybench/models").mock(return_value=httpx.Response(404))
    respx.get(f"{OURS_B}/models").mock(return_value=models_list("m-1"))
    with pytest.raises(EndpointError, match="storybench-serve server and http://127.0.0.1:18082/v1 is not"):
        asyncio.run(probe_all([entry([OURS_A, OURS_B])]))


def models_list(*ids: str) -> httpx.Response:
    return httpx.Response(200, json={"object": "list", "data": [{"id": i, "object": "model"} for i in ids]})


@respx.mock
def test_other_servers_are_compared_on_the_models_they_list() -> None:
    for url in (A, B):
        respx.get(url.removesuffix("/v1") + "/storybench/models").mock(return_value=httpx.Response(404))
    respx.get(f"{A}/models").mock(return_value=models_list("m-1"))
    respx.get(f"{B}/models").mock(return_value=models_list("m-2"))
    with pytest.raises(EndpointError) as caught:
        asyncio.run(probe_all([entry()]))
    assert f"replica {B} lists the models ['m-2'] and {A} lists ['m-1']" in str(caught.value)


@respx.mock
def test_a_replica_whose_model_list_cannot_be_read_is_not_compared() -> None:
    for url in (A, B):
        respx.get(url.removesuffix("/v1") + "/storybench/models").mock(return_value=httpx.Response(404))
    respx.get(f"{A}/models").mock(return_value=models_list("m-1"))
    respx.get(f"{B}/models").mock(return_value=httpx.Response(404))
    found = asyncio.run(probe_all([entry()]))["m"]
    assert isinstance(found, ReplicaSet) and found.metadata == {"replicas": [A, B]}


@respx.mock
def test_a_replica_that_does_not_answer_refuses_the_run_and_is_named() -> None:
    respx.get("http://replica-a.test/storybench/models").mock(return_value=httpx.Response(404))
    respx.get(f"{A}/models").mock(return_value=models_list("m-1"))
    respx.get("http://replica-b.test/storybench/models").mock(side_effect=httpx.ConnectError("refused"))
    respx.get(f"{B}/models").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(EndpointError, match=f"replica {B} does not answer \\(ConnectError\\)"):
        asyncio.run(probe_all([entry()]))


# ---- the config field -------------------------------------------------------------------------


def test_one_base_url_keeps_its_configuration_hash() -> None:
    # The hash of this entry before replicas existed: stored runs of single-URL entries resume.
    single = ModelEntry(name="a", base_url="http://127.0.0.1:8080/v1", model="m", temperature=0.5, seed=3)
    seq = Sequence(name="s", turns=[PromptTurn(name="t", text="hi")])
    assert model_config_hashes([single], [seq]) == {"a/s": "eb32d33d494503de64d6ff4b6196797c"}
    # Adding replicas after the first URL keeps the results key; changing the first starts afresh.
    more = single.model_copy(update={"base_urls": [single.base_url, "http://127.0.0.1:8081/v1"]})
    assert model_config_hashes([more], [seq]) == model_config_hashes([single], [seq])
    assert single.replica_urls == [single.base_url]


def test_base_urls_are_validated_like_base_url() -> None:
    model = entry([A + "/", B])
    assert model.base_url == A and model.replica_urls == [A, B]
    assert ModelEntry.model_validate(model.model_dump()) == model  # a stored snapshot reads back
    with pytest.raises(ValueError, match="URLs 1 and 2 are the same server"):
        entry([A, A + "/"])
    with pytest.raises(ValueError, match="base_url and base_urls are both set and differ"):
        entry([A, B], base_url=B)
    with pytest.raises(ValueError, match="/chat/completions"):
        entry([A, B + "/chat/completions"])
