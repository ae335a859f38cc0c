"""`make demo`: the main job end to end on the embedded defaults, for a fresh machine.

Starts the local server with the bundled model unless one already answers, plays a short
evaluation of two local "models" (the bundled model at two temperatures, config/demo_models.yaml)
with `storybench-eval run` (results go to the embedded MongoDB-wire server), scores their answers
with `storybench-eval judge`, judges their whole conversations side by side in both orders with
`storybench-eval compare` (the bundled model as its own judge: it shows the machinery, its
verdicts mean little), shows the leaderboard with its intervals and writes it and the run report
as HTML, and stops the server it started. Everything is the real product, only smaller.
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
from evaluator.judge.rubric import DEFAULT_RUBRIC_PATH, load_rubric

ROOT = "http://127.0.0.1:8080"
LOG = Path(".storybench/serve.log")
DEMO_MODELS = "config/demo_models.yaml"
MODELS = ("smollm2-local", "smollm2-local-hot")
JUDGE = "smollm2-local"


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


def _shortest_sequences(n: int) -> str:
    """The `n` sequences with the fewest turns: the demo shows the machinery, quickly."""
    prompts = json.loads(DEFAULT_PROMPTS_PATH.read_text())
    shortest = sorted(prompts["sequences"], key=lambda s: len(s["turns"]))[:n]
    return ",".join(s["name"] for s in shortest)


def _step(cmd: list[str]) -> int:
    print("$ " + " ".join([Path(cmd[0]).name, *cmd[1:]]), flush=True)
    return subprocess.call(cmd)


def _play_judge_rank() -> int:
    eval_bin = _bin("storybench-eval")
    config = ["--config", DEMO_MODELS]
    models = ",".join(MODELS)
    sequences = _shortest_sequences(2)
    code = _step([eval_bin, "run", *config, "--models", models, "--sequences", sequences, "--runs", "1"])
    if code != 0:
        return code
    # A 135M judge follows the JSON grammar but not the rubric: real evaluations name a capable
    # judge with --judge (docs/judging.md). Whole conversations only, to keep the demo short.
    judge = ["--judge", JUDGE, *config]
    code = _step([eval_bin, "judge", "--latest", *judge, "--kind", "sequence"])
    code = _step([eval_bin, "compare", "--models", models, *judge]) or code
    # The rubric version of today's file: older demo runs judged with an earlier rubric stay stored.
    # The judge IS the evaluated model here (self-judging): the leaderboard leaves such judgements
    # out unless told otherwise, and flags them when shown.
    print(
        f"\nSelf-judging: {JUDGE} judges its own answers (one 135M model plays every part), so the "
        "leaderboard below needs --allow-self-judge and flags every figure as self-judged.",
        flush=True,
    )
    rubric_version = load_rubric(DEFAULT_RUBRIC_PATH).version_id
    version = ["--judge", JUDGE, "--rubric-version", rubric_version, "--allow-self-judge"]
    board_code = _step([eval_bin, "leaderboard", *version])
    leaderboard = Path("reports/leaderboard.html")
    leaderboard.parent.mkdir(exist_ok=True)
    board_code = _step([eval_bin, "leaderboard", *version, "-o", str(leaderboard)]) or board_code
    report = Path("reports/demo.html")
    report_code = _step([eval_bin, "report", "--latest", "-o", str(report)])
    if code == 0 and board_code == 0 and report_code == 0:
        print(
            f"\nLeaderboard: {leaderboard.resolve()}\n"
            f"Run report: {report.resolve()} (open them in a browser).\n"
            "The bundled 135M model is its own judge here: it shows the machinery, its verdicts mean "
            "little. A real evaluation: storybench-eval run (with `make serve` running), then "
            "storybench-eval judge --latest --judge MODEL, storybench-eval compare --models A,B "
            "--judge MODEL and storybench-eval leaderboard --judge MODEL (docs/leaderboard.md)."
        )
    return code or board_code or report_code


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
        return _play_judge_rank()
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
