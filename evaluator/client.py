"""One streamed chat completion against any OpenAI-compatible endpoint, with one retry layer.

The `openai` client's own retries are switched off (`max_retries=0`) so tenacity is the only
retry layer: attempts and waits are then counted in one place and recorded per turn.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from evaluator.config import EvalSettings
from evaluator.flow_control import FlowControl


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying a transient failure; built from models.yaml's `settings`."""

    max_attempts: int = 6
    max_total_wait_s: float = 300.0
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: EvalSettings) -> RetryPolicy:
        """The one definition of the policy in force: `run` and `judge` both use it."""
        return cls(
            max_attempts=settings.retry_max_attempts,
            max_total_wait_s=settings.retry_max_wait_s,
            initial_backoff_s=settings.retry_initial_s,
            max_backoff_s=settings.retry_max_backoff_s,
        )


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    ttft_s: float | None
    latency_s: float
    timings: dict[str, Any] | None
    attempts: int = 1
    # Of `completion_tokens`, those spent reasoning before the answer (hidden); None unless reported.
    reasoning_tokens: int | None = None


class StreamIncomplete(Exception):
    """The stream ended without a finish reason: a cut connection, retried like one."""


class MalformedStream(Exception):
    """A stream event that is not a chat completion chunk (not JSON, not an object): retried."""


class ContextOverflow(Exception):
    """The endpoint refused the prompt as too long for its context (HTTP 400).

    Our server also says exactly how long the prompt is and how big the context is; with those
    the caller can size `max_tokens` exactly instead of trusting its own estimate.
    """

    def __init__(
        self, message: str, attempts: int = 1, prompt_tokens: int | None = None, n_ctx: int | None = None
    ) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
        self.attempts = attempts  # requests sent, the refused one included


@dataclass
class FatalRequestError(Exception):
    """Not worth retrying: bad request, bad key, no permission, unknown model."""

    status: int | None
    message: str
    aborts_model: bool = False  # 401/403/404: every later request to this model fails alike
    attempts: int = 1  # requests sent, the refused one included (earlier ones were retried)

    def __str__(self) -> str:
        return self.message


@dataclass
class GaveUp(Exception):
    """Retries exhausted; carries what the last attempt said."""

    message: str
    attempts: int

    def __str__(self) -> str:
        return self.message


# Sampling parameters a reasoning request never carries (OpenAI refuses them with 400).
_SAMPLING = ("temperature", "top_p")


def wire_params(params: dict[str, Any]) -> dict[str, Any]:
    """The generation parameters as the request body carries them.

    `max_completion_tokens` in `params` marks a reasoning model (`ModelEntry.generation_params`,
    the judges' params): its body has that limit and never `max_tokens`, `temperature` or
    `top_p`. A `max_tokens` beside it is the context budget's cap (evaluator/turn_policy.py
    writes every cap under that one name), so the smaller of the two is sent. Other params are
    returned unchanged.
    """
    if "max_completion_tokens" not in params:
        return dict(params)
    out = {k: v for k, v in params.items() if k not in _SAMPLING and k != "max_tokens"}
    if params.get("max_tokens") is not None:
        out["max_completion_tokens"] = min(int(params["max_tokens"]), int(params["max_completion_tokens"]))
    return out


@dataclass(frozen=True)
class TokenUsage:
    """The usage block of an answer, in OpenAI's meaning: `completion_tokens` counts every
    generated token, the hidden reasoning included, and `reasoning_tokens` says how many of them
    were reasoning (`usage.completion_tokens_details.reasoning_tokens`). OpenAI bills all
    completion tokens as output, so cost never adds the reasoning tokens again."""

    prompt_tokens: int | None
    completion_tokens: int | None
    reasoning_tokens: int | None


def read_usage(usage: Any) -> TokenUsage:
    """`TokenUsage` from an SDK usage object (None: nothing reported).

    Some OpenAI-compatible gateways report reasoning apart from `completion_tokens` (a Gemini
    answer through a proxy: `total_tokens` = prompt + completion + reasoning); their reasoning
    is added to `completion_tokens`, so stored counts and costs mean the same for every endpoint.
    """
    if usage is None:
        return TokenUsage(None, None, None)
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    details = getattr(usage, "completion_tokens_details", None)
    reasoning = getattr(details, "reasoning_tokens", None) if details is not None else None
    reasoning = reasoning if isinstance(reasoning, int) else None
    total = getattr(usage, "total_tokens", None)
    if (
        reasoning
        and isinstance(prompt, int)
        and isinstance(completion, int)
        and isinstance(total, int)
        and total == prompt + completion + reasoning
    ):
        completion += reasoning
    return TokenUsage(prompt, completion, reasoning)


def make_client(base_url: str, api_key: str | None, timeout_s: float) -> AsyncOpenAI:
    # Long generations need a long read timeout; connecting should fail fast.
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    return AsyncOpenAI(base_url=base_url, api_key=api_key or "not-needed", max_retries=0, timeout=timeout)


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, (openai.RateLimitError, openai.InternalServerError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 409, 425, 429) or exc.status_code >= 500
    return isinstance(
        exc,
        (
            # APIConnectionError (and APITimeoutError), APIResponseValidationError (malformed
            # JSON / missing fields), and a plain APIError: an error event inside a 200 stream
            # (OpenRouter reports a failing upstream provider that way).
            openai.APIError,
            StreamIncomplete,
            MalformedStream,
            httpx.TransportError,
        ),
    )


def retry_after_s(exc: BaseException | None) -> float | None:
    """Seconds the server asked us to wait (Retry-After / retry-after-ms), if it said."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        if parsed is None:
            return None
        return max(0.0, (parsed - datetime.now(timezone.utc)).total_seconds())


def _wait(policy: RetryPolicy):  # type: ignore[no-untyped-def]
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after_s(exc)
        if asked is not None:
            return min(asked, policy.max_total_wait_s)  # the server knows best; the total cap still holds
        # Exponential backoff with full jitter.
        ceiling = min(policy.max_backoff_s, policy.initial_backoff_s * 2 ** (state.attempt_number - 1))
        return random.uniform(policy.initial_backoff_s / 2, max(ceiling, policy.initial_backoff_s))

    return wait


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        message = None
        if isinstance(body, dict):
            err = body.get("error", body)
            message = err.get("message") if isinstance(err, dict) else str(err)
        return f"HTTP {exc.status_code}: {message or exc.message}"
    if isinstance(exc, openai.APITimeoutError):
        return "request timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        detail = (str(cause) or type(cause).__name__) if cause is not None else exc.message
        return f"connection failed: {detail}"
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out waiting for the rest of the answer ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _classify_status(exc: openai.APIStatusError, attempts: int = 1) -> Exception:
    message = describe_error(exc)
    err: dict[str, Any] = {}
    if isinstance(exc.body, dict):
        inner = exc.body.get("error", exc.body)
        err = inner if isinstance(inner, dict) else {}
    code = err.get("code")
    if exc.status_code == 400 and (
        code == "context_length_exceeded" or "context" in message.lower() and "token" in message.lower()
    ):
        prompt_tokens, n_ctx = err.get("prompt_tokens"), err.get("n_ctx")
        return ContextOverflow(
            message,
            attempts,
            prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None,
            n_ctx=n_ctx if isinstance(n_ctx, int) else None,
        )
    return FatalRequestError(
        status=exc.status_code,
        message=message,
        aborts_model=exc.status_code in (401, 403, 404),
        attempts=attempts,
    )


async def stream_chat(
    client: AsyncOpenAI, model: str, messages: list[dict[str, str]], params: dict[str, Any]
) -> Completion:
    """One attempt: stream the answer, timing the first content token and keeping usage/timings."""
    started = time.perf_counter()
    ttft: float | None = None
    parts: list[str] = []
    finish_reason: str | None = None
    usage: Any = None
    timings: dict[str, Any] | None = None
    extra_body = dict(params.get("extra_body") or {})
    kwargs = {k: v for k, v in wire_params(params).items() if k != "extra_body" and v is not None}
    stream = await client.chat.completions.create(  # type: ignore[call-overload]
        model=model,
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra_body or None,
        **kwargs,
    )
    without_choices = 0
    try:
        async for chunk in stream:
            if not isinstance(chunk, ChatCompletionChunk):
                raise MalformedStream(f"a stream event is not a JSON object: {str(chunk)[:80]}")
            extra = chunk.model_extra or {}
            if extra.get("timings"):
                timings = extra["timings"]
            if chunk.usage is not None:
                usage = chunk.usage
            if chunk.choices is None:  # the SDK does not validate chunks
                without_choices += 1
            for choice in chunk.choices or []:
                delta = choice.delta.content if choice.delta else None
                if delta:
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    parts.append(delta)
                if choice.finish_reason:
                    finish_reason = choice.finish_reason
    except json.JSONDecodeError as exc:
        raise MalformedStream(f"a stream event is not valid JSON ({exc.msg} at char {exc.pos})") from exc
    latency = time.perf_counter() - started
    if finish_reason is None:
        detail = f"; {without_choices} chunk(s) had no 'choices'" if without_choices else ""
        raise StreamIncomplete(f"the stream ended before the model finished (no finish_reason){detail}")
    cached = None
    if timings and timings.get("cache_n") is not None:
        cached = int(timings["cache_n"])
    elif usage is not None and getattr(usage, "prompt_tokens_details", None) is not None:
        cached = getattr(usage.prompt_tokens_details, "cached_tokens", None)
    tokens = read_usage(usage)
    return Completion(
        text="".join(parts),
        finish_reason=finish_reason,
        prompt_tokens=tokens.prompt_tokens,
        completion_tokens=tokens.completion_tokens,
        cached_tokens=cached,
        ttft_s=ttft,
        latency_s=latency,
        timings=timings,
        reasoning_tokens=tokens.reasoning_tokens,
    )


async def chat_with_retries(
    client: AsyncOpenAI,
    model: str,
    messages: list[dict[str, str]],
    params: dict[str, Any],
    policy: RetryPolicy,
    flow: FlowControl | None = None,
    tokens: int = 0,
) -> Completion:
    """Retry transient failures; raise FatalRequestError, ContextOverflow or GaveUp otherwise.

    With `flow`, every attempt waits for the endpoint's rate limits and a slot of its adaptive
    limit (evaluator/flow_control.py), and its outcome moves that limit; `tokens` is what the
    attempt counts against a tokens-per-minute limit."""
    started = time.monotonic()
    attempts = 0
    retrying = AsyncRetrying(
        retry=retry_if_exception(_is_transient),
        stop=stop_after_attempt(policy.max_attempts) | stop_after_delay(policy.max_total_wait_s),
        wait=_wait(policy),
        reraise=True,
        sleep=asyncio.sleep,
    )
    try:
        async for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number
                try:
                    if flow is None:
                        result = await stream_chat(client, model, messages, params)
                    else:
                        async with flow.attempt(tokens):
                            result = await stream_chat(client, model, messages, params)
                except openai.APIStatusError as exc:
                    if _is_transient(exc):
                        raise
                    raise _classify_status(exc, attempts) from exc
                result.attempts = attempts
                return result
    except (FatalRequestError, ContextOverflow):
        raise
    except Exception as exc:
        if not _is_transient(exc):
            raise
        waited = time.monotonic() - started
        raise GaveUp(
            f"gave up after {attempts} attempt(s) over {waited:.0f}s: {describe_error(exc)}",
            attempts=attempts,
        ) from exc
    raise AssertionError("unreachable: tenacity either returns or raises")
