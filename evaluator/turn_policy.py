"""What to do for one turn, decided apart from how it is recorded: the context budget, the
resize after the endpoint's exact overflow numbers, and the one retry of an empty answer.

`decide_turn` talks to the endpoint only through the `send` function it is given, so every
branch is unit-tested with plain fakes (tests/evaluator/test_turn_policy.py); the runner passes
a `send` that streams through `chat_with_retries`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from evaluator.budget import plan_budget
from evaluator.client import Completion, ContextOverflow, FatalRequestError, GaveUp
from evaluator.records import Outcome
from evaluator.text import is_blank

# An empty answer is asked once more with the seed moved by this much: the same seed would
# replay the same empty answer. A prime, so run k's retry never lands on run k+j's seed.
EMPTY_RETRY_SEED_OFFSET = 100_003

Send = Callable[[dict[str, Any]], Awaitable[Completion]]


@dataclass
class TurnResult:
    """How a turn ended, with what the record needs to say about it."""

    outcome: Outcome
    completion: Completion | None
    error: str | None
    attempts: int  # requests sent for this turn, retries and the empty-answer retry included
    prompt_tokens: int  # the count in force when the turn ended (exact after a resize)
    max_tokens: int  # the `max_tokens` in force when the turn ended (0: nothing was sent)
    params: dict[str, Any] = field(default_factory=dict)  # what was sent (before any reseed)
    aborts_model: bool = False  # every later request to this model would fail alike (401/403/404)


def reseeded(params: dict[str, Any]) -> dict[str, Any]:
    """`params` for the retry of an empty answer: the seed moved, when there is one."""
    retry = dict(params)
    if retry.get("seed") is not None:
        retry["seed"] = int(retry["seed"]) + EMPTY_RETRY_SEED_OFFSET
    return retry


def empty_twice(completion: Completion) -> str:
    return (
        "the model returned an empty answer twice "
        f"(finish_reason={completion.finish_reason}, completion_tokens={completion.completion_tokens})"
    )


async def decide_turn(
    send: Send,
    params: dict[str, Any],
    prompt_tokens: int,
    *,
    wanted_tokens: int,
    context_window: int | None,
    min_output_tokens: int,
) -> TurnResult:
    """Play one turn whose prompt is `prompt_tokens` long; never raises for the endpoint's sake.

    1. Budget: `max_tokens` is capped to what fits; too little room is `context_exhausted`.
    2. An endpoint that refuses the prompt as too long and says the exact numbers resizes the
       budget once from them (our count may have been an estimate).
    3. A blank answer is asked once more with another seed, then recorded as `empty`.
    """
    budget = plan_budget(prompt_tokens, wanted_tokens, context_window, min_output_tokens)
    sent = dict(params)
    if budget.exhausted:
        return TurnResult(
            "context_exhausted", None, budget.message, 0, prompt_tokens, budget.max_tokens, sent
        )
    sent["max_tokens"] = budget.max_tokens
    attempts = 0
    try:
        try:
            completion = await send(sent)
        except ContextOverflow as overflow:
            if overflow.prompt_tokens is None or overflow.n_ctx is None:
                raise
            attempts += overflow.attempts
            prompt_tokens = overflow.prompt_tokens
            budget = plan_budget(prompt_tokens, wanted_tokens, overflow.n_ctx, min_output_tokens)
            if budget.exhausted:
                return TurnResult(
                    "context_exhausted",
                    None,
                    budget.message,
                    attempts,
                    prompt_tokens,
                    budget.max_tokens,
                    sent,
                )
            sent["max_tokens"] = budget.max_tokens
            completion = await send(sent)
        attempts += completion.attempts
        outcome: Outcome = "ok"
        error = None
        if is_blank(completion.text):
            completion = await send(reseeded(sent))
            attempts += completion.attempts
            if is_blank(completion.text):
                outcome, error = "empty", empty_twice(completion)
        completion.attempts = attempts
        return TurnResult(outcome, completion, error, attempts, prompt_tokens, budget.max_tokens, sent)
    except ContextOverflow as exc:
        return TurnResult(
            "context_exhausted",
            None,
            f"the endpoint refused the history as too long: {exc}",
            attempts + exc.attempts,
            prompt_tokens,
            budget.max_tokens,
            sent,
        )
    except (FatalRequestError, GaveUp) as exc:
        aborts = isinstance(exc, FatalRequestError) and exc.aborts_model
        return TurnResult(
            "error", None, str(exc), attempts + exc.attempts, prompt_tokens, budget.max_tokens, sent, aborts
        )
