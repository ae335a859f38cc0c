"""Secrets, exposure and paths.

- A canary API key, given the only supported way (an environment variable named by
  `api_key_env`), is used for real runs (against the hosted-API stand-in, which echoes it back
  in error messages, and against a keyed `storybench-serve`) and then searched for byte by byte
  in the database files, a dump of every collection, every log, every export and everything
  the commands printed: 0 hits.
- The server binds 127.0.0.1 by default; with a key, every route but /health needs it. The
  route-by-route check lives in tests/server/test_server_auth_lifecycle.py; here, every route
  of the served OpenAPI schema must be in that list, and FastAPI's own routes are covered.
- `--out` and config paths: refused or written cleanly, never a traceback, never a half file.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from bson import json_util
from click.testing import CliRunner

from evaluator.cli import cli as eval_cli
from evaluator.store.embedded import running_server
from server.cli import main as serve_main
from tests.reliability.conftest import (
    EVAL,
    child_env,
    eval_cmd,
    models_yaml,
    mongo_client,
    prompts_json,
    run_cli,
)
from tests.reliability.standin import StandIn
from tests.server.test_server_auth_lifecycle import ROUTES
from tests.support.servers import RunningServer, model_entry, start_server, write_config

pytestmark = pytest.mark.integration

CANARY = "sk-canary-" + uuid.uuid4().hex  # 42 characters, unique per session
KEY_ENV = "STORYBENCH_CANARY_KEY"
LEAKS: dict[str, int] = {}


def needles() -> list[bytes]:
    """The key, its distinctive core (catches a truncated copy) and its base64 forms."""
    core = CANARY[10:26].encode()
    return [
        CANARY.encode(),
        core,
        base64.b64encode(CANARY.encode()),
        base64.b64encode(f"Bearer {CANARY}".encode()),
    ]


def scan(where: dict[str, bytes]) -> list[str]:
    """Names of the blobs that contain any form of the key."""
    return [name for name, blob in where.items() for needle in needles() if needle in blob]


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def dump_collections(uri: str) -> dict[str, bytes]:
    """Every document of every collection of every database, as extended JSON."""
    out: dict[str, bytes] = {}
    with mongo_client(uri) as client:
        for db_name in client.list_database_names():
            db = client[db_name]
            for coll in db.list_collection_names():
                out[f"{db_name}.{coll}"] = json_util.dumps(list(db[coll].find({}))).encode()
    return out


def _cli_session(
    models: Path, prompts: Path, env: dict[str, str], tmp: Path, runs: int = 2
) -> dict[str, bytes]:
    """run (`runs` times: the next ones resume), runs, show, export jsonl/csv: everything they
    print and write."""
    printed: dict[str, bytes] = {}
    for n in range(runs):
        result = run_cli(eval_cmd(models, prompts, "--runs", "1"), env, timeout=300)
        printed[f"run {n} output"] = (result.stdout + result.stderr).encode()
        assert "Traceback" not in result.stdout + result.stderr
    base = EVAL
    listing = run_cli([*base, "runs"], env)
    printed["runs output"] = (listing.stdout + listing.stderr).encode()
    run_ids = [line.split()[0] for line in listing.stdout.splitlines() if line.strip()[:4].isdigit()]
    assert len(run_ids) == runs, listing.stdout
    shown = run_cli([*base, "show", run_ids[-1]], env)  # the first run: its errors, then resumed turns
    assert shown.returncode == 0, shown.stdout + shown.stderr
    printed["show output"] = (shown.stdout + shown.stderr).encode()
    for fmt in ("jsonl", "csv"):
        out = tmp / f"export.{fmt}"
        exported = run_cli([*base, "export", "--format", fmt, "--out", str(out)], env)
        assert exported.returncode == 0, exported.stdout + exported.stderr
        printed[f"export {fmt} output"] = (exported.stdout + exported.stderr).encode()
        printed[f"export {fmt} file"] = out.read_bytes()
    return printed


def _record(figures: dict[str, Any], name: str, searched: dict[str, bytes], hits: list[str]) -> None:
    LEAKS[name] = len(hits)
    figures["secret_leaks"] = {
        **figures.get("secret_leaks", {}),
        name: {"blobs_searched": len(searched), "bytes_searched": sum(map(len, searched.values())),
               "leaks": len(hits)},
    }  # fmt: skip


def test_a_canary_key_never_reaches_the_database_logs_exports_or_output(
    tmp_path: Path, figures: dict[str, Any]
) -> None:
    data = tmp_path / "data"
    env = child_env(STORYBENCH_DATA_DIR=str(data), **{KEY_ENV: CANARY})
    with StandIn(key=CANARY) as standin:
        # The provider misbehaves in every way that could carry the key back: errors that
        # quote the Authorization header (400 and 401), retried faults, then answers.
        standin.script.extend(["500", "401_echo_key"])
        models = models_yaml(tmp_path / "models.yaml", standin.base_url, api_key_env=KEY_ENV)
        prompts = prompts_json(tmp_path / "prompts.json", n_sequences=2, n_turns=2)
        with running_server(data) as server:  # held open: the commands reuse it
            printed = _cli_session(models, prompts, env, tmp_path)
            searched = {**printed, **dump_collections(server.uri)}
        assert all(r.headers.get("authorization") == f"Bearer {CANARY}" for r in standin.requests)
        assert any(r.fault == "401_echo_key" for r in standin.requests)  # the key was echoed back
    searched.update(files_under(data))  # SQLite files (freed pages and WAL too), server.log, state
    hits = scan(searched)
    _record(figures, "hosted_api_run", searched, hits)
    assert hits == []
    assert any(b"Bearer ***" in blob for blob in searched.values()), "the echoed key should show redacted"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("keyed-server")
    config = write_config(tmp / "c.json", [model_entry("story", n_ctx=1024)], api_key_env=KEY_ENV)
    running = start_server(config, tmp / "server.log", env={KEY_ENV: CANARY})
    running.api_key = CANARY
    yield running
    running.stop()


def test_a_canary_key_never_leaks_through_a_run_against_the_local_server(
    keyed_server: RunningServer, tmp_path: Path, figures: dict[str, Any]
) -> None:
    data = tmp_path / "data"
    env = child_env(STORYBENCH_DATA_DIR=str(data), **{KEY_ENV: CANARY})
    models = models_yaml(
        tmp_path / "models.yaml", keyed_server.base_url, model="story", api_key_env=KEY_ENV, max_tokens=8,
        min_output_tokens=4, request_timeout_s=60.0,
    )  # fmt: skip
    prompts = prompts_json(tmp_path / "prompts.json", n_sequences=1, n_turns=2)
    with running_server(data) as server:
        printed = _cli_session(models, prompts, env, tmp_path, runs=1)
        searched = {**printed, **dump_collections(server.uri)}
        with mongo_client(server.uri) as client:
            run = client["storybench"]["runs"].find_one({})
            assert run is not None and run["server_metadata"], "the server's metadata is recorded"
            assert client["storybench"]["responses"].count_documents({"outcome": "ok"}) == 2
    searched.update(files_under(data))
    searched["server log"] = keyed_server.log_path.read_bytes()
    hits = scan(searched)
    _record(figures, "local_server_run", searched, hits)
    assert hits == []


def test_the_server_binds_loopback_by_default(keyed_server: RunningServer) -> None:
    """No --host given: the listening socket is 127.0.0.1 only (/proc/net/tcp), never 0.0.0.0."""
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if state == "0A" and int(port, 16) == keyed_server.port:  # 0A = LISTEN
                listening.append(address)
    assert listening == ["0100007F"], listening  # 127.0.0.1, little-endian hex


def test_every_route_but_health_needs_the_key(keyed_server: RunningServer) -> None:
    with httpx.Client(base_url=keyed_server.root, timeout=60) as client:
        spec = client.get("/openapi.json", headers=keyed_server.headers())
        assert spec.status_code == 200
        served = {(method.upper(), path) for path, ops in spec.json()["paths"].items() for method in ops}
        covered = {(method, path) for method, path, _ in ROUTES}
        # The route-by-route test in tests/server must cover every route the server serves.
        assert served <= covered, f"not in tests/server/test_server_auth_lifecycle.ROUTES: {served - covered}"
        # Routes outside the schema: FastAPI's docs and the schema itself, and unknown paths.
        for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect", "/no-such-route"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": CANARY}):
                r = client.get(path, headers=headers)
                assert r.status_code == 401, (path, headers, r.status_code)
                assert CANARY.encode() not in r.content
            assert client.get(path, headers=keyed_server.headers()).status_code in (200, 404)
        assert client.get("/health").status_code == 200


# -- paths -----------------------------------------------------------------------------------------


@pytest.fixture
def stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An embedded database (held open for the test) holding one finished run."""
    data = tmp_path / "data"
    monkeypatch.setenv("STORYBENCH_DATA_DIR", str(data))
    with StandIn() as standin, running_server(data):
        models = models_yaml(tmp_path / "models.yaml", standin.base_url)
        prompts = prompts_json(tmp_path / "prompts.json", n_sequences=1, n_turns=1)
        result = CliRunner().invoke(
            eval_cli, ["run", "--config", str(models), "--prompts", str(prompts), "--runs", "1"]
        )
        assert result.exit_code == 0, result.output
        yield data


def _export(*args: str) -> Any:
    return CliRunner().invoke(eval_cli, ["export", *args])


def test_export_out_paths_are_checked(stored: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    existing = tmp_path / "existing.csv"
    existing.write_text("keep me")
    target = tmp_path / "target.csv"
    target.write_text("the link's target")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    cases = [
        (existing, 1, "already exists"),
        (link, 1, "already exists"),
        (tmp_path / "missing-dir" / "x.csv", 1, "does not exist"),
        (tmp_path, 2, "is a directory"),
        (Path("/proc/storybench.csv"), 1, "cannot write in the folder /proc"),
        (Path("/sys/storybench.csv"), 1, "cannot write in the folder /sys"),
    ]
    for path, code, message in cases:
        result = _export("--out", str(path))
        assert result.exit_code == code, (path, result.output, result.exception)
        assert message in " ".join(result.output.split()), (path, result.output)
        assert isinstance(result.exception, SystemExit), result.exception
    assert existing.read_text() == "keep me"
    # --force replaces the link itself, never writes through it to its target.
    assert _export("--out", str(link), "--force").exit_code == 0
    assert target.read_text() == "the link's target" and not link.is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "a temporary file was left"
    # A relative --out is relative to the working directory, like any command-line path.
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert _export("--out", "rel.jsonl").exit_code == 0
    assert (elsewhere / "rel.jsonl").read_text().count("\n") == 1


def test_config_paths_are_checked(tmp_path: Path) -> None:
    prompts = prompts_json(tmp_path / "prompts.json")
    for path, message in [
        (tmp_path / "missing.yaml", "models file not found"),
        (tmp_path, "is a directory"),
        (Path("/dev/null"), "the file is empty"),
    ]:
        args = ["run", "--config", str(path), "--prompts", str(prompts), "--dry-run"]
        result = CliRunner().invoke(eval_cli, args)
        out = " ".join(result.output.split())
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (out, result.exception)
        assert str(path) in out and message in out
    missing = tmp_path / "nope.json"
    served = CliRunner().invoke(serve_main, ["--config", str(missing), "--check"])
    assert served.exit_code == 1 and f"{missing}: config file not found" in served.output
    as_dir = CliRunner().invoke(serve_main, ["--config", str(tmp_path), "--check"])
    assert as_dir.exit_code == 2 and "is a directory" in " ".join(as_dir.output.split())
