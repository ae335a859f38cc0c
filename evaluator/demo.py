"""`make demo`: the main job end to end on the embedded defaults, for a fresh machine.

Starts the local server with the bundled model unless one already answers, plays a short
evaluation with `storybench-eval run` (results go to the embedded MongoDB-wire server), judges its
answers with `storybench-eval judge` (the bundled model as its own judge: it shows the machinery,
its scores mean little), writes the HTML report with `storybench-eval report`, lists the stored
runs, and stops the server it started. Everything is the real product, only smaller.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from evaluator.config import DEFAULT_PROMPTS_PATH

ROOT = "http://127.0.0.1:8080"
LOG = Path(".storybench/serve.log")


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def _ours_is_up() -> bool:
    try:
        body = httpx.get(f"{ROOT}/storybench/models", timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return False
    return isinstance(body, dict) and body.get("server") == "storybench"


def _port_taken() -> bool:
    try:
        httpx.get(f"{ROOT}/", timeout=2.0)
    except httpx.TransportError:
        return False
    return True


def _start_server() -> subprocess.Popen[bytes]:
    LOG.parent.mkdir(parents=True, exist_ok=True)
    print(f"Starting the local server with the bundled model (log: {LOG}) ...", flush=True)
    log = LOG.open("wb")
    proc = subprocess.Popen(
        [_bin("storybench-serve"), "--config", "config/local_models.json"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with code {proc.returncode}; see {LOG}:\n{LOG.read_text()[-2000:]}")
        try:
            if httpx.get(f"{ROOT}/health", timeout=2.0).status_code == 200:
                print(f"Server ready at {ROOT}/v1", flush=True)
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    proc.terminate()
    sys.exit(f"the server did not become ready within 180 s; see {LOG}")


def _first_sequences(n: int) -> str:
    prompts = json.loads(DEFAULT_PROMPTS_PATH.read_text())
    return ",".join(s["name"] for s in prompts["sequences"][:n])


def _step(cmd: list[str]) -> int:
    print("$ " + " ".join([Path(cmd[0]).name, *cmd[1:]]), flush=True)
    return subprocess.call(cmd)


def main() -> int:
    proc = None
    if not _ours_is_up():
        if _port_taken():
            sys.exit(
                f"something that is not storybench-serve answers at {ROOT}; stop it or change "
                "the port in config/local_models.json and config/models.yaml"
            )
        proc = _start_server()
    try:
        sequences = _first_sequences(2)
        cmd = [
            _bin("storybench-eval"),
            "run",
            "--models",
            "smollm2-local",
            "--sequences",
            sequences,
            "--runs",
            "1",
        ]
        code = _step(cmd)
        if code == 0:
            # A 135M judge follows the JSON grammar but not the rubric: real evaluations name a
            # capable judge with --judge (docs/judging.md).
            # Only the first sequence's turns, to keep the demo short on a small CPU.
            first = sequences.split(",")[0]
            judge = ["--judge", "smollm2-local", "--sequence", first, "--kind", "response"]
            code = _step([_bin("storybench-eval"), "judge", "--latest", *judge])
        report = Path("reports/demo.html")
        report.parent.mkdir(exist_ok=True)
        report_code = _step([_bin("storybench-eval"), "report", "--latest", "-o", str(report)])
        _step([_bin("storybench-eval"), "runs", "--limit", "5"])
        if code == 0 and report_code == 0:
            print(
                f"\nReport: {report.resolve()} (open it in a browser).\n"
                "The full evaluation (every sequence, 3 runs each): storybench-eval run "
                "(with `make serve` running), then storybench-eval judge --latest --judge MODEL "
                "and storybench-eval report --latest. Inspect: storybench-eval show RUN_ID; "
                "export: storybench-eval export --format csv --out results.csv"
            )
        return code or report_code
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            print("Server stopped.", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
