"""The benchmark harness works end to end on tiny settings. It asserts no speed.

The server benchmarks need native llama.cpp tools (`python -m benchmarks.native` builds them, several
minutes; `make bench-smoke` does it first); without them those tests are skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import native  # noqa: E402
from benchmarks.common import BENCHMARKS, Record, write_results  # noqa: E402
from benchmarks.engine_profile import OURS_ONLY  # noqa: E402

pytestmark = pytest.mark.integration

VOCAB = ROOT.parent / "shared" / "device" / "vocab-llama-bpe.json.gz"
KEYS = {"benchmark", "model", "concurrency", "metric", "unit", "ours", "reference", "ratio", "machine",
        "gpu", "versions", "date"}  # fmt: skip


def _check_records(records: list[dict], benchmarks: set[str]) -> None:
    assert records
    assert {r["benchmark"] for r in records} == benchmarks
    for r in records:
        assert r.keys() >= KEYS
        assert r["benchmark"] in BENCHMARKS
        assert r["ours"] is not None, r
        # Only our engine's own step profile has no native counterpart.
        assert r["reference"] is not None or r["reference_name"] == OURS_ONLY, r
        assert r["machine"] and r["date"] and r["versions"]


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "benchmarks.run", "--smoke", "--workdir", str(tmp_path / "work"),
           "--out-json", str(out), "--results-dir", str(tmp_path / "results"),
           "--markdown", str(tmp_path / "BENCHMARKS.md"), *args]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_evaluator_overhead_smoke(tmp_path: Path) -> None:
    doc = _run(tmp_path, "--benchmarks", "evaluator_overhead")
    _check_records(doc["records"], {"evaluator_overhead"})
    assert all(r["ours"] > 0 for r in doc["records"])
    latest = json.loads((tmp_path / "results" / "latest.json").read_text())
    assert len(latest) == len(doc["records"])
    assert "## Run log" in (tmp_path / "BENCHMARKS.md").read_text()


@pytest.mark.skipif(
    native.locate() is None, reason="no native llama.cpp tools: run python -m benchmarks.native"
)
def test_server_benchmarks_smoke(tmp_path: Path) -> None:
    models = ["--model", "bundled:smollm2-135m::smollm2"]
    tools = native.locate()
    if VOCAB.exists() and tools is not None and tools.quantize.exists():
        # The synthetic-model path too: a tiny Llama shape with the real 128k vocabulary.
        f16, q = tmp_path / "tiny-f16.gguf", tmp_path / "tiny-q4km.gguf"
        gen = [sys.executable, "-m", "benchmarks.gen_model", str(VOCAB), str(f16), "--shape", "tiny"]
        subprocess.run(gen, cwd=ROOT, check=True, capture_output=True)
        subprocess.run([str(tools.quantize), str(f16), str(q), "Q4_K_M"], check=True, capture_output=True)
        models += ["--model", f"{q}::tiny"]
    server_benchmarks = {"single_stream", "prefix_reuse", "concurrency", "multiturn_concurrency"}
    doc = _run(tmp_path, "--benchmarks", ",".join(sorted(server_benchmarks)), "--ours-engine", "batched",
               "--native-backend-sampling", *models)  # fmt: skip
    _check_records(doc["records"], server_benchmarks)
    assert not [n for n in doc["notes"] if "FAILED" in n or "did not start" in n], doc["notes"]
    metrics = {(r["benchmark"], r["metric"]) for r in doc["records"] if r["model"] == "smollm2"}
    # The batched engine's per-step profile, native with --backend-sampling, the cache share per turn.
    assert ("concurrency", "ours engine step at 2 sequences: sampling + other, share of the step") in metrics
    assert any("native with --backend-sampling" in m for _, m in metrics), metrics
    assert ("multiturn_concurrency", "turn 2 history served from cache") in metrics
    if "--model" in models[2:]:
        # Zeroed end-of-generation rows: every synthetic answer has exactly the asked length.
        assert not [n for n in doc["notes"] if n.startswith("tiny ") and "answer of" in n], doc["notes"]


def test_latest_keeps_other_machines(tmp_path: Path) -> None:
    def rec(machine: str, value: float) -> Record:
        r = Record("single_stream", "m", 1, "x", "tok/s", None, None, machine=machine,
                   date="2026-01-01T00:00:00Z", ours_runs=[value], reference_runs=[2 * value])  # fmt: skip
        return r.finish()

    write_results([rec("cpu", 1.0)], tmp_path, "a")
    write_results([rec("gpu", 5.0)], tmp_path, "b")
    write_results([rec("cpu", 3.0)], tmp_path, "c")
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert sorted((r["machine"], r["ours"]) for r in latest) == [("cpu", 3.0), ("gpu", 5.0)]
    assert latest[0]["ratio"] == 0.5
    assert len(list(tmp_path.glob("*.json"))) == 4  # three dated files and latest.json
