"""Every fault a hosted API can throw ends as a retried success or a recorded, explained failure.

The evaluator plays real conversations against the stand-in (a real HTTP server on 127.0.0.1)
and writes to a real embedded database; the faults act on real sockets. Never a traceback,
never a silent empty answer, never an unexplained error.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from evaluator.client import RetryPolicy
from evaluator.config import ModelEntry, PromptTurn, Sequence
from evaluator.plan import build_plan
from evaluator.runner import Runner
from evaluator.store import Store
from evaluator.store.embedded import running_server
from tests.reliability.checks import assert_whole, history_mismatches, stored_turns
from tests.reliability.conftest import (
    child_env,
    eval_cmd,
    models_yaml,
    prompts_json,
    responses,
    run_cli,
)
from tests.reliability.standin import FAULTS, MARKUP, TRANSIENT, ChatRequest, StandIn

pytestmark = pytest.mark.integration  # a real nx-27017

FAST = RetryPolicy(max_attempts=3, max_total_wait_s=20, initial_backoff_s=0.01, max_backoff_s=0.05)
PERSISTENT = RetryPolicy(max_attempts=2, max_total_wait_s=20, initial_backoff_s=0.01, max_backoff_s=0.05)
SYSTEM = "You are a novelist."
CANARY = "sk-canary-0123456789abcdef0123456789abcdef"

# What the stored error must say for a fault that never goes away.
EXPLAINED = {
    "429": "HTTP 429: Rate limit", "429_retry_after": "HTTP 429", "429_retry_after_date": "HTTP 429",
    "429_retry_after_ms": "HTTP 429",
    "500": "HTTP 500", "503": "HTTP 503", "500_html": "HTTP 500: <html>", "hang": "request timed out",
    "hang_mid_stream": "timed out waiting for the rest of the answer", "reset": "connection failed",
    "cut": "peer closed connection", "done_early": "no finish_reason",
    "invalid_json": "a stream event is not valid JSON", "non_object_event": "not a JSON object",
    "error_event": "upstream provider overloaded", "missing_choices": "chunk(s) had no 'choices'",
    "not_sse": "no finish_reason", "empty": "empty answer twice", "400": "HTTP 400: 'temperature'",
    "400_markup": MARKUP, "401_echo_key": "HTTP 401: Incorrect API key provided",
}  # fmt: skip
assert set(EXPLAINED) == set(FAULTS) - {"ok"}


def entry(standin: StandIn, **kw: Any) -> ModelEntry:
    fields: dict[str, Any] = {
        "name": "hosted", "base_url": standin.base_url, "model": "standin-1", "max_tokens": 64,
        "min_output_tokens": 16, "seed": 7, "request_timeout_s": 1.0, "max_concurrency": 4, **kw,
    }  # fmt: skip
    return ModelEntry(**fields)


def sequences(n: int = 1, turns: int = 2) -> list[Sequence]:
    return [
        Sequence(
            name=f"saga-{s}",
            system=SYSTEM,
            turns=[PromptTurn(name=f"t{t}", text=f"Write part {t} of story {s}.") for t in range(turns)],
        )
        for s in range(n)
    ]


def play(
    store: Store, model: ModelEntry, seqs: list[Sequence], runs: int = 1, policy: RetryPolicy = FAST
) -> Runner:
    runner = Runner(build_plan([model], seqs, runs), store, "run-faults", {}, policy, concurrency=8)
    asyncio.run(runner.run())
    return runner


@pytest.mark.parametrize("fault", sorted(TRANSIENT | {"empty"}))
def test_a_fault_once_is_retried_to_success(standin: StandIn, store: Store, fault: str) -> None:
    standin.script.append(fault)
    started = time.monotonic()
    play(store, entry(standin), sequences(1, turns=2))
    elapsed = time.monotonic() - started
    docs = stored_turns(store)
    assert [d["outcome"] for d in docs] == ["ok", "ok"], [d["error"] for d in docs]
    for doc in docs:
        assert_whole(doc)
    assert [d["attempts"] for d in docs] == [2, 1]
    assert len(standin.requests) == 3 and standin.requests[0].fault == fault
    assert history_mismatches(docs, {"saga-0": SYSTEM}) == []
    if fault == "429_retry_after":
        assert elapsed >= 0.95, "Retry-After: 1 was not honoured"
    if fault == "429_retry_after_date":
        assert elapsed >= 0.5, "an HTTP-date Retry-After was not honoured"
    if fault == "empty":  # retried with another seed, never stored as an empty "ok"
        seeds = [r.body.get("seed") for r in standin.requests[:2]]
        assert seeds[0] != seeds[1]


@pytest.mark.parametrize("fault", sorted(set(FAULTS) - {"ok"}))
def test_a_fault_that_persists_is_a_recorded_explained_failure(
    standin: StandIn, store: Store, fault: str
) -> None:
    standin.planner = lambda request: fault
    key = CANARY if fault == "401_echo_key" else None
    standin.key = key
    env = {"STORYBENCH_REL_KEY": key} if key else {}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        model = entry(
            standin, request_timeout_s=0.5, **({"api_key_env": "STORYBENCH_REL_KEY"} if key else {})
        )
        runner = play(store, model, sequences(1, turns=3), policy=PERSISTENT)
    docs = stored_turns(store)
    assert len(docs) == 1, "the conversation must stop at the failed turn"
    (doc,) = docs
    assert_whole(doc)
    assert doc["outcome"] == ("empty" if fault == "empty" else "error")
    assert EXPLAINED[fault] in doc["error"], doc["error"]
    assert doc["attempts"] == len(standin.requests), "every request is counted once"
    if fault in TRANSIENT:
        assert doc["error"].startswith("gave up after 2 attempt(s)"), doc["error"]
        assert doc["attempts"] == 2
    if fault == "401_echo_key":
        assert CANARY not in doc["error"] and "Bearer ***" in doc["error"]
        aborted = runner.stats["hosted"].aborted
        assert aborted is not None and CANARY not in aborted


def test_a_fatal_error_after_retries_counts_every_attempt(standin: StandIn, store: Store) -> None:
    standin.script.extend(["503", "400"])
    play(store, entry(standin), sequences(1, turns=1))
    (doc,) = stored_turns(store)
    assert doc["outcome"] == "error" and "HTTP 400" in doc["error"]
    assert doc["attempts"] == 2 == len(standin.requests)


def _by_story(faults: list[str]) -> Any:
    """Planner: story s always gets faults[s] on its first turn (on every attempt)."""

    def plan(request: ChatRequest) -> str:
        first = next(m["content"] for m in request.messages if m["role"] == "user")
        story = int(first.rsplit(" ", 1)[1].rstrip("."))
        users = sum(1 for m in request.messages if m["role"] == "user")
        return faults[story] if users == 1 and story < len(faults) else "ok"

    return plan


def test_the_cli_survives_every_fault_and_a_rerun_completes(standin: StandIn, tmp_path: Path) -> None:
    faults = sorted(set(FAULTS) - {"ok", "401_echo_key"})  # 401 stops the model: tested above
    standin.planner = _by_story(faults)
    models = models_yaml(tmp_path / "models.yaml", standin.base_url, max_concurrency=8)
    prompts = prompts_json(tmp_path / "prompts.json", n_sequences=len(faults), n_turns=2)
    data = tmp_path / "data"
    env = child_env(STORYBENCH_DATA_DIR=str(data))
    first = run_cli(eval_cmd(models, prompts, "--runs", "1"), env)
    out = first.stdout + first.stderr
    assert first.returncode == 3, out  # some turns failed: re-run retries them
    assert "Traceback" not in out
    assert "re-run the same command to retry them" in out

    standin.planner = None  # the provider recovers
    second = run_cli(eval_cmd(models, prompts, "--runs", "1"), env)
    assert second.returncode == 0, second.stdout + second.stderr
    show = run_cli([*eval_cmd(models, prompts)[:3], "runs"], env)
    assert show.returncode == 0 and "Traceback" not in show.stdout + show.stderr
    # The same database through a client of our own: every planned turn once, all ok.
    with running_server(data) as server:
        docs = responses(server.uri)
    # An empty answer twice is a final, reported outcome that ends its conversation.
    empty = [d for d in docs if d["outcome"] != "ok"]
    assert [(d["sequence"], d["turn_index"], d["outcome"]) for d in empty] == [
        (f"saga-{faults.index('empty')}", 0, "empty")
    ]
    assert len(docs) == 2 * len(faults) - 1
    for doc in docs:
        assert_whole(doc)
    assert history_mismatches(docs, {f"saga-{s}": SYSTEM for s in range(len(faults))}) == []


def test_markup_in_an_error_or_an_answer_is_printed_verbatim(standin: StandIn, tmp_path: Path) -> None:
    standin.script.append("400_markup")
    models = models_yaml(tmp_path / "models.yaml", standin.base_url)
    prompts = prompts_json(tmp_path / "prompts.json", n_sequences=2, n_turns=1)
    env = child_env(STORYBENCH_DATA_DIR=str(tmp_path / "data"))
    result = run_cli(eval_cmd(models, prompts, "--runs", "1", "--concurrency", "1"), env)
    out = result.stdout + result.stderr
    assert result.returncode == 3, out
    assert MARKUP in out.replace("\n", "") and "Traceback" not in out
    run_id = out.split("Run ", 1)[1].split(":", 1)[0].strip()
    show = run_cli([*eval_cmd(models, prompts)[:3], "show", run_id], env)
    assert show.returncode == 0, show.stdout + show.stderr
    assert "<script>alert('x')</script> [/b]" in show.stdout
