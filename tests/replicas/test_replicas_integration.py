"""Two real `storybench-serve` replicas of the bundled model, one killed mid-run: `storybench-eval
run` finishes every conversation on the other, and each moved conversation's turns are complete
and consistent (all ok, turn indexes contiguous, full history, the replica field shows the move).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from evaluator.store.embedded import EmbeddedServer, running_server
from tests.support.servers import REPO, RunningServer, model_entry, start_server, write_config

pytestmark = pytest.mark.integration

RUNS = 4  # conversations: two per replica (each serves two at a time)
TURNS = 4


@pytest.fixture(scope="module")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with running_server(tmp_path_factory.mktemp("replicas-mongo")) as server:
        yield server


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[RunningServer]]:
    """Two servers with the same config (the same model file), on two ports."""
    config = write_config(
        tmp_path / "local_models.json", [model_entry("story", n_ctx=1024, engine="batched", n_parallel=2)]
    )
    started: list[RunningServer] = []
    try:
        for name in ("a", "b"):
            started.append(start_server(config, tmp_path / f"server-{name}.log"))
        yield started
    finally:
        for server in started:
            server.stop(signal.SIGKILL)


def write_configs(tmp: Path, urls: list[str]) -> tuple[Path, Path]:
    models = tmp / "models.yaml"
    models.write_text(
        "settings:\n  retry_max_attempts: 2\n  retry_initial_s: 0.1\n  retry_max_backoff_s: 0.2\n"
        "models:\n  - name: local\n"
        f"    base_urls: {json.dumps(urls)}\n"
        "    model: story\n    temperature: 0.7\n    max_tokens: 24\n    min_output_tokens: 8\n    seed: 42\n"
    )
    turns = [
        {"name": f"t{i}", "text": f"Continue the story, part {i + 1}, in two sentences."}
        for i in range(TURNS)
    ]
    prompts = tmp / "prompts.json"
    prompts.write_text(
        json.dumps({"sequences": [{"name": "saga", "system": "You tell stories.", "turns": turns}]})
    )
    return models, prompts


def stored(uri: str) -> list[dict[str, Any]]:
    with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        docs = list(client["storybench"]["responses"].find({}))
    return sorted(docs, key=lambda d: (d["run_index"], d["turn_index"]))


def test_a_replica_killed_mid_run_its_conversations_finish_on_the_other(
    replicas: list[RunningServer], mongo: EmbeddedServer, tmp_path: Path
) -> None:
    a, b = replicas
    models, prompts = write_configs(tmp_path, [a.base_url, b.base_url])
    cmd = [sys.executable, "-m", "evaluator.cli", "run", "--config", str(models), "--prompts", str(prompts)]
    cmd += ["--mongo-uri", mongo.uri, "--runs", str(RUNS)]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    # Kill B once it has answered a first turn: its conversations have turns left to play.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if any(d["replica"] == b.base_url for d in stored(mongo.uri)):
            break
        time.sleep(0.05)
    b.stop(signal.SIGKILL)
    out = proc.communicate(timeout=600)[0].decode()
    assert proc.returncode == 0, out
    assert f"{b.base_url} was drained" in " ".join(out.split())  # the summary says what moved
    with MongoClient(mongo.uri, serverSelectionTimeoutMS=5000) as client:
        (run,) = client["storybench"]["runs"].find({})
    assert run["status"] == "completed" and run["server_metadata"]["local"]["replicas"] == [
        a.base_url,
        b.base_url,
    ]

    docs = stored(mongo.uri)
    by_conversation: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for doc in docs:
        by_conversation[doc["run_index"]].append(doc)
    assert sorted(by_conversation) == list(range(RUNS))
    moved = 0
    for conversation in by_conversation.values():
        assert [d["turn_index"] for d in conversation] == list(range(TURNS))  # contiguous, none twice
        for doc in conversation:
            assert doc["outcome"] == "ok", doc.get("error")
            assert doc["response_text"].strip()
            assert doc["messages_sent"] == 2 + 2 * doc["turn_index"]  # system + full history + turn
        served = [d["replica"] for d in conversation]
        assert set(served) <= {a.base_url, b.base_url}
        if b.base_url in served and a.base_url in served:  # a move: from B to A, never back
            moved += 1
            switch = served.index(a.base_url)
            assert served[:switch] == [b.base_url] * switch and served[switch:] == [a.base_url] * (
                TURNS - switch
            )
    assert moved >= 1, [[d["replica"] for d in c] for c in by_conversation.values()]
    assert any(d["replica"] == b.base_url for d in docs)  # B served some turns before its kill
