"""A reasoning model as the pairwise judge, and the judge's bill: every comparison stores what it
cost (failed ones too: their answers were paid for), and the leaderboard sums the judgements and
comparisons behind its table as `judge_cost_usd`. The judge is mocked at the HTTP transport
(respx), answering as the simulated judge would; the store is in memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from tests.judge.reasoning_stream import reasoning_sse
from tests.leaderboard.conftest import Shared, add_scores, invoke, seed_models, stored_pairwise
from tests.support.sim_judge import SimJudge

JUDGE = "http://judge.test/v1"
SIM = SimJudge(strengths={"a": 0.0, "b": 1.0}, broken={"c"})


def models_yaml(tmp_path: Path, *entry: str) -> Path:
    path = tmp_path / "models.yaml"
    lines = "".join(f"    {line}\n" for line in entry)
    path.write_text(
        "settings:\n  retry_max_attempts: 2\n  retry_initial_s: 0.01\n  retry_max_backoff_s: 0.05\n"
        f"models:\n  - name: sim\n    base_url: {JUDGE}\n    model: o4-mini\n{lines}"
    )
    return path


def answer(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    prompt = "\n".join(str(m.get("content", "")) for m in body["messages"])
    text = SIM.verdict(prompt, body.get("seed"))
    return reasoning_sse(text, prompt_tokens=1000, completion_tokens=200, reasoning_tokens=150)


def bodies(route: respx.Route) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in route.calls]


PRICED = [
    "reasoning: true",
    "reasoning_effort: medium",
    "price_input_per_mtok: 1",
    "price_output_per_mtok: 4",
]
ONE_CALL = (1000 * 1 + 200 * 4) / 1e6


@respx.mock
def test_a_reasoning_pairwise_judge_is_sent_no_temperature_and_each_verdict_is_priced(
    shared: Shared, tmp_path: Path
) -> None:
    respx.get("http://judge.test/storybench/models").mock(return_value=httpx.Response(404))
    route = respx.post(f"{JUDGE}/chat/completions").mock(side_effect=answer)
    with shared.open() as store:
        seed_models(store, ["a", "b"], sequences=2, runs=1)
    config = str(models_yaml(tmp_path, *PRICED))
    result = invoke("compare", "--models", "a,b", "--judge", "sim", "--config", config, "--repeat", "2")
    assert result.exit_code == 0, result.output

    sent = bodies(route)
    assert len(sent) == 8  # 2 pairs x 2 orders x 2 repeats
    for body in sent:
        assert body["max_completion_tokens"] == 512 and body["reasoning_effort"] == "medium"
        assert not {"max_tokens", "temperature", "top_p"} & set(body)
    docs = stored_pairwise(shared)
    assert len(docs) == 8 and {d["status"] for d in docs} == {"ok"}
    for doc in docs:
        details = doc["details"]
        assert details["temperature"] is None and details["reasoning_effort"] == "medium"
        assert details["reasoning_tokens"] == 150
        assert details["cost_usd"] == pytest.approx(ONE_CALL)


@respx.mock
def test_failed_comparisons_store_their_cost_and_the_leaderboard_sums_the_judge_cost(
    shared: Shared, tmp_path: Path
) -> None:
    respx.get("http://judge.test/storybench/models").mock(return_value=httpx.Response(404))
    respx.post(f"{JUDGE}/chat/completions").mock(side_effect=answer)
    with shared.open() as store:
        convs = seed_models(store, ["a", "b", "c"], sequences=1, runs=1)
        # Rubric judgements behind the same table: one priced at $0.01, the others unpriced.
        add_scores(store, convs["a"] + convs["b"] + convs["c"], 6, judge="sim")
        first = store.db["evaluations"].find_one({"target_id": convs["a"][0]})
        store.db["evaluations"].update_one({"_id": first["_id"]}, {"$set": {"details.cost_usd": 0.01}})
    config = str(models_yaml(tmp_path, *PRICED))
    result = invoke("compare", "--models", "a,b,c", "--judge", "sim", "--config", config)
    assert result.exit_code == 3, result.output  # incomplete: c's comparisons get no verdict

    docs = stored_pairwise(shared)
    failed = [d for d in docs if d["status"] == "failed"]
    assert len(docs) == 6 and len(failed) == 4  # a-c and b-c, both orders
    for doc in failed:  # two answers each (the retry with a note), both paid for
        assert doc["details"]["cost_usd"] == pytest.approx(2 * ONE_CALL)
        assert doc["details"]["attempts"] == 2

    board = invoke("leaderboard", "--judge", "sim", "--format", "json", "--resamples", "50")
    assert board.exit_code == 0, board.output
    data = json.loads(board.output)
    expected = 0.01 + 2 * ONE_CALL + 4 * 2 * ONE_CALL  # 1 priced judgement, 2 verdicts, 4 failures
    assert data["judge_cost_usd"] == pytest.approx(expected, abs=1e-6)

    text = invoke("leaderboard", "--judge", "sim", "--resamples", "50")
    assert text.exit_code == 0
    assert f"${expected:.4f}" in text.output and "judge cost" in text.output


def test_without_judge_prices_the_judge_cost_is_null(shared: Shared) -> None:
    with shared.open() as store:
        convs = seed_models(store, ["a", "b"], sequences=1, runs=1)
        add_scores(store, convs["a"] + convs["b"], 6, judge="sim")
    board = invoke("leaderboard", "--judge", "sim", "--format", "json", "--resamples", "50")
    assert board.exit_code == 0, board.output
    assert json.loads(board.output)["judge_cost_usd"] is None
