"""Reliability fixtures: the hosted-API stand-in, a real embedded database, configs, figures.

Every test here runs against loopback only, with real processes and a real nx-27017; nothing
touches the developer's own database (no STORYBENCH_MONGO_URI, data dir under tmp_path).

Figures (turns attempted, lost, duplicated, recovered, fuzz cases, ...) are collected with the
`figures` fixture, printed at the end of the session and written to
`.pytest_cache/reliability-figures.json`; RELIABILITY.md quotes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from evaluator.records import RunRecord
from evaluator.store import Store, read_document
from evaluator.store.connect import URI_ENV
from evaluator.store.embedded import EmbeddedServer, running_server
from tests.reliability.standin import StandIn
from tests.support.isolation import _no_user_database, store_on  # noqa: F401  (autouse fixture)
from tests.support.servers import REPO

_FIGURES: dict[str, Any] = {}
FIGURES_FILE = REPO / ".pytest_cache" / "reliability-figures.json"


@pytest.fixture(scope="session")
def figures() -> dict[str, Any]:
    """Record a figure: `figures["soak"] = {...}`; shown in the terminal summary."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name, value in _FIGURES.items():
        terminalreporter.write_line(f"{name}: {json.dumps(value, sort_keys=True)}")
    FIGURES_FILE.parent.mkdir(exist_ok=True)
    old: dict[str, Any] = {}
    if FIGURES_FILE.exists():
        try:
            old = json.loads(FIGURES_FILE.read_text())
        except ValueError:
            old = {}
    FIGURES_FILE.write_text(json.dumps({**old, **_FIGURES}, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """One embedded nx-27017 for the session's in-process tests."""
    with running_server(tmp_path_factory.mktemp("reliability-mongo")) as server:
        yield server


@pytest.fixture
def db_name() -> str:
    return f"rel_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(mongo: EmbeddedServer, db_name: str) -> Iterator[Store]:
    """A Store on a database of its own, dropped afterwards."""
    with store_on(mongo.uri, db_name) as s:
        yield s


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn(hang_s=5.0) as server:
        yield server


# -- configs and commands ----------------------------------------------------------------------


def models_yaml(path: Path, base_url: str, *, settings: dict[str, Any] | None = None, **entry: Any) -> Path:
    """A models.yaml with one entry (JSON is valid YAML)."""
    fields: dict[str, Any] = {
        "name": "hosted", "base_url": base_url, "model": "standin-1", "max_tokens": 64,
        "min_output_tokens": 16, "seed": 7, "request_timeout_s": 1.0, **entry,
    }  # fmt: skip
    base_settings = {"retry_max_attempts": 3, "retry_initial_s": 0.01, "retry_max_backoff_s": 0.05,
                     "retry_max_wait_s": 20}  # fmt: skip
    doc = {"settings": {**base_settings, **(settings or {})}, "models": [fields]}
    path.write_text(json.dumps(doc, indent=2))
    return path


def prompts_json(path: Path, n_sequences: int = 1, n_turns: int = 3) -> Path:
    sequences = [
        {
            "name": f"saga-{s}",
            "system": "You are a novelist.",
            "turns": [{"name": f"t{t}", "text": f"Write part {t} of story {s}."} for t in range(n_turns)],
        }
        for s in range(n_sequences)
    ]
    path.write_text(json.dumps({"sequences": sequences}))
    return path


EVAL = [sys.executable, "-m", "evaluator.cli"]
SERVE = [sys.executable, "-m", "server"]


def eval_cmd(models: Path, prompts: Path, *extra: str) -> list[str]:
    return [*EVAL, "run", "--config", str(models), "--prompts", str(prompts), *extra]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != URI_ENV}
    return {**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **extra}


def run_cli(
    args: list[str], env: dict[str, str], timeout: float = 120, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def mongo_client(uri: str) -> MongoClient[dict[str, Any]]:
    """A client of our own on the test's database (use it as a context manager)."""
    return MongoClient(uri, serverSelectionTimeoutMS=5000, tz_aware=True)


def responses(uri: str, db: str = "storybench") -> list[dict[str, Any]]:
    with mongo_client(uri) as client:
        docs = list(client[db]["responses"].find({}))
    return sorted(docs, key=lambda d: (d["sequence"], d["run_index"], d["turn_index"]))


def runs(uri: str, db: str = "storybench") -> list[RunRecord]:
    """Run documents oldest first, read as the product reads them (typed, upgraded)."""
    with mongo_client(uri) as client:
        return [read_document(RunRecord, d) for d in client[db]["runs"].find({}).sort("started_at", 1)]
