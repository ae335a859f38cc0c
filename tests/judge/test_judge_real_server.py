"""The judge for real: a tiny evaluation (1 sequence of 2 turns) played by `storybench-eval run`
against `storybench-serve` with the bundled SmolLM2-135M, then `judge` with that same model as
the judge, through our server, into the embedded database.

The 135M model is a weak judge (its scores say little); what this proves is the machinery: the
shipped rubric's prompts fit, the JSON-schema grammar makes even this model's answer parse, and
every ok turn and the complete sequence run get a stored judgement with every criterion in range.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from evaluator.judge.rubric import load_rubric
from evaluator.records import sequence_run_id
from evaluator.store.embedded import EmbeddedServer, running_server
from tests.judge.conftest import REPO, flat, invoke, shipped_rubric
from tests.support.servers import RunningServer, model_entry, start_server, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("judge-server")
    # Two threads for prompt processing: reading the judge's ~700-token prompts dominates the test.
    config = write_config(tmp / "local_models.json", [model_entry("story", n_threads_batch=2)])
    running = start_server(config, tmp / "server.log")
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="module")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    with running_server(tmp_path_factory.mktemp("judge-real-mongo")) as db:
        yield db


def write_configs(tmp: Path, base_url: str) -> tuple[Path, Path, Path]:
    models = tmp / "models.yaml"
    models.write_text(
        "settings:\n  retry_max_attempts: 2\n  retry_initial_s: 0.1\nmodels:\n"
        f"  - name: local\n    base_url: {base_url}\n    model: story\n    temperature: 0.7\n"
        "    max_tokens: 32\n    min_output_tokens: 16\n    seed: 42\n"
    )
    sequence = json.loads((REPO / "config" / "prompts.json").read_text())["sequences"][0]
    sequence["turns"] = sequence["turns"][:2]
    prompts = tmp / "prompts.json"
    prompts.write_text(json.dumps({"sequences": [sequence]}))
    rubric_data = shipped_rubric()
    rubric_data.update(max_tokens=160, rationale_max_chars=80)  # short answers: a quick test
    rubric = tmp / "rubric.json"
    rubric.write_text(json.dumps(rubric_data))
    return models, prompts, rubric


def collection(uri: str, name: str) -> list[dict[str, Any]]:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    with client:
        return list(client["storybench"][name].find({}))


def test_a_real_run_judged_by_the_bundled_model_gets_valid_judgements(
    server: RunningServer, mongo: EmbeddedServer, tmp_path: Path
) -> None:
    models, prompts, rubric_path = write_configs(tmp_path, server.base_url)
    played = subprocess.run(
        [sys.executable, "-m", "evaluator.cli", "run", "--config", str(models), "--prompts", str(prompts)]
        + ["--runs", "1", "--mongo-uri", mongo.uri],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert played.returncode == 0, played.stdout + played.stderr
    turns = collection(mongo.uri, "responses")
    ok = [t for t in turns if t["outcome"] == "ok"]
    assert len(ok) == 2, [t["outcome"] for t in turns]

    args = ["--latest", "--config", str(models), "--rubric", str(rubric_path), "--mongo-uri", mongo.uri]
    result = invoke(*args)
    assert result.exit_code == 0, result.output  # a failed judgement shows its reason here
    assert "2048-token context" in flat(result.output)

    rubric = load_rubric(rubric_path)
    evaluations = {e["target_id"]: e for e in collection(mongo.uri, "evaluations")}
    first = ok[0]
    run_target = sequence_run_id(first["experiment_key"], "local", first["sequence"], 0)
    assert set(evaluations) == {t["_id"] for t in ok} | {run_target}
    for target_id, doc in evaluations.items():
        kind = "sequence" if target_id == run_target else "response"
        assert doc["target_kind"] == kind and doc["judge_model"] == "local"
        assert doc["rubric_version"] == rubric.version_id
        specs = rubric.criteria(kind)
        assert set(doc["scores"]) == {c.name for c in specs}, doc
        for c in specs:
            assert isinstance(doc["scores"][c.name], int) and c.min <= doc["scores"][c.name] <= c.max, doc
        assert isinstance(doc["rationale"], str) and len(doc["rationale"]) <= rubric.rationale_max_chars
        assert doc["details"]["judge_model_id"] == "story" and doc["details"]["finish_reason"] == "stop"

    again = invoke(*args)  # everything is judged: nothing to send
    assert again.exit_code == 0 and "0 to judge, 3 already judged" in flat(again.output)


def test_compare_with_the_bundled_model_stores_a_verdict_for_each_order(
    server: RunningServer, mongo: EmbeddedServer, tmp_path: Path
) -> None:
    """`compare` through our server: the pairwise JSON schema becomes a grammar, so even the
    135M model answers one of the rubric's labels; both orders are stored and the leaderboard
    reads them back."""
    models, prompts, rubric_path = write_configs(tmp_path, server.base_url)
    models.write_text(
        models.read_text()
        + f"  - name: hot\n    base_url: {server.base_url}\n    model: story\n    temperature: 1.2\n"
        "    max_tokens: 32\n    min_output_tokens: 16\n    seed: 42\n"
    )
    common = ["--config", str(models), "--mongo-uri", mongo.uri]
    played = subprocess.run(
        [sys.executable, "-m", "evaluator.cli", "run", "--models", "local,hot", "--prompts", str(prompts)]
        + ["--runs", "1", *common],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert played.returncode == 0, played.stdout + played.stderr
    compared = subprocess.run(
        [sys.executable, "-m", "evaluator.cli", "compare", "--models", "local,hot", "--judge", "local"]
        + ["--rubric", str(rubric_path), *common],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert compared.returncode == 0, compared.stdout + compared.stderr
    rubric = load_rubric(rubric_path)
    assert rubric.pairwise is not None
    docs = collection(mongo.uri, "pairwise")
    assert len(docs) == 2 and {d["first_model"] for d in docs} == {"local", "hot"}
    for doc in docs:
        assert doc["status"] == "ok" and doc["verdict"] in rubric.pairwise.scale, doc
        assert doc["score_first"] == rubric.pairwise.share(doc["verdict"])
        assert doc["rubric_version"] == rubric.version_id and doc["details"]["judge_model_id"] == "story"
    # Our server reports the judge's model file: the same file the run recorded for the evaluated
    # model, which is how the leaderboard recognises self-judging.
    (evaluated_sha,) = {r["server_metadata"]["local"]["sha256"] for r in collection(mongo.uri, "runs")}
    assert len(evaluated_sha) == 64 and {d["details"]["judge_model_sha256"] for d in docs} == {evaluated_sha}
    board = subprocess.run(
        [sys.executable, "-m", "evaluator.cli", "leaderboard", "--format", "json", "--judge", "local"]
        + ["--rubric-version", rubric.version_id, "--mongo-uri", mongo.uri, "--allow-self-judge"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert board.returncode == 0, board.stdout + board.stderr
    table = json.loads(board.stdout)
    assert {m["model"] for m in table["models"]} == {"local", "hot"}
    assert table["pairwise"]["pairs"] == 1 and all(m["pairs"] == 1 for m in table["models"])
