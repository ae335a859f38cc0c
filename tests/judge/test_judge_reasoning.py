"""A reasoning model as the rubric judge: its requests carry `max_completion_tokens` and its
`reasoning_effort`, never `temperature` (repeats then differ by seed only, and say so), and each
judgement stores what it cost, a retried answer included. The judge endpoint is mocked at the
HTTP transport (respx), the store is in memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from tests.judge.conftest import (
    JUDGE_BASE,
    ObservedStore,
    criteria_of,
    invoke,
    judge_args,
    models_yaml,
    no_storybench_server,
    verdict,
)
from tests.judge.reasoning_stream import reasoning_sse

CHAT = f"{JUDGE_BASE}/chat/completions"
PRICES = {"price_input_per_mtok": 2.0, "price_output_per_mtok": 8.0}


def reasoning_judge(tmp_path: Path) -> Path:
    return models_yaml(tmp_path, reasoning=True, reasoning_effort="low", **PRICES)


def answer(request: httpx.Request) -> httpx.Response:
    text = verdict(criteria_of(json.loads(request.content)))
    return reasoning_sse(text, prompt_tokens=800, completion_tokens=300, reasoning_tokens=256)


def bodies(route: respx.Route) -> list[dict[str, Any]]:
    return [json.loads(call.request.content) for call in route.calls]


@respx.mock
def test_a_reasoning_judge_is_sent_no_temperature_and_its_repeats_say_so(
    memory_store: ObservedStore, tmp_path: Path
) -> None:
    no_storybench_server()
    route = respx.post(CHAT).mock(side_effect=answer)
    args = judge_args(tmp_path, "--kind", "sequence", "--repeat", "2", models=reasoning_judge(tmp_path))
    result = invoke(*args)
    assert result.exit_code == 0, result.output

    sent = bodies(route)
    assert len(sent) == 2
    for body in sent:
        assert body["max_completion_tokens"] == 512  # the rubric's max_tokens
        assert body["reasoning_effort"] == "low"
        assert not {"max_tokens", "temperature", "top_p"} & set(body)
    assert sorted(b["seed"] for b in sent) == [1234, 2234]  # repeats vary by seed only
    docs = sorted(memory_store.evals.values(), key=lambda d: d["repeat"])
    for doc in docs:
        details = doc["details"]
        assert details["temperature"] is None and details["reasoning_effort"] == "low"
        assert details["reasoning_tokens"] == 256 and details["completion_tokens"] == 300
        assert details["cost_usd"] == pytest.approx((800 * 2.0 + 300 * 8.0) / 1e6)


@respx.mock
def test_a_retried_judgement_costs_both_answers(memory_store: ObservedStore, tmp_path: Path) -> None:
    no_storybench_server()
    replies = iter(["not a judgement at all", None])

    def judge(request: httpx.Request) -> httpx.Response:
        text = next(replies) or verdict(criteria_of(json.loads(request.content)))
        return reasoning_sse(text, prompt_tokens=800, completion_tokens=300, reasoning_tokens=256)

    route = respx.post(CHAT).mock(side_effect=judge)
    result = invoke(*judge_args(tmp_path, "--kind", "sequence", models=reasoning_judge(tmp_path)))
    assert result.exit_code == 0, result.output
    assert route.call_count == 2
    (doc,) = memory_store.evals.values()
    details = doc["details"]
    assert details["retried_after"] is not None
    assert (details["prompt_tokens"], details["completion_tokens"], details["reasoning_tokens"]) == (
        1600,
        600,
        512,
    )
    assert details["cost_usd"] == pytest.approx(2 * (800 * 2.0 + 300 * 8.0) / 1e6)


@respx.mock
def test_an_ordinary_judge_keeps_temperature_zero_and_max_tokens(
    memory_store: ObservedStore, tmp_path: Path
) -> None:
    no_storybench_server()
    route = respx.post(CHAT).mock(side_effect=answer)
    result = invoke(*judge_args(tmp_path, "--kind", "sequence", models=models_yaml(tmp_path, **PRICES)))
    assert result.exit_code == 0, result.output
    (body,) = bodies(route)
    assert body["temperature"] == 0.0 and body["max_tokens"] == 512
    assert "max_completion_tokens" not in body and "reasoning_effort" not in body
    (doc,) = memory_store.evals.values()
    assert doc["details"]["temperature"] == 0.0 and doc["details"]["reasoning_effort"] is None


@respx.mock
def test_the_run_report_sums_the_judge_cost(memory_store: ObservedStore, tmp_path: Path) -> None:
    import io

    from evaluator.report.gather import conversations, summarize
    from evaluator.report.render_html import render_html
    from evaluator.report.render_md import render_md
    from tests.judge.conftest import RUN_ID

    no_storybench_server()
    respx.post(CHAT).mock(side_effect=answer)
    result = invoke(*judge_args(tmp_path, models=reasoning_judge(tmp_path)))
    assert result.exit_code == 0, result.output
    assert len(memory_store.evals) == 5  # 4 turns and 1 whole conversation
    run = memory_store.get_run(RUN_ID)
    assert run is not None
    summary = summarize(memory_store, run)
    one = (800 * 2.0 + 300 * 8.0) / 1e6
    assert sum(g.cost_usd or 0 for g in summary.scores) == pytest.approx(5 * one)
    assert all(g.priced == g.judgements for g in summary.scores)  # every judgement priced

    md, page = io.StringIO(), io.StringIO()
    render_md(summary, conversations(memory_store, run), md)
    render_html(summary, None, page)
    assert f"- **judge cost**: \\${5 * one:.4f}" in md.getvalue()  # the run's total ($ escaped)
    assert "judge cost" in page.getvalue() and f"${5 * one:.4f}" in page.getvalue()
    assert "| judge cost |" in md.getvalue()  # a column of every score table
