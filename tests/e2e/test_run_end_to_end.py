"""The main job for real: `storybench-eval run` against `storybench-serve` with the bundled model,
results in the embedded MongoDB-wire server. The failure this product exists to fix (later turns
answering with 0-1 tokens) must not come back, and an interrupted run must resume exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from evaluator.store.embedded import EmbeddedServer, running_server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with running_server(tmp_path_factory.mktemp("e2e-mongo")) as server:
        yield server


def five_turn_sequence() -> dict[str, Any]:
    """The real 5-turn sequence from the shipped prompt set."""
    prompts = json.loads((REPO / "config" / "prompts.json").read_text())
    (seq,) = [s for s in prompts["sequences"] if len(s["turns"]) == 5][:1]
    return seq


def write_configs(tmp: Path, base_url: str, model: str, **entry: Any) -> tuple[Path, Path]:
    fields = {
        "name": "local",
        "base_url": base_url,
        "model": model,
        "temperature": 0.7,
        "max_tokens": 48,
        "min_output_tokens": 16,
        "seed": 42,
        **entry,
    }
    lines = ["settings:", "  retry_max_attempts: 2", "  retry_initial_s: 0.1", "models:"]
    lines.append("  - " + "\n    ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items()))
    models = tmp / "models.yaml"
    models.write_text("\n".join(lines) + "\n")
    prompts = tmp / "prompts.json"
    prompts.write_text(json.dumps({"sequences": [five_turn_sequence()]}))
    return models, prompts


def eval_cmd(models: Path, prompts: Path, uri: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "evaluator.cli",
        "run",
        "--config",
        str(models),
        "--prompts",
        str(prompts),
        "--mongo-uri",
        uri,
        *extra,
    ]


def turns(uri: str) -> list[dict[str, Any]]:
    with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        docs = list(client["storybench"]["responses"].find({}))
    return sorted(docs, key=lambda d: (d["run_index"], d["turn_index"]))


def clear(uri: str) -> None:
    with MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        client["storybench"]["responses"].delete_many({})
        client["storybench"]["runs"].delete_many({})


def test_every_turn_of_a_five_turn_sequence_gets_a_real_answer(
    local_server: Any, mongo: EmbeddedServer, tmp_path: Path
) -> None:
    clear(mongo.uri)
    models, prompts = write_configs(tmp_path, local_server.base_url, local_server.model)
    result = subprocess.run(
        eval_cmd(models, prompts, mongo.uri, "--runs", "1"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    docs = turns(mongo.uri)
    has_system = 1 if five_turn_sequence().get("system") else 0
    assert [d["turn_index"] for d in docs] == [0, 1, 2, 3, 4]
    for doc in docs:
        assert doc["outcome"] == "ok", doc.get("error")
        assert doc["response_text"].strip(), f"turn {doc['turn_index']} is empty"
        assert doc["completion_tokens"] >= 5, f"turn {doc['turn_index']}: {doc['completion_tokens']} tokens"
        # (system) + every earlier user turn and answer + the new turn: the full history
        assert doc["messages_sent"] == has_system + 1 + 2 * doc["turn_index"]
    prompt_tokens = [d["prompt_tokens"] for d in docs]
    assert prompt_tokens == sorted(prompt_tokens) and prompt_tokens[4] > prompt_tokens[0] + 100
    # The server kept the conversation's prefix: later turns reuse most of their prompt.
    for doc in docs[1:]:
        assert doc["cached_tokens"] and doc["cached_tokens"] > doc["prompt_tokens"] // 2, doc
    assert "Run summary" in result.stdout


def test_an_interrupted_run_resumes_and_stores_each_turn_exactly_once(
    local_server: Any, mongo: EmbeddedServer, tmp_path: Path
) -> None:
    clear(mongo.uri)
    models, prompts = write_configs(tmp_path, local_server.base_url, local_server.model)
    runs = 4  # 20 turns: the interrupt lands with most of them still to play
    cmd = eval_cmd(models, prompts, mongo.uri, "--runs", str(runs))
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A shell's background job ignores SIGINT and children inherit that; a user's Ctrl-C
        # reaches a foreground command with the default disposition, so give it that here.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    with MongoClient(mongo.uri, serverSelectionTimeoutMS=5000) as client:
        responses = client["storybench"]["responses"]
        while responses.count_documents({}) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, out
    assert "resume" in out
    first = turns(mongo.uri)
    assert 3 <= len(first) < 5 * runs

    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    docs = turns(mongo.uri)
    keys = [(d["run_index"], d["turn_index"]) for d in docs]
    assert sorted(keys) == [(r, t) for r in range(runs) for t in range(5)]  # all there, none twice
    assert all(d["outcome"] == "ok" for d in docs)
    # The earlier turns are untouched, and the second invocation wrote only the missing ones.
    before = {d["_id"]: d["run_id"] for d in first}
    assert all(before[d["_id"]] == d["run_id"] for d in docs if d["_id"] in before)
    assert len({d["run_id"] for d in docs}) == 2
    assert sum(1 for d in docs if d["_id"] not in before) == 5 * runs - len(first)


def test_history_that_no_longer_fits_is_a_recorded_outcome_not_an_empty_answer(
    local_server: Any, mongo: EmbeddedServer, tmp_path: Path
) -> None:
    clear(mongo.uri)
    models, prompts = write_configs(
        tmp_path, local_server.base_url, local_server.small_model, max_tokens=200, min_output_tokens=120
    )  # ~250 tokens of prompts + answers of up to 200 cannot fit 5 turns into 640
    result = subprocess.run(
        eval_cmd(models, prompts, mongo.uri, "--runs", "1"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    docs = turns(mongo.uri)
    outcomes = [d["outcome"] for d in docs]
    assert outcomes[-1] == "context_exhausted", outcomes
    assert all(o == "ok" for o in outcomes[:-1]) and 1 <= len(outcomes) < 5
    last = docs[-1]
    assert f"{local_server.small_n_ctx}-token context" in last["error"]
    assert all(d["response_text"].strip() for d in docs[:-1])
    assert "context_exhausted" in result.stdout or "ctx" in result.stdout
