"""The turn policy on its own: budget, resize after an exact overflow, the empty-answer retry,
errors. `send` is a plain async function, so every branch runs without HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

from evaluator.client import Completion, ContextOverflow, FatalRequestError, GaveUp
from evaluator.turn_policy import EMPTY_RETRY_SEED_OFFSET, TurnResult, decide_turn, reseeded


def done(text: str, attempts: int = 1) -> Completion:
    return Completion(text, "stop", 10, len(text.split()), None, 0.1, 0.5, None, attempts)


class Endpoint:
    """Answers (or raises) in order and keeps what it was sent."""

    def __init__(self, *replies: Completion | Exception) -> None:
        self.replies = list(replies)
        self.sent: list[dict[str, Any]] = []

    async def send(self, params: dict[str, Any]) -> Completion:
        self.sent.append(dict(params))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def decide(endpoint: Endpoint, prompt_tokens: int = 100, window: int | None = 1000, **kw: Any) -> TurnResult:
    params = {"seed": 7, "temperature": 0.7, "max_tokens": 400} | kw.pop("params", {})
    return asyncio.run(
        decide_turn(
            endpoint.send,
            params,
            prompt_tokens,
            wanted_tokens=400,
            context_window=window,
            min_output_tokens=kw.pop("min_output_tokens", 16),
        )
    )


def test_an_answer_is_ok_and_max_tokens_is_capped_to_what_fits() -> None:
    endpoint = Endpoint(done("The keeper climbed the stairs."))
    result = decide(endpoint, prompt_tokens=800)
    assert (result.outcome, result.error, result.attempts, result.max_tokens) == ("ok", None, 1, 200)
    assert endpoint.sent == [{"seed": 7, "temperature": 0.7, "max_tokens": 200}]
    assert result.params == endpoint.sent[0]


def test_no_room_is_context_exhausted_without_sending() -> None:
    endpoint = Endpoint()
    result = decide(endpoint, prompt_tokens=990)
    assert result.outcome == "context_exhausted" and result.attempts == 0 and endpoint.sent == []
    assert result.error is not None and "990 tokens of a 1000-token context" in result.error


def test_an_unknown_window_sends_what_the_entry_asks() -> None:
    endpoint = Endpoint(done("fine"))
    assert decide(endpoint, prompt_tokens=10**6, window=None).max_tokens == 400


def test_an_exact_overflow_resizes_once_from_the_endpoints_numbers() -> None:
    endpoint = Endpoint(ContextOverflow("too long", attempts=1, prompt_tokens=900, n_ctx=1000), done("short"))
    result = decide(endpoint, prompt_tokens=500)
    assert result.outcome == "ok" and result.attempts == 2
    assert [p["max_tokens"] for p in endpoint.sent] == [400, 100]
    assert result.prompt_tokens == 900 and result.max_tokens == 100


def test_an_exact_overflow_with_no_room_left_is_context_exhausted() -> None:
    endpoint = Endpoint(ContextOverflow("too long", attempts=1, prompt_tokens=995, n_ctx=1000))
    result = decide(endpoint)
    assert result.outcome == "context_exhausted" and result.attempts == 1 and len(endpoint.sent) == 1


def test_an_overflow_without_numbers_is_context_exhausted() -> None:
    endpoint = Endpoint(ContextOverflow("maximum context length", attempts=2))
    result = decide(endpoint)
    assert result.outcome == "context_exhausted" and result.attempts == 2
    assert result.error == "the endpoint refused the history as too long: maximum context length"


def test_an_empty_answer_is_asked_again_with_another_seed() -> None:
    endpoint = Endpoint(done("  "), done("A real answer."))
    result = decide(endpoint)
    assert result.outcome == "ok" and result.attempts == 2 and result.completion is not None
    assert result.completion.text == "A real answer." and result.completion.attempts == 2
    assert [p["seed"] for p in endpoint.sent] == [7, 7 + EMPTY_RETRY_SEED_OFFSET]
    assert result.params["seed"] == 7  # the record keeps the run's own seed


def test_two_empty_answers_are_recorded_as_empty() -> None:
    endpoint = Endpoint(done(""), done("\n"))
    result = decide(endpoint)
    assert result.outcome == "empty" and result.attempts == 2
    assert result.error is not None and result.error.startswith("the model returned an empty answer twice")


def test_errors_carry_attempts_and_whether_the_model_is_lost() -> None:
    fatal = Endpoint(FatalRequestError(401, "bad key", aborts_model=True, attempts=1))
    result = decide(fatal)
    assert (result.outcome, result.error, result.aborts_model) == ("error", "bad key", True)
    gave_up = decide(Endpoint(GaveUp("gave up after 6 attempt(s)", attempts=6)))
    assert (gave_up.outcome, gave_up.attempts, gave_up.aborts_model) == ("error", 6, False)


def test_reseeding_leaves_seedless_params_alone() -> None:
    assert reseeded({"temperature": 1.0}) == {"temperature": 1.0}
    params = {"seed": 1}
    assert reseeded(params) == {"seed": 1 + EMPTY_RETRY_SEED_OFFSET} and params == {"seed": 1}
