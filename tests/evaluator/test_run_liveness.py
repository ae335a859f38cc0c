"""A run keeps its heartbeat fresh while it plays, and a run whose evaluator was SIGKILLed reads
"abandoned" in `runs` instead of "running" forever. Real embedded nx-27017; the model is respx
in-process, or the reliability stand-in for the evaluator run as a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from click.testing import CliRunner
from pymongo import MongoClient

from evaluator.cli import cli
from evaluator.heartbeat import HEARTBEAT_ENV
from evaluator.records import RunRecord
from evaluator.store import read_document
from evaluator.store.connect import URI_ENV
from evaluator.store.embedded import running_server
from evaluator.store.liveness import run_state, stale_after
from tests.evaluator.test_cli import sse_answer, write_configs
from tests.reliability.standin import StandIn
from tests.support.servers import REPO

pytestmark = pytest.mark.integration


def the_run(uri: str, db: str = "storybench") -> RunRecord | None:
    """The newest run, read as the product reads it."""
    with MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=3000) as client:
        doc = client[db]["runs"].find_one({}, sort=[("started_at", -1)])
    return None if doc is None else read_document(RunRecord, doc)


def statuses(listing: str) -> dict[str, str]:
    """run id -> shown status, from the `runs` table."""
    rows = re.findall(r"^\s*(\d{8}-\d{6}-[0-9a-f]{6})\s.*\s(\w+)\s*$", listing, re.M)
    return dict(rows)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_the_heartbeat_is_refreshed_while_the_run_plays(tmp_path: Path) -> None:
    models, prompts = write_configs(tmp_path)
    seen: list[dict[str, Any]] = []
    with running_server(tmp_path / "mongo") as db, respx.mock:

        def answer(request: httpx.Request) -> httpx.Response:
            if not seen:  # mid-run, the model "thinking": the heartbeat must move on its own
                started = the_run(db.uri)
                assert started is not None
                moved = wait_for(
                    lambda: (doc := the_run(db.uri)) and doc.heartbeat_at > started.heartbeat_at and doc,
                    10,
                    "a heartbeat",
                )
                seen.extend([started, moved])
            return sse_answer("A real answer.")

        respx.get("http://hosted.test/storybench/models").mock(return_value=httpx.Response(404))
        respx.post("http://hosted.test/v1/chat/completions").mock(side_effect=answer)
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
        env = {"STORYBENCH_TEST_KEY": "k", HEARTBEAT_ENV: "0.1"}
        result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        final = the_run(db.uri)

    started, moved = seen
    assert started.status == moved.status == "running"
    assert (started.host, started.pid, started.heartbeat_s) == (
        socket.gethostname(),
        os.getpid(),
        0.1,
    )
    assert started.started_at <= started.heartbeat_at < moved.heartbeat_at
    assert isinstance(moved.heartbeat_at, datetime)  # a BSON date, also on nx-27017
    assert run_state(moved).status == "running"  # this (live) process, on this host
    assert final is not None and final.status == "completed"
    assert run_state(final).status == "completed"


def test_a_bad_heartbeat_interval_fails_before_anything_runs(tmp_path: Path) -> None:
    models, prompts = write_configs(tmp_path)
    result = CliRunner().invoke(
        cli,
        ["run", "--config", str(models), "--prompts", str(prompts), "--mongo-uri", "mongodb://127.0.0.1:9"],
        env={"STORYBENCH_TEST_KEY": "k", HEARTBEAT_ENV: "often"},
    )
    assert result.exit_code == 2 and HEARTBEAT_ENV in result.output


def test_a_sigkilled_run_is_shown_as_abandoned_and_a_rerun_resumes(tmp_path: Path) -> None:
    with running_server(tmp_path / "mongo") as db, StandIn(delay_s=0.2) as standin:
        models = tmp_path / "models.yaml"
        models.write_text(
            json.dumps(
                {
                    "settings": {"retry_initial_s": 0.01, "retry_max_backoff_s": 0.05},
                    "models": [
                        {
                            "name": "hosted",
                            "base_url": standin.base_url,
                            "model": "standin-1",
                            "max_tokens": 64,
                            "min_output_tokens": 16,
                            "seed": 7,
                            "request_timeout_s": 5.0,
                        },
                    ],
                }  # fmt: skip
            )
        )
        turns = [{"name": f"t{t}", "text": f"Write part {t}."} for t in range(10)]
        prompts = tmp_path / "prompts.json"
        prompts.write_text(json.dumps({"sequences": [{"name": "saga", "turns": turns}]}))
        cmd = [sys.executable, "-m", "evaluator.cli", "run", "--config", str(models),
               "--prompts", str(prompts), "--runs", "1", "--mongo-uri", db.uri]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != URI_ENV} | {HEARTBEAT_ENV: "0.2"}
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            first = wait_for(lambda: the_run(db.uri), 60, "the run record")
            beat = wait_for(
                lambda: (doc := the_run(db.uri)) and doc.heartbeat_at > first.heartbeat_at and doc,
                30,
                "a heartbeat from the subprocess",
            )
            assert proc.poll() is None, "the run finished before the kill: slow the stand-in down"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        killed = the_run(db.uri)
        assert killed is not None and killed.status == "running"  # nothing could record the end
        assert killed.pid == proc.pid and beat.pid == proc.pid

        def listing() -> str:
            result = CliRunner().invoke(cli, ["runs", "--mongo-uri", db.uri], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            return result.output

        shown = listing()
        assert statuses(shown) == {killed.id: "abandoned"}  # this host: the pid is gone, no waiting
        assert "re-run the same command to resume" in " ".join(shown.split())
        # Seen from another host, only the heartbeat tells: fresh now, late after stale_after.
        last = killed.heartbeat_at
        assert run_state(killed, hostname="another-host", now=last).status == "running"
        later = last + stale_after(killed) + timedelta(seconds=1)
        assert run_state(killed, hostname="another-host", now=later).status == "abandoned"

        resumed = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        after = statuses(listing())
    assert after.pop(killed.id) == "abandoned"
    assert list(after.values()) == ["completed"]  # the re-run: a run record of its own
