"""Store fixtures: a real embedded nx-27017 per session, and a real MongoDB when
STORYBENCH_TEST_MONGO_URI is set (the contract suite then runs against both). No mocks.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.database import Database

from evaluator.records import EvaluationRecord, ResponseRecord, RunRecord, config_hash, experiment_key
from evaluator.store import Store, open_store
from evaluator.store.connect import URI_ENV
from evaluator.store.embedded import DATA_DIR_ENV, EmbeddedServer, running_server

EXTERNAL_ENV = "STORYBENCH_TEST_MONGO_URI"
BACKENDS = ["embedded"] + (["external"] if os.environ.get(EXTERNAL_ENV) else [])
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)  # they start nx-27017


@pytest.fixture(autouse=True)
def _no_user_database(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never touch the developer's database: no env URI, data dir under tmp_path."""
    monkeypatch.delenv(URI_ENV, raising=False)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "default-data-dir"))


@pytest.fixture(scope="session")
def embedded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One nx-27017 for the session: fresh data dir, free port, its own pid and log file."""
    with running_server(tmp_path_factory.mktemp("nx-27017")) as server:
        yield server


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def mongo_uri(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "external":
        return os.environ[EXTERNAL_ENV]
    server: EmbeddedServer = request.getfixturevalue("embedded_server")
    return server.uri


@pytest.fixture
def store(mongo_uri: str) -> Iterator[Store]:
    """A Store on a database of its own (dropped afterwards), indexes created."""
    name = f"sbtest_{uuid.uuid4().hex[:12]}"
    with open_store(mongo_uri, db_name=name) as s:
        s.ensure_indexes()
        yield s
        s.client.drop_database(name)


@pytest.fixture
def embedded_db(embedded_server: EmbeddedServer) -> Iterator[Database[dict[str, Any]]]:
    """A raw pymongo database on the embedded server (for the known-gap checks)."""
    client: MongoClient[dict[str, Any]] = MongoClient(
        embedded_server.uri, tz_aware=True, serverSelectionTimeoutMS=3000
    )
    name = f"gap_{uuid.uuid4().hex[:12]}"
    try:
        yield client[name]
        client.drop_database(name)
    finally:
        client.close()


CFG = config_hash({"name": "m1", "temperature": 0.7}, "seqhash")


def make_response(
    turn_index: int = 0,
    *,
    exp_key: str | None = None,
    model: str = "m1",
    sequence: str = "lighthouse",
    run_index: int = 0,
    outcome: str = "ok",
    text: str | None = None,
    run_id: str = "run-a",
    generation: int = 1,
    cfg: str = CFG,
) -> ResponseRecord:
    key = exp_key or experiment_key(cfg, generation)
    answer = f"Answer {turn_index} of {sequence}" if text is None else text
    return ResponseRecord(
        experiment_key=key,
        config_hash=cfg,
        generation=generation,
        run_id=run_id,
        model=model,
        model_id="smollm2-135m",
        endpoint="http://127.0.0.1:8000/v1",
        sequence=sequence,
        sequence_hash="seqhash",
        run_index=run_index,
        seed=100 + run_index,
        turn_index=turn_index,
        turn_name=f"turn-{turn_index}",
        prompt=f"Prompt {turn_index}",
        messages_sent=2 * turn_index + 2,
        response_raw=answer,
        response_text=answer,
        finish_reason="stop" if outcome == "ok" else None,
        prompt_tokens=40 + turn_index,
        completion_tokens=120,
        cached_tokens=30,
        prompt_tokens_estimated=41,
        max_tokens_sent=512,
        latency_s=1.25,
        ttft_s=0.1,
        tokens_per_s=96.0,
        attempts=1,
        outcome=outcome,  # type: ignore[arg-type]
        error="boom" if outcome == "error" else None,
        params={"temperature": 0.7, "stop": ["\n\n"], "extra_body": {"cache_prompt": True}},
        started_at=T0 + timedelta(seconds=turn_index),
        finished_at=T0 + timedelta(seconds=turn_index, milliseconds=1250),
        server_timings={"cache_n": 30} if outcome == "ok" else None,
        cost_usd=None,
    )


def make_run(run_id: str = "run-a", *, started: datetime = T0, experiments: Any = None) -> RunRecord:
    exps = experiments or [
        {"model": "m1", "sequence": "lighthouse", "experiment_key": experiment_key(CFG, 1), "generation": 1}
    ]
    return RunRecord(
        _id=run_id,
        started_at=started,
        status="running",
        command="storybench-eval run",
        code_version="0.1.0+test",
        config_snapshot={"runs": 1, "models": [{"name": "m1", "stream": True}]},
        config_hashes={"models": {"m1": "abc"}, "sequences": {"lighthouse": "seqhash"}},
        experiments=exps,
        models=["m1"],
        sequences=["lighthouse"],
        runs_per_sequence=1,
        planned_turns=3,
    )


def make_evaluation(target_id: str, judge: str = "judge-1", rubric: str = "v1") -> EvaluationRecord:
    return EvaluationRecord(
        target_id=target_id,
        target_kind="response",
        judge_model=judge,
        rubric_version=rubric,
        scores={"coherence": 4, "voice": 3.5},
        rationale='Keeps the lighthouse keeper\'s name, "Ada", consistent.',
        created_at=T0 + timedelta(hours=1),
    )


@pytest.fixture
def response_factory() -> Callable[..., ResponseRecord]:
    return make_response


@pytest.fixture
def run_factory() -> Callable[..., RunRecord]:
    return make_run


@pytest.fixture
def evaluation_factory() -> Callable[..., EvaluationRecord]:
    return make_evaluation
