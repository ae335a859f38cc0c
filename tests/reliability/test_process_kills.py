"""SIGKILL the evaluator or its database mid-run: nothing is lost, nothing is stored twice, nothing
is half-written, and the same command resumes exactly the missing turns.

Real processes: `python -m evaluator.cli run` as a subprocess, the stand-in as the model, a real
nx-27017 as the database. The kill lands while turns are being requested and written.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from evaluator.store import open_store, run_state
from evaluator.store.embedded import EmbeddedServer, running_server
from tests.reliability.checks import assert_whole, duplicates, history_mismatches
from tests.reliability.conftest import (
    child_env,
    eval_cmd,
    models_yaml,
    prompts_json,
    responses,
    run_cli,
    runs,
)
from tests.reliability.standin import StandIn
from tests.support.servers import REPO

pytestmark = pytest.mark.integration

SEQUENCES, TURNS, RUNS = 3, 4, 3
PLANNED = SEQUENCES * TURNS * RUNS
SYSTEMS = {f"saga-{s}": "You are a novelist." for s in range(SEQUENCES)}


def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(predicate: Any, timeout: float, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}):\n{proc.communicate()[0]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s")


def _count(uri: str, db: str) -> int:
    try:
        return len(responses(uri, db))
    except Exception:  # the database is starting or gone: not yet
        return -1


def test_sigkill_of_the_evaluator_then_resume_stores_each_turn_once(
    mongo: EmbeddedServer, db_name: str, tmp_path: Path, figures: dict[str, Any]
) -> None:
    rng = random.Random(7)
    with StandIn(delay_s=0.15) as standin:
        models = models_yaml(tmp_path / "models.yaml", standin.base_url, max_concurrency=4)
        prompts = prompts_json(tmp_path / "prompts.json", n_sequences=SEQUENCES, n_turns=TURNS)
        cmd = eval_cmd(models, prompts, "--runs", str(RUNS), "--mongo-uri", mongo.uri, "--db", db_name)
        env = child_env()
        kills, before = 0, 0
        for _ in range(2):
            proc = _start(cmd, env)
            _wait_for(lambda b=before: _count(mongo.uri, db_name) >= b + 3, 60, proc)
            time.sleep(rng.uniform(0.0, 0.4))  # land anywhere in a request or a write
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
            docs = responses(mongo.uri, db_name)
            for doc in docs:
                assert_whole(doc)  # never half-written
            assert duplicates(docs) == 0
            assert len(docs) < PLANNED, "the run finished before the kill: slow the stand-in down"
            before = len(docs)
        snapshot = {d["_id"]: (d["run_id"], d["finished_at"]) for d in responses(mongo.uri, db_name)}

        final = run_cli(cmd, env)
        assert final.returncode == 0, final.stdout + final.stderr
        served_ok = Counter(r.identity for r in standin.requests if r.fault == "ok")

    docs = responses(mongo.uri, db_name)
    assert len(docs) == PLANNED and duplicates(docs) == 0
    assert all(d["outcome"] == "ok" for d in docs)
    for doc in docs:
        assert_whole(doc)
    assert history_mismatches(docs, SYSTEMS) == []
    # Turns stored before a kill are untouched; the resume wrote exactly the missing ones.
    assert all(snapshot[d["_id"]] == (d["run_id"], d["finished_at"]) for d in docs if d["_id"] in snapshot)
    all_runs = runs(mongo.uri, db_name)
    last_run = all_runs[-1]
    assert last_run.counts == {"ok": PLANNED - len(snapshot)}
    # The counters readers show come from the stored turns, so a killed run's are right too: it
    # never recorded its own (its document still says {}), yet `runs` and `show` say what it wrote.
    with open_store(mongo.uri, db_name=db_name) as store:
        tallies = store.run_tallies(all_runs)
    for killed in all_runs[:-1]:
        wrote = sum(1 for run_id, _ in snapshot.values() if run_id == killed.id)
        assert killed.counts == {} and wrote > 0
        assert tallies[killed.id].written == {"ok": wrote}, (killed.id, tallies[killed.id])
    assert tallies[last_run.id].written == {"ok": PLANNED - len(snapshot)}
    assert tallies[last_run.id].reused == len(snapshot)
    # A turn in flight at the kill was answered but not stored: it is asked again (at most one per
    # conversation in flight), never stored twice.
    asked_again = sum(n - 1 for n in served_ok.values() if n > 1)
    assert asked_again <= 4 * kills
    # Killed runs cannot record their end; readers see that their process is gone.
    statuses = Counter(run_state(r).status for r in runs(mongo.uri, db_name))
    assert statuses.get("running", 0) == 0 and statuses.get("abandoned", 0) == kills, statuses
    figures["sigkill_evaluator"] = {
        "planned_turns": PLANNED, "kills": kills, "stored_before_resume": len(snapshot),
        "resumed": PLANNED - len(snapshot), "lost": PLANNED - len(docs), "duplicated": duplicates(docs),
        "half_written": 0, "answers_asked_again_after_kill": asked_again,
        "killed_runs_shown_as_running": statuses.get("running", 0),
        "killed_runs_shown_as_abandoned": statuses.get("abandoned", 0),
    }  # fmt: skip


def test_sigkill_of_the_database_stops_the_run_clearly_then_resume_completes(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    data = tmp_path / "data"  # the evaluator starts its own embedded database here
    with StandIn(delay_s=0.1) as standin:
        models = models_yaml(tmp_path / "models.yaml", standin.base_url, max_concurrency=4)
        prompts = prompts_json(tmp_path / "prompts.json", n_sequences=SEQUENCES, n_turns=TURNS)
        cmd = eval_cmd(models, prompts, "--runs", str(RUNS))
        env = child_env(STORYBENCH_DATA_DIR=str(data))
        proc = _start(cmd, env)
        state = data / "server.json"
        _wait_for(state.exists, 60, proc)
        info = json.loads(state.read_text())
        uri = info["uri"]
        _wait_for(lambda: _count(uri, "storybench") >= 3, 60, proc)
        os.kill(info["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        out = proc.communicate(timeout=60)[0]
        took = time.monotonic() - killed_at
        assert proc.returncode == 1, out
        assert took < 10, f"{took:.1f} s to notice the database died"
        assert "Traceback" not in out
        assert "stopped answering while saving turn" in out, out
        assert "re-run the same command to resume" in out

        resumed = run_cli(cmd, env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "Traceback" not in resumed.stdout + resumed.stderr

    with running_server(data) as server:
        docs = responses(server.uri)
        statuses = Counter(run_state(r).status for r in runs(server.uri))
    assert len(docs) == PLANNED and duplicates(docs) == 0
    for doc in docs:
        assert_whole(doc)
    assert all(d["outcome"] == "ok" for d in docs)
    assert history_mismatches(docs, SYSTEMS) == []
    assert statuses.get("running", 0) == 0, statuses  # the run that lost its database: abandoned
    figures["sigkill_database"] = {
        "planned_turns": PLANNED, "seconds_to_clear_error": round(took, 1), "exit_code": 1,
        "lost": PLANNED - len(docs), "duplicated": duplicates(docs),
        "failed_runs_shown_as_running": statuses.get("running", 0),
    }  # fmt: skip
