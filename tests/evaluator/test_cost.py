"""The one cost rule, as run, run --dry-run and judge --dry-run apply it."""

from __future__ import annotations

import pytest

from evaluator.config import ModelEntry, PromptTurn, Sequence
from evaluator.cost import cost_usd, missing_prices
from evaluator.plan import build_plan, estimate


@pytest.mark.parametrize(
    ("prices", "expected"),
    [
        ((1.0, 2.0), (1_000 * 1.0 + 500 * 2.0) / 1e6),
        ((0.0, 0.0), 0.0),  # a free model costs $0, not "unknown"
        ((0.0, 3.0), 500 * 3.0 / 1e6),
        ((None, 2.0), None),  # one price missing: no cost, never a partial sum
        ((1.0, None), None),
        ((None, None), None),
    ],
)
def test_cost_needs_both_prices_and_zero_counts(
    prices: tuple[float | None, float | None], expected: float | None
) -> None:
    assert cost_usd(*prices, 1_000, 500) == expected


def test_what_is_shown_instead_of_a_cost_names_the_missing_price() -> None:
    assert missing_prices(1.0, 2.0) is None
    assert missing_prices(None, None) == "no prices set"
    assert missing_prices(1.0, None) == "price_output_per_mtok not set"
    assert missing_prices(None, 0.0) == "price_input_per_mtok not set"


def test_the_dry_run_and_the_model_entry_use_the_same_rule() -> None:
    seq = Sequence(name="s", system=None, turns=[PromptTurn(name="t", text="Write.")])
    one_price = ModelEntry(name="a", base_url="http://h.test/v1", model="m", price_output_per_mtok=2.0)
    free = ModelEntry(name="b", base_url="http://h.test/v1", model="m", price_input_per_mtok=0.0,
                      price_output_per_mtok=0.0)  # fmt: skip
    rows = {e.model: e for e in estimate(build_plan([one_price, free], [seq], 1))}
    assert rows["a"].cost_usd is None and rows["a"].no_cost_because == "price_input_per_mtok not set"
    assert one_price.cost_usd(10, 10) is None
    assert rows["b"].cost_usd == 0.0 and rows["b"].no_cost_because is None
