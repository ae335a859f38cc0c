"""The one cost rule: what a request cost, from a model entry's per-million-token prices.

A cost is known only when BOTH prices are set; a price of 0 is a price (a free local model
costs $0, not "unknown"). With one price missing, no cost is recorded: a partial sum would
under-count silently, so estimates and summaries say which price is missing instead. Used by
`run` (each turn's `cost_usd`), `run --dry-run`, `judge --dry-run` and the judge's details.

Reasoning tokens are output tokens: OpenAI bills a reasoning model's hidden reasoning at the
output price, and its `usage.completion_tokens` already counts them
(`completion_tokens_details.reasoning_tokens` is a breakdown of that number, not an addition).
So the completion tokens priced here include the reasoning exactly once; evaluator/client.py
(`read_usage`) folds in the reasoning of a gateway that reports it apart.
"""

from __future__ import annotations

TOKENS_PER_PRICE_UNIT = 1_000_000


def cost_usd(
    price_input_per_mtok: float | None,
    price_output_per_mtok: float | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
) -> float | None:
    """Dollars for these tokens; None unless both prices are set. Missing token counts are 0."""
    if price_input_per_mtok is None or price_output_per_mtok is None:
        return None
    spent = (prompt_tokens or 0) * price_input_per_mtok + (completion_tokens or 0) * price_output_per_mtok
    return spent / TOKENS_PER_PRICE_UNIT


def missing_prices(price_input_per_mtok: float | None, price_output_per_mtok: float | None) -> str | None:
    """What to show instead of a cost: None when both prices are set."""
    missing = [
        name
        for name, price in (
            ("price_input_per_mtok", price_input_per_mtok),
            ("price_output_per_mtok", price_output_per_mtok),
        )
        if price is None
    ]
    if not missing:
        return None
    return "no prices set" if len(missing) == 2 else f"{missing[0]} not set"
