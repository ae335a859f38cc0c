"""`storybench-eval compare --repeat K`: K stored verdicts per ordered comparison, repeat 0
exactly the verdict made without the option, later repeats sampled with their own seeds;
resumable, extendable, failed repeats retried. Driven end to end against the simulated judge
(tests/support/sim_judge.py: a real HTTP server on 127.0.0.1) and an in-memory store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evaluator.config import ModelEntry
from evaluator.endpoint import Endpoint, StoryBenchEndpoint
from evaluator.judge.rubric import load_rubric
from evaluator.records import pairwise_id
from tests.leaderboard.conftest import Shared, invoke, models_yaml, seed_models, stored_pairwise
from tests.support.sim_judge import SimJudge

VERSION = load_rubric(Path("config/rubric.json")).version_id
TRUTH = {"a": 0.0, "b": 1.0}
SHA = "cd" * 32


def compare(tmp_path: Path, sim: SimJudge, *extra: str) -> tuple[int, str]:
    result = invoke(
        "compare", "--models", "a,b", "--judge", "sim",
        "--config", str(models_yaml(tmp_path, sim.base_url)), *extra,
    )  # fmt: skip
    return result.exit_code, " ".join(result.output.split())


def by_id(shared: Shared) -> dict[str, dict[str, Any]]:
    return {d["_id"]: d for d in stored_pairwise(shared)}


def test_each_repeat_is_stored_under_its_own_id_with_its_seed_and_temperature(
    shared: Shared, tmp_path: Path
) -> None:
    with shared.open() as store:
        convs = seed_models(store, list(TRUTH), sequences=2, runs=1)
    with SimJudge(strengths=TRUTH) as sim:
        code, out = compare(tmp_path, sim, "--repeat", "3")
        assert code == 0, out
        assert sim.requests == 12  # 2 pairs x 2 orders x 3 repeats
    assert "12 comparisons (2 pairs x 2 orders x 3 repeats), 12 to judge" in out
    docs = by_id(shared)
    orders = [(x, y) for a, b in zip(convs["a"], convs["b"], strict=True) for x, y in ((a, b), (b, a))]
    assert set(docs) == {pairwise_id(x, y, "sim", VERSION, k) for x, y in orders for k in range(3)}
    assert pairwise_id(*orders[0], "sim", VERSION) == f"{orders[0][0]}|{orders[0][1]}|sim|{VERSION}"
    for x, y in orders:
        for k in range(3):
            doc = docs[pairwise_id(x, y, "sim", VERSION, k)]
            assert doc["repeat"] == k and doc["status"] == "ok"
            assert doc["details"]["seed"] == 1234 + 1000 * k
            assert doc["details"]["temperature"] == (0.0 if k == 0 else 0.7)
            assert doc["details"]["judge_model_sha256"] is None  # the simulated judge is hosted


def test_resume_makes_only_missing_repeats_and_a_larger_k_adds_repeats(
    shared: Shared, tmp_path: Path
) -> None:
    with shared.open() as store:
        seed_models(store, list(TRUTH), sequences=2, runs=1)
    with SimJudge(strengths=TRUTH) as sim:
        assert compare(tmp_path, sim)[0] == 0  # no option: repeat 0 only, ids without a suffix
        assert sim.requests == 4 and all(d["repeat"] == 0 for d in stored_pairwise(shared))
        code, out = compare(tmp_path, sim, "--repeat", "2", "--repeat-temperature", "0.4")
        assert code == 0 and sim.requests == 8, out
        assert "4 to judge (0 failed before), 4 already stored" in out
        code, out = compare(tmp_path, sim, "--repeat", "2")
        assert code == 0 and sim.requests == 8 and "Nothing to judge" in out
        assert compare(tmp_path, sim, "--repeat", "3")[0] == 0
        assert sim.requests == 12
    docs = stored_pairwise(shared)
    assert sorted(d["repeat"] for d in docs) == [0] * 4 + [1] * 4 + [2] * 4
    assert {d["details"]["temperature"] for d in docs if d["repeat"] == 1} == {0.4}
    assert {d["details"]["temperature"] for d in docs if d["repeat"] == 2} == {0.7}


def test_failed_repeats_are_stored_as_failed_and_retried(shared: Shared, tmp_path: Path) -> None:
    with shared.open() as store:
        seed_models(store, list(TRUTH), sequences=2, runs=1)
    with SimJudge(strengths=TRUTH, broken={"b"}) as sim:
        code, out = compare(tmp_path, sim, "--repeat", "2")
        assert code == 3, out
        assert sim.requests == 16  # 8 comparisons, each the answer and one retry with a note
        failed = stored_pairwise(shared)
        assert len(failed) == 8 and all(d["status"] == "failed" for d in failed)
        assert {d["details"]["seed"] for d in failed} == {1234, 2234}
        assert "repeat 1" in out  # the failure list names the repeat
        sim.broken.clear()
        code, out = compare(tmp_path, sim, "--repeat", "2")
        assert code == 0 and sim.requests == 24, out
        assert "8 to judge (8 failed before)" in out
    assert all(d["status"] == "ok" for d in stored_pairwise(shared))


def test_dry_run_counts_every_repeat(shared: Shared, tmp_path: Path) -> None:
    with shared.open() as store:
        seed_models(store, list(TRUTH), sequences=2, runs=1)
    with SimJudge(strengths=TRUTH) as sim:
        code, out = compare(tmp_path, sim, "--repeat", "3", "--dry-run")
        assert code == 0 and sim.requests == 0, out
        assert "12 comparisons: about" in out and f"at most {12 * 512} completion tokens" in out
        assert compare(tmp_path, sim)[0] == 0
        code, out = compare(tmp_path, sim, "--repeat", "3", "--dry-run")
        assert "8 comparisons: about" in out and "4 already stored" in out
    assert len(stored_pairwise(shared)) == 4


def test_a_judge_served_by_our_server_records_its_model_file_sha256(
    shared: Shared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def our_server(entry: ModelEntry) -> Endpoint:
        return StoryBenchEndpoint(entry, metadata={"name": entry.model, "sha256": SHA}, slots=2)

    monkeypatch.setattr("evaluator.compare.cli.probe", our_server)
    with shared.open() as store:
        seed_models(store, list(TRUTH), sequences=1, runs=1)
    with SimJudge(strengths=TRUTH) as sim:
        code, out = compare(tmp_path, sim, "--repeat", "2")
        assert code == 0, out
    docs = stored_pairwise(shared)
    assert len(docs) == 4 and {d["details"]["judge_model_sha256"] for d in docs} == {SHA}
