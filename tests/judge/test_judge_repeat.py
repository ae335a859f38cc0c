"""`storybench-eval judge --repeat K`: K stored judgements per target, repeat 0 exactly the
judgement made without the option, later repeats sampled with their own seeds; resumable and
extendable. The judge endpoint is mocked at the HTTP transport (respx), the store is in memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import respx

from evaluator.judge.rubric import load_rubric
from evaluator.records import sequence_run_id
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
)

CHAT = f"{JUDGE_BASE}/chat/completions"
VERSION = load_rubric(REPO / "config" / "rubric.json").version_id
SEQUENCE_ID = sequence_run_id(EXP, "writer", "lighthouse", 0)
RUBRIC_SEED = 1234  # config/rubric.json
SHA = "ab" * 32


def bodies(route: respx.Route) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in route.calls]


@respx.mock
def test_each_repeat_is_stored_under_its_own_id_with_its_seed_and_temperature(
    memory_store: ObservedStore, tmp_path: Path
) -> None:
    no_storybench_server()
    route = respx.post(CHAT).mock(side_effect=good_judge)
    result = invoke(*judge_args(tmp_path, "--kind", "sequence", "--repeat", "3", "--concurrency", "1"))
    assert result.exit_code == 0, result.output

    base = f"{SEQUENCE_ID}|judge|{VERSION}"
    assert sorted(memory_store.evals) == sorted([base, f"{base}|r1", f"{base}|r2"])
    sent = sorted((b["seed"], b["temperature"]) for b in bodies(route))
    assert sent == [(1234, 0.0), (2234, 0.7), (3234, 0.7)]
    for k, doc_id in enumerate([base, f"{base}|r1", f"{base}|r2"]):
        doc = memory_store.evals[doc_id]
        assert doc["repeat"] == k and doc["target_id"] == SEQUENCE_ID
        assert doc["details"]["seed"] == RUBRIC_SEED + 1000 * k
        assert doc["details"]["temperature"] == (0.0 if k == 0 else 0.7)
        assert doc["details"]["judge_model_sha256"] is None  # a hosted judge
    assert "3 to judge (3 per target), 0 already judged" in flat(result.output)


@respx.mock
def test_resume_makes_only_missing_repeats_and_a_larger_k_adds_repeats(
    memory_store: ObservedStore, tmp_path: Path
) -> None:
    no_storybench_server()
    route = respx.post(CHAT).mock(side_effect=good_judge)
    # Judged before repeats existed (no option): these are repeat 0, never judged again.
    assert invoke(*judge_args(tmp_path)).exit_code == 0
    assert route.call_count == 5 and all(d["repeat"] == 0 for d in memory_store.evals.values())

    two = invoke(*judge_args(tmp_path, "--repeat", "2"))
    assert two.exit_code == 0, two.output
    assert route.call_count == 10  # only repeat 1 of each of the 5 targets
    assert "5 to judge (2 per target), 5 already judged" in flat(two.output)
    new = bodies(route)[5:]
    assert {(b["seed"], b["temperature"]) for b in new} == {(2234, 0.7)}

    again = invoke(*judge_args(tmp_path, "--repeat", "2"))
    assert again.exit_code == 0 and route.call_count == 10
    assert "0 to judge (2 per target), 10 already judged" in flat(again.output)

    three = invoke(*judge_args(tmp_path, "--repeat", "3", "--repeat-temperature", "0.3"))
    assert three.exit_code == 0, three.output
    assert route.call_count == 15
    assert {(b["seed"], b["temperature"]) for b in bodies(route)[10:]} == {(3234, 0.3)}
    repeats = sorted(d["repeat"] for d in memory_store.evals.values())
    assert repeats == [0] * 5 + [1] * 5 + [2] * 5
    # Asking for fewer repeats than stored judges nothing and deletes nothing.
    fewer = invoke(*judge_args(tmp_path))
    assert fewer.exit_code == 0 and route.call_count == 15 and len(memory_store.evals) == 15


def test_dry_run_counts_every_repeat(memory_store: ObservedStore, tmp_path: Path) -> None:
    dry = ("--kind", "response", "--repeat", "3", "--dry-run")
    with respx.mock:
        route = respx.route(host="judge.test")
        result = invoke(*judge_args(tmp_path, *dry))
    assert result.exit_code == 0, result.output
    assert route.call_count == 0 and memory_store.evals == {}
    out = flat(result.output)
    assert "12 to judge (3 per target)" in out
    assert "6,144" in out  # completion tokens (max): 4 responses x 3 repeats x 512

    with respx.mock:
        no_storybench_server()
        respx.post(CHAT).mock(side_effect=good_judge)
        assert invoke(*judge_args(tmp_path, "--kind", "response")).exit_code == 0
    with respx.mock:
        route = respx.route(host="judge.test")
        after = flat(invoke(*judge_args(tmp_path, *dry)).output)
    assert route.call_count == 0
    assert "8 to judge (3 per target), 4 already judged" in after and "4,096" in after


@respx.mock
def test_a_judge_served_by_our_server_records_its_model_file_sha256(
    memory_store: ObservedStore, tmp_path: Path
) -> None:
    respx.get("http://judge.test/storybench/models").mock(
        return_value=httpx.Response(
            200,
            json={
                "server": "storybench",
                "n_parallel": 2,
                "models": [{"name": "judge-1", "n_ctx": 8192, "sha256": SHA}],
            },
        )
    )
    respx.post("http://judge.test/extras/tokenize/count").mock(
        side_effect=lambda req: httpx.Response(200, json={"count": len(json.loads(req.content)["input"])})
    )
    respx.post(CHAT).mock(side_effect=good_judge)
    result = invoke(*judge_args(tmp_path, "--kind", "sequence", "--repeat", "2"))
    assert result.exit_code == 0, result.output
    assert [d["details"]["judge_model_sha256"] for d in memory_store.evals.values()] == [SHA, SHA]
