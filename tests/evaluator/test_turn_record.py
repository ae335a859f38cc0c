"""The record builder on its own: a decided turn becomes the stored document, with its cost by
the one rule, its generation speed and no API key in its texts."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from evaluator.client import Completion
from evaluator.config import ModelEntry, PromptTurn, Sequence
from evaluator.plan import build_plan
from evaluator.records import ResponseRecord
from evaluator.turn_policy import TurnResult
from evaluator.turn_record import TurnContext, redact, tokens_per_s, turn_record

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
KEY = "sk-test-0123456789abcdef"


def entry(**kw: Any) -> ModelEntry:
    fields: dict[str, Any] = {
        "name": "hosted",
        "base_url": "http://hosted.test/v1",
        "model": "m-1",
        "seed": 7,
    }
    return ModelEntry(**fields | kw)


def completion(text: str = "Mara keeps the lamp.", **kw: Any) -> Completion:
    fields: dict[str, Any] = {
        "text": text,
        "finish_reason": "stop",
        "prompt_tokens": 1_000,
        "completion_tokens": 200,
        "cached_tokens": 600,
        "ttft_s": 0.5,
        "latency_s": 2.5,
        "timings": {"cache_n": 600},
        "attempts": 2,
    }
    return Completion(**fields | kw)


def record(model: ModelEntry, result: TurnResult, run_index: int = 1) -> ResponseRecord:
    seq = Sequence(name="saga", turns=[PromptTurn(name="premise", text="Begin the story.")])
    item = build_plan([model], [seq], run_index + 1).items[run_index]
    return turn_record(TurnContext(item, 0, "run-1", 2, T0), result, model)


def ok(done: Completion | None = None) -> TurnResult:
    done = done or completion()
    return TurnResult("ok", done, None, done.attempts, 990, 400, {"seed": 8, "max_tokens": 400})


def test_an_answered_turn_records_what_was_sent_and_received() -> None:
    rec = record(entry(), ok(completion("<think>plan</think>Mara keeps the lamp.")))
    assert (rec.outcome, rec.run_index, rec.seed, rec.turn_name) == ("ok", 1, 8, "premise")
    assert (rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens) == (1_000, 200, 600)
    assert (rec.prompt_tokens_estimated, rec.max_tokens_sent, rec.attempts) == (990, 400, 2)
    assert rec.response_text == "Mara keeps the lamp." and rec.response_raw.startswith("<think>")
    assert rec.server_timings == {"cache_n": 600} and rec.started_at == T0 and rec.messages_sent == 2


@pytest.mark.parametrize(
    ("prices", "expected"),
    [
        ({"price_input_per_mtok": 2.0, "price_output_per_mtok": 10.0}, (1_000 * 2.0 + 200 * 10.0) / 1e6),
        ({"price_input_per_mtok": 0.0, "price_output_per_mtok": 0.0}, 0.0),  # free is $0, not unknown
        ({"price_input_per_mtok": 0.0, "price_output_per_mtok": 10.0}, 200 * 10.0 / 1e6),
        ({"price_input_per_mtok": 2.0}, None),  # one price missing: no cost rather than half of one
        ({}, None),
    ],
)
def test_the_cost_follows_the_one_rule(prices: dict[str, float], expected: float | None) -> None:
    rec = record(entry(**prices), ok())
    assert rec.cost_usd == (pytest.approx(expected) if expected is not None else None)


def test_generation_speed_counts_only_the_time_after_the_first_token() -> None:
    assert tokens_per_s(completion()) == pytest.approx(200 / 2.0)
    assert tokens_per_s(completion(ttft_s=None)) == pytest.approx(200 / 2.5)
    assert tokens_per_s(completion(completion_tokens=None)) is None
    assert tokens_per_s(completion(ttft_s=2.5)) is None  # all of the time went to the first token


def test_a_turn_without_an_answer_records_no_tokens_speed_or_cost() -> None:
    failed = TurnResult("error", None, "HTTP 500: upstream failed", 3, 990, 400, {"seed": 8})
    rec = record(entry(price_input_per_mtok=1.0, price_output_per_mtok=1.0), failed)
    assert (rec.outcome, rec.error, rec.attempts, rec.response_text) == ("error", failed.error, 3, "")
    assert (rec.prompt_tokens, rec.tokens_per_s, rec.cost_usd, rec.finish_reason) == (None, None, None, None)


def test_the_api_key_never_reaches_the_stored_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTED_KEY", KEY)
    failed = TurnResult("error", None, f"HTTP 401: invalid key {KEY}", 1, 990, 400, {}, aborts_model=True)
    rec = record(entry(api_key_env="HOSTED_KEY"), failed)
    assert rec.error == "HTTP 401: invalid key ***"


def test_short_keys_are_not_masked_in_ordinary_text() -> None:
    assert redact("the key abc is wrong", "abc") == "the key abc is wrong"
    assert redact(f"bad {KEY}", KEY) == "bad ***"
    assert redact("nothing secret", None) == "nothing secret"
