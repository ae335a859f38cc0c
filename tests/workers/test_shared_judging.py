"""`judge` and `compare` claim each judgement / comparison: work another live worker holds is
waited for and, once that worker stored it, never requested again. The judge endpoint is mocked
at the HTTP transport (respx) or simulated (tests/support/sim_judge.py); the store is in memory."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import respx

from evaluator.judge.rubric import load_rubric
from evaluator.records import EvaluationRecord, evaluation_id, pairwise_id, sequence_run_id, utcnow
from tests.judge.conftest import (
    EXP,
    JUDGE_BASE,
    REPO,
    ObservedStore,
    flat,
    good_judge,
    invoke,
    judge_args,
    no_storybench_server,
    seed,
)
from tests.leaderboard.conftest import (
    Shared,
    models_yaml,
    seed_models,
    shared,
    stored_pairwise,
)
from tests.leaderboard.conftest import (
    invoke as invoke_cli,
)
from tests.support.documents import make_pairwise
from tests.support.memory_store import memory_store
from tests.support.sim_judge import SimJudge

__all__ = ["shared"]  # the in-memory database every command of a test opens (a fixture)

VERSION = load_rubric(REPO / "config" / "rubric.json").version_id
SEQUENCE_ID = sequence_run_id(EXP, "writer", "lighthouse", 0)


@respx.mock
def test_a_judgement_held_by_another_worker_is_not_requested_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = memory_store(ObservedStore)
    seed(store)
    monkeypatch.setattr("evaluator.judge.cli.open_store", lambda uri=None, db_name="storybench": store)
    no_storybench_server()
    route = respx.post(f"{JUDGE_BASE}/chat/completions").mock(side_effect=good_judge)
    held = evaluation_id(SEQUENCE_ID, "judge", VERSION, 0)
    now = utcnow()
    claim = store.claim_work(
        f"judgement:{held}", "judgement", owner="judgement-elsewhere", host="elsewhere", pid=1,
        owner_started_at=now, now=now, lease_s=60.0,
    )  # fmt: skip
    assert claim is not None

    def other_worker_finishes() -> None:
        time.sleep(0.5)
        store.save_evaluation(
            EvaluationRecord(
                target_id=SEQUENCE_ID,
                target_kind="sequence",
                judge_model="judge",
                rubric_version=VERSION,
                scores={"coherence": 7},
                rationale="by the other worker",
                created_at=utcnow(),
            )  # fmt: skip
        )
        assert store.release_claim(claim)

    helper = threading.Thread(target=other_worker_finishes)
    helper.start()
    result = invoke(
        *judge_args(tmp_path, "--kind", "sequence", "--repeat", "2", "--concurrency", "2"),
        env={"STORYBENCH_HEARTBEAT_S": "0.1"},
    )
    helper.join()
    assert result.exit_code == 0, result.output
    seeds = [json.loads(call.request.content)["seed"] for call in route.calls]
    assert seeds == [2234]  # only repeat 1; repeat 0 was the other worker's
    assert store.evals[held]["rationale"] == "by the other worker"
    assert "1 judged by another worker meanwhile" in flat(result.output)
    assert store.db["claims"].count_documents({}) == 0


def test_a_comparison_held_by_another_worker_is_not_requested_again(
    shared: Shared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORYBENCH_HEARTBEAT_S", "0.1")
    with shared.open() as store:
        convs = seed_models(store, ["a", "b"], sequences=1, runs=1)
    (first,), (second,) = convs["a"], convs["b"]
    held = pairwise_id(first, second, "sim", VERSION)
    now = utcnow()
    with shared.open() as store:
        claim = store.claim_work(
            f"comparison:{held}", "comparison", owner="comparison-elsewhere", host="elsewhere", pid=1,
            owner_started_at=now, now=now, lease_s=60.0,
        )  # fmt: skip
    assert claim is not None

    def other_worker_finishes() -> None:
        time.sleep(0.5)
        verdict = make_pairwise(first, second, first_model="a", second_model="b", judge="sim", rubric=VERSION)
        with shared.open() as store:
            assert store.save_pairwise(verdict.model_copy(update={"created_at": utcnow()}))
            assert store.release_claim(claim)

    helper = threading.Thread(target=other_worker_finishes)
    helper.start()
    with SimJudge(strengths={"a": 0.0, "b": 1.0}) as sim:
        result = invoke_cli(
            "compare",
            "--models",
            "a,b",
            "--judge",
            "sim",
            "--config",
            str(models_yaml(tmp_path, sim.base_url)),
        )
        requests = sim.requests
    helper.join()
    assert result.exit_code == 0, result.output
    assert requests == 1  # only the other order (b first); the held one was the other worker's
    stored = {d["_id"]: d for d in stored_pairwise(shared)}
    assert stored[held]["rationale"] == "A keeps the keeper's name; B renames her."
    assert pairwise_id(second, first, "sim", VERSION) in stored
    assert "1 compared by another worker meanwhile" in flat(result.output)
    with shared.open() as store:
        assert store.db["claims"].count_documents({}) == 0
