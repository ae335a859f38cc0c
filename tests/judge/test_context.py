"""Fitting the judge's prompt into its context: earlier turns go first (oldest first), the judged
answer never; a whole sequence run is never cut; what does not fit is a failure with numbers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from evaluator.budget import count_prompt_tokens
from evaluator.judge.prompts import RETRY_NOTE_TOKENS, DoesNotFit, fit, render
from evaluator.judge.rubric import load_rubric
from evaluator.judge.targets import Exchange, Target
from tests.judge.conftest import (
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
from tests.support.memory_store import memory_store as memory_store_of

RUBRIC = load_rubric(REPO / "config" / "rubric.json")
LONG = "The tide rose over the causeway. " * 250  # 8,250 characters: about 2,000 tokens at 4 per token


def target(history_answers: list[str], answer: str = "The last answer.", kind: str = "response") -> Target:
    history = tuple(Exchange(i, f"Request {i + 1}.", a) for i, a in enumerate(history_answers))
    return Target(
        kind=kind,  # type: ignore[arg-type]
        target_id="t",
        model="m",
        sequence="s",
        run_index=0,
        turns_total=len(history) + 1,
        system=None,
        history=history,
        turn_index=len(history) if kind == "response" else None,
        prompt="The judged request.",
        answer=answer,
    )


async def quarter(text: str) -> int:
    return len(text) // 4


def tokens(t: Target, left_out: int = 0) -> int:
    return asyncio.run(count_prompt_tokens(render(RUBRIC, t, left_out), quarter))


def fitted(t: Target, window: int | None) -> Any:
    return asyncio.run(fit(RUBRIC, t, quarter, window))


def test_a_prompt_that_fits_is_sent_whole() -> None:
    t = target(["First.", "Second."])
    result = fitted(t, 100_000)
    assert result.left_out == 0 and result.messages == render(RUBRIC, t)
    assert fitted(t, None).left_out == 0  # no known window: nothing is trimmed here


def test_the_oldest_turns_are_left_out_first_and_the_note_says_so() -> None:
    t = target([LONG, LONG.upper(), "A short third answer."])
    window = tokens(t, left_out=1) + RUBRIC.max_tokens + RETRY_NOTE_TOKENS  # room for turns 2 and 3 only
    result = fitted(t, window)
    assert result.left_out == 1 and result.prompt_tokens <= window - RUBRIC.max_tokens - RETRY_NOTE_TOKENS
    prompt = result.messages[-1]["content"]
    assert "(turn 1 left out here" in prompt and LONG not in prompt
    assert LONG.upper() in prompt and "A short third answer." in prompt
    assert "The last answer." in prompt and "The judged request." in prompt

    smaller = fitted(t, window - 200)
    assert smaller.left_out == 2 and "(turns 1-2 left out here" in smaller.messages[-1]["content"]


def test_an_answer_that_does_not_fit_alone_is_not_judged() -> None:
    t = target(["Short."], answer=LONG)
    with pytest.raises(DoesNotFit, match="the judged answer alone .* needs about \\d+ prompt tokens"):
        fitted(t, 1500)


def test_a_sequence_run_is_never_trimmed() -> None:
    t = target([LONG, "Short."], kind="sequence")
    with pytest.raises(DoesNotFit, match="sequence runs are never trimmed"):
        fitted(t, 1500)


def storybench_judge(n_ctx: int, slots: int = 3) -> None:
    """The judge is our own server: metadata with its context and slots, and its tokenizer."""
    respx.get("http://judge.test/storybench/models").mock(
        return_value=httpx.Response(
            200,
            json={
                "server": "storybench",
                "n_parallel": slots,
                "models": [{"name": "judge-1", "n_ctx": n_ctx}],
            },
        )
    )
    respx.post("http://judge.test/extras/tokenize/count").mock(
        side_effect=lambda req: httpx.Response(
            200, json={"count": len(json.loads(req.content)["input"]) // 4}
        )
    )


@pytest.fixture
def long_run(monkeypatch: pytest.MonkeyPatch) -> ObservedStore:
    """Run 0 turns 1 and 2 have long answers (about 2,000 tokens each)."""
    store = memory_store_of(ObservedStore)
    seed(store, {(0, 0): LONG, (0, 1): LONG.upper()})
    monkeypatch.setattr("evaluator.judge.cli.open_store", lambda uri=None, db_name="storybench": store)
    return store


@respx.mock
def test_on_our_server_trimmed_judgements_say_so_and_a_long_sequence_fails(
    long_run: ObservedStore, tmp_path: Path
) -> None:
    storybench_judge(n_ctx=4000)
    route = respx.post(f"{JUDGE_BASE}/chat/completions").mock(side_effect=good_judge)
    result = invoke(*judge_args(tmp_path))
    assert result.exit_code == 3, result.output
    out = flat(result.output)
    assert "4000-token context, 3 request(s) in flight" in out  # our server's slots
    assert "sequence runs are never trimmed" in out
    assert len(long_run.evals) == 4 and route.call_count == 4
    trimmed = {d["target_id"][-5:] for d in long_run.evals.values() if d["details"]["context_turns_left_out"]}
    assert trimmed == {"r0:t1", "r0:t2"}  # turns 2 and 3 of run 0
    for doc in (d for d in long_run.evals.values() if d["target_id"][-5:] in trimmed):
        assert doc["rationale"].startswith("[context trimmed: the oldest 1 of ")
        assert doc["rationale"].endswith("Consistent and vivid.")
    for body in (json.loads(c.request.content) for c in route.calls):
        assert len(body["messages"][-1]["content"]) // 4 + RUBRIC.max_tokens <= 4000


@respx.mock
def test_an_answer_too_long_for_the_judge_alone_is_a_failure_with_the_numbers(
    long_run: ObservedStore, tmp_path: Path
) -> None:
    storybench_judge(n_ctx=2600)
    respx.post(f"{JUDGE_BASE}/chat/completions").mock(side_effect=good_judge)
    result = invoke(*judge_args(tmp_path, "--kind", "response"))
    assert result.exit_code == 3
    out = flat(result.output)
    assert "the judged answer alone (no earlier turns) needs about" in out and "2600 tokens" in out
    assert len(long_run.evals) == 2  # turn 1 of each run; turn 3 of run 0 fits with no context


@respx.mock
def test_a_hosted_judge_refusing_a_long_prompt_gets_a_shorter_one(
    long_run: ObservedStore, tmp_path: Path
) -> None:
    no_storybench_server()  # a hosted API without context_window: nothing is known until it refuses

    def judge(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        prompt_tokens = len(body["messages"][-1]["content"]) // 4
        if prompt_tokens + body["max_tokens"] > 4000:
            return httpx.Response(
                400,
                json={
                    "error": {
                        "message": "This model's maximum context length is 4000 tokens",
                        "code": "context_length_exceeded",
                        "prompt_tokens": prompt_tokens,
                        "n_ctx": 4000,
                    }
                },
            )
        return good_judge(request)

    route = respx.post(f"{JUDGE_BASE}/chat/completions").mock(side_effect=judge)
    result = invoke(*judge_args(tmp_path, "--kind", "response", "--concurrency", "1"))
    assert result.exit_code == 0, result.output
    assert len(long_run.evals) == 4
    trimmed = [d for d in long_run.evals.values() if d["details"]["context_turns_left_out"]]
    assert trimmed and all(d["details"]["attempts"] == 2 for d in trimmed)  # the refusal counts
    assert route.call_count == 4 + len(trimmed)
