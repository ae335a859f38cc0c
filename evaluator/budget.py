"""Context budget: how many tokens the next answer may use before the history stops fitting.

Counting is exact where the endpoint can tokenize (our local server's `/extras/tokenize/count`)
and a documented, deliberately generous estimate elsewhere: 1 token per 3 characters plus a
fixed overhead per message for the chat template. The endpoint stays the authority: a 400
"context length exceeded" from it is recorded as `context_exhausted` too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

CHARS_PER_TOKEN_ESTIMATE = 3.0
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_FIXED = 8

Counter = Callable[[str], Awaitable[int]]


def estimate_tokens(text: str) -> int:
    return int(len(text) / CHARS_PER_TOKEN_ESTIMATE) + 1


async def count_prompt_tokens(messages: list[dict[str, str]], counter: Counter | None) -> int:
    """Tokens of the rendered chat prompt: content tokens plus the template's per-message cost."""
    total = TEMPLATE_TOKENS_FIXED
    for message in messages:
        content = message.get("content") or ""
        total += TEMPLATE_TOKENS_PER_MESSAGE
        total += await counter(content) if counter is not None else estimate_tokens(content)
    return total


@dataclass(frozen=True)
class Budget:
    max_tokens: int  # what to send; 0 when the sequence must stop
    prompt_tokens: int
    context_window: int | None
    exhausted: bool
    message: str | None = None


def plan_budget(
    prompt_tokens: int, wanted: int, context_window: int | None, min_output_tokens: int
) -> Budget:
    if context_window is None:
        return Budget(wanted, prompt_tokens, None, exhausted=False)
    room = context_window - prompt_tokens
    if room < min_output_tokens:
        return Budget(
            0,
            prompt_tokens,
            context_window,
            exhausted=True,
            message=(
                f"context exhausted: the history is {prompt_tokens} tokens of a {context_window}-token "
                f"context, leaving {max(room, 0)} for the answer (minimum {min_output_tokens}); "
                "raise n_ctx/context_window or lower min_output_tokens"
            ),
        )
    return Budget(min(wanted, room), prompt_tokens, context_window, exhausted=False)
