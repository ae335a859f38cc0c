"""The `timings` and `usage` objects every response carries, built in one place for both
engines, with llama.cpp's native server's field names (docs/architecture.md lists them)."""

from __future__ import annotations

from typing import Any

MS_DECIMALS = 3


def per_second(n: int, ms: float) -> float | None:
    return round(n * 1000.0 / ms, MS_DECIMALS) if ms > 0 else None


def timings_object(
    *, prompt_tokens: int, cache_n: int, prompt_ms: float, predicted_n: int, predicted_ms: float, **extra: Any
) -> dict[str, Any]:
    """`prompt_n` counts only the prompt tokens evaluated; `cache_n` those reused from the cache."""
    prompt_n = prompt_tokens - cache_n
    return {
        "prompt_n": prompt_n,
        "cache_n": cache_n,
        "prompt_ms": round(prompt_ms, MS_DECIMALS),
        "prompt_per_second": per_second(prompt_n, prompt_ms),
        "predicted_n": predicted_n,
        "predicted_ms": round(predicted_ms, MS_DECIMALS),
        "predicted_per_second": per_second(predicted_n, predicted_ms),
        **extra,
    }


def usage_object(*, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """OpenAI's `usage`, with `prompt_tokens_details.cached_tokens`."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }
