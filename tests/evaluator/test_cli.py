"""`storybench-eval run` as a user meets it: the plan, clear errors, nothing sent when it must not be."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import respx
from click.testing import CliRunner

from evaluator.cli import cli
from evaluator.cli_common import NO_RUNS, RUN_OR_LATEST, RunNotFound, no_such_run, resolve_run
from evaluator.config import EvalSettings, ModelEntry, load_models, load_prompts
from evaluator.endpoint import Endpoint, EndpointError, probe
from evaluator.evaluate import Evaluation, evaluate
from evaluator.store import Store, StoreError
from tests.support.documents import T0, make_run
from tests.support.memory_store import memory_store

MODELS = """
models:
  - name: hosted
    base_url: http://hosted.test/v1
    model: m-1
    api_key_env: STORYBENCH_TEST_KEY
    max_tokens: 100
    min_output_tokens: 16
    price_input_per_mtok: 1.0
    price_output_per_mtok: 2.0
"""

PROMPTS = {
    "sequences": [
        {
            "name": "lighthouse",
            "system": "You are a novelist.",
            "turns": [
                {"name": "premise", "text": "A keeper finds a key."},
                {"name": "scene", "text": "The key opens a door."},
                {"name": "poem", "text": "Retell it as a poem."},
            ],
        }
    ]
}


def write_configs(tmp_path: Path, models: str = MODELS) -> tuple[Path, Path]:
    models_path = tmp_path / "models.yaml"
    prompts_path = tmp_path / "prompts.json"
    models_path.write_text(models)
    prompts_path.write_text(json.dumps(PROMPTS))
    return models_path, prompts_path


def invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@respx.mock
def test_dry_run_prints_the_plan_and_sends_nothing(tmp_path: Path) -> None:
    route = respx.route(host="hosted.test")
    models, prompts = write_configs(tmp_path)
    result = invoke(
        "run",
        "--config",
        str(models),
        "--prompts",
        str(prompts),
        "--runs",
        "2",
        "--dry-run",
        env={"STORYBENCH_TEST_KEY": "sk-test"},
    )
    assert result.exit_code == 0, result.output
    assert "1 model(s) x 1 sequence(s) (3 turns) x 2 run(s) = 6 requests" in result.output
    assert "hosted" in result.output and "$" in result.output  # a cost estimate from the prices
    assert route.call_count == 0


def test_missing_api_key_names_the_variable_and_exits_cleanly(tmp_path: Path) -> None:
    models, prompts = write_configs(tmp_path)
    result = invoke(
        "run",
        "--config",
        str(models),
        "--prompts",
        str(prompts),
        "--dry-run",
        env={"STORYBENCH_TEST_KEY": ""},
    )
    assert result.exit_code == 2
    assert "STORYBENCH_TEST_KEY" in result.output
    assert isinstance(result.exception, SystemExit)  # the message and exit code, not a crash


def test_broken_config_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    models, prompts = write_configs(tmp_path, MODELS.replace("max_tokens", "max_tokenz"))
    result = invoke("run", "--config", str(models), "--prompts", str(prompts), "--dry-run")
    assert result.exit_code == 2
    assert "max_tokenz" in result.output and "max_tokens" in result.output
    assert isinstance(result.exception, SystemExit)  # the message and exit code, not a crash


def test_unknown_sequence_selection_lists_the_valid_ones(tmp_path: Path) -> None:
    models, prompts = write_configs(tmp_path)
    result = invoke(
        "run",
        "--config",
        str(models),
        "--prompts",
        str(prompts),
        "--sequences",
        "nope",
        "--dry-run",
        env={"STORYBENCH_TEST_KEY": "k"},
    )
    assert result.exit_code == 2
    assert "nope" in result.output and "lighthouse" in result.output


@respx.mock
def test_unreachable_database_fails_fast_before_any_model_request(tmp_path: Path) -> None:
    route = respx.route(host="hosted.test").mock(return_value=httpx.Response(500))
    models, prompts = write_configs(tmp_path)
    started = time.monotonic()
    result = invoke(
        "run",
        "--config",
        str(models),
        "--prompts",
        str(prompts),
        "--mongo-uri",
        "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=1000",
        env={"STORYBENCH_TEST_KEY": "k"},
    )
    assert time.monotonic() - started < 15
    assert result.exit_code == 1
    assert "127.0.0.1:9" in result.output
    assert route.call_count == 0


def test_local_server_not_running_says_how_to_start_it(free_port: int) -> None:
    url = f"http://127.0.0.1:{free_port}/v1"
    with pytest.raises(EndpointError) as caught:
        asyncio.run(probe(ModelEntry(name="local", base_url=url, model="m-1")))
    assert "make serve" in str(caught.value) and url in str(caught.value)


def sse_answer(text: str) -> httpx.Response:
    chunks = [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        },
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        },
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16},
        },
    ]
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())


@pytest.mark.integration
def test_rerun_resumes_from_the_store_and_restart_starts_a_new_generation(tmp_path: Path) -> None:
    from pymongo import MongoClient

    from evaluator.store.embedded import running_server

    models, prompts = write_configs(tmp_path)
    env = {"STORYBENCH_TEST_KEY": "k"}
    with running_server(tmp_path / "mongo") as db, respx.mock:
        respx.get("http://hosted.test/storybench/models").mock(return_value=httpx.Response(404))
        route = respx.post("http://hosted.test/v1/chat/completions").mock(
            side_effect=lambda req: sse_answer("A real answer.")
        )
        args = [
            "run",
            "--config",
            str(models),
            "--prompts",
            str(prompts),
            "--runs",
            "1",
            "--mongo-uri",
            db.uri,
        ]
        assert invoke(*args, env=env).exit_code == 0
        assert route.call_count == 3
        again = invoke(*args, env=env)  # everything is stored: nothing is sent
        assert again.exit_code == 0 and route.call_count == 3
        restarted = invoke(*args, "--restart", env=env)
        assert restarted.exit_code == 0 and route.call_count == 6
        with MongoClient(db.uri) as client:
            docs = list(client["storybench"]["responses"].find({}))
            runs = list(client["storybench"]["runs"].find({}))
        assert sorted(d["generation"] for d in docs) == [1, 1, 1, 2, 2, 2]  # the old results kept
        assert len(runs) == 3 and all(r["status"] == "completed" for r in runs)
        assert runs[0]["config_snapshot"]["models"][0]["api_key_env"] == "STORYBENCH_TEST_KEY"
        assert "k" not in {str(v) for r in runs for v in r["config_snapshot"]["models"][0].values()}


# -- run resolution: one rule and one set of messages for show, export, judge and report --------


def stored_runs(*ids: str) -> Store:
    store = memory_store()
    for i, run_id in enumerate(ids):
        store.create_run(make_run(run_id, started=T0 + timedelta(minutes=i)))
    return store


def test_a_run_is_found_by_id_unique_prefix_or_latest() -> None:
    store = stored_runs("20261128-120000-abc123", "20261128-130000-def456")
    assert resolve_run(store, "20261128-120000-abc123").id == "20261128-120000-abc123"
    assert resolve_run(store, "20261128-13").id == "20261128-130000-def456"
    assert resolve_run(store, None, latest=True).id == "20261128-130000-def456"  # started last


def test_run_resolution_says_what_to_do() -> None:
    store = stored_runs("20261128-120000-abc123", "20261128-130000-def456")
    with pytest.raises(RunNotFound) as missing:
        resolve_run(store, "nope")
    assert str(missing.value) == "no run 'nope'; list them with `storybench-eval runs`"
    with pytest.raises(StoreError, match="matches several runs .*20261128-120000-abc123"):
        resolve_run(store, "20261128-1")
    for run_id, latest in ((None, False), ("20261128", True)):
        with pytest.raises(ValueError) as usage:
            resolve_run(store, run_id, latest=latest)
        assert str(usage.value) == RUN_OR_LATEST
    with pytest.raises(RunNotFound) as empty:
        resolve_run(memory_store(), None, latest=True)
    assert str(empty.value) == NO_RUNS


def test_show_export_and_report_resolve_runs_alike(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    store = stored_runs("20261128-120000-abc123", "20261128-130000-def456")
    for module in ("evaluator.cli", "evaluator.report.cli"):
        monkeypatch.setattr(f"{module}.open_store", lambda uri=None, db_name="storybench": store)
    out = str(tmp_path / "x.jsonl")
    commands = [["show"], ["export", "--out", out, "--run"], ["report", "-o", str(tmp_path / "r.html")]]
    for command in commands:
        missing = invoke(*command, "nope")
        assert missing.exit_code == 1, missing.output
        assert isinstance(missing.exception, SystemExit)  # a message, not a crash
        assert no_such_run("nope") in " ".join(missing.output.split())
        several = invoke(*command, "20261128-1")
        assert several.exit_code == 1 and "matches several runs" in several.output
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "x.jsonl").exists()
    shown = invoke("show", "20261128-12")
    assert shown.exit_code == 0 and "20261128-120000-abc123" in shown.output
    exported = invoke("export", "--out", out, "--run", "20261128-13")
    assert exported.exit_code == 0 and "Wrote 0 row(s)" in exported.output


# -- evaluate(): the whole run, as `storybench-eval run` does it -------------------------------


def evaluation(tmp_path: Path, **settings: float) -> tuple[Evaluation, dict[str, Endpoint]]:
    models_path, prompts_path = write_configs(tmp_path)
    models, _ = load_models(models_path)
    fast = EvalSettings(retry_max_attempts=2, retry_initial_s=0.01, retry_max_backoff_s=0.02, **settings)
    chosen = Evaluation(models, load_prompts(prompts_path), fast, runs=1, concurrency=2, heartbeat_s=60)
    return chosen, {m.name: Endpoint(m) for m in models}


@respx.mock
def test_evaluate_records_a_failed_turn_then_resumes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORYBENCH_TEST_KEY", "k")
    route = respx.post("http://hosted.test/v1/chat/completions").mock(
        return_value=httpx.Response(500, json={"error": {"message": "upstream exploded"}})
    )
    store = memory_store()
    chosen, endpoints = evaluation(tmp_path)

    first = evaluate(store, chosen, endpoints)
    assert (first.status, first.exit_code) == ("incomplete", 3)
    assert first.message == "some turns failed or were not played; re-run the same command to retry them"
    assert route.call_count == 2  # retry_max_attempts, then the sequence stops at the failed turn
    recorded = store.get_run(first.run_id)
    assert recorded is not None and recorded.status == "incomplete" and recorded.counts == {"error": 1}
    assert recorded.planned_turns == 3 and recorded.finished_at is not None

    route.mock(return_value=sse_answer("Recovered."))
    second = evaluate(store, chosen, endpoints)
    assert (second.status, second.exit_code, second.message) == ("completed", 0, None)
    assert second.run_id != first.run_id and route.call_count == 2 + 3
    assert [r.outcome for r in store.run_responses(second.run_id)] == ["ok", "ok", "ok"]
    finished = store.get_run(second.run_id)
    assert finished is not None and finished.status == "completed" and finished.counts == {"ok": 3}
    assert second.stats["hosted"].done == second.stats["hosted"].total == 3
