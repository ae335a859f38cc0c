"""Pairwise verdicts as outcomes: the two orders of a pair combined, repeats averaged.

The two orders of a pair are combined: when they disagree in direction (each order prefers the
conversation shown first, say) the pair is a tie and counts as a position flip; otherwise the
mean of the two shares decides win (> 0.5), tie (= 0.5) or loss. A pair with only one order
judged (the other failed or is still to come) is left out and counted, never completed with a
guess. Repeats of one ordered comparison (`compare --repeat K`) are averaged first.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from evaluator.leaderboard.ratings import PairVerdict
from evaluator.records import PairwiseRecord

__all__ = ["CombinedPair", "PairStats", "combine_ordered", "combine_pairs", "ordered_shares"]


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


@dataclass
class PairStats:
    pairs: int = 0  # pairs with both orders judged
    position_flips: int = 0  # of those, the orders disagreed in direction
    one_order_only: int = 0  # left out: the other order failed or is missing
    failed: int = 0  # stored comparisons without a verdict
    first_preferred: int = 0  # single verdicts (of both orders) that preferred the conversation shown first
    second_preferred: int = 0

    @property
    def flip_rate(self) -> float | None:
        return self.position_flips / self.pairs if self.pairs else None

    def to_json(self) -> dict[str, Any]:
        decided = self.first_preferred + self.second_preferred
        return {
            "pairs": self.pairs,
            "position_flips": self.position_flips,
            "position_flip_rate": _round(self.flip_rate, 4),
            "first_shown_preferred_rate": _round(self.first_preferred / decided if decided else None, 4),
            "one_order_only": self.one_order_only,
            "failed_comparisons": self.failed,
        }


def _direction(share: float) -> int:
    return (share > 0.5) - (share < 0.5)


@dataclass(frozen=True)
class CombinedPair:
    """Both orders of one pair of conversations, repeats averaged."""

    verdict: PairVerdict  # for `verdict.model_a`: 1 win, 0.5 tie, 0 loss
    first_conversation: str  # model_a's conversation
    second_conversation: str
    flipped: bool  # the two orders disagreed in direction


def ordered_shares(
    records: list[PairwiseRecord], stats: PairStats
) -> dict[tuple[str, str], tuple[float, PairwiseRecord]]:
    """(first conversation, second) -> (the mean share of the first shown over its repeats, one
    record for the names); failed comparisons counted, never given a share."""
    shares: dict[tuple[str, str], list[float]] = defaultdict(list)
    sample: dict[tuple[str, str], PairwiseRecord] = {}
    for rec in records:
        if rec.status != "ok" or rec.score_first is None:
            stats.failed += 1
            continue
        key = (rec.first_conversation, rec.second_conversation)
        shares[key].append(rec.score_first)
        sample[key] = rec
    out = {}
    for key, values in shares.items():
        share = sum(values) / len(values)
        out[key] = (share, sample[key])
        if share > 0.5:
            stats.first_preferred += 1
        elif share < 0.5:
            stats.second_preferred += 1
    return out


def combine_pairs(records: list[PairwiseRecord], stats: PairStats | None = None) -> list[CombinedPair]:
    """One outcome per pair of conversations from its two orders (see the module docstring)."""
    stats = stats if stats is not None else PairStats()
    return combine_ordered(ordered_shares(records, stats), stats)


def combine_ordered(
    ordered: dict[tuple[str, str], tuple[float, PairwiseRecord]], stats: PairStats
) -> list[CombinedPair]:
    """`combine_pairs` on shares already averaged over repeats (`ordered_shares`)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for (first, second), (share_one, rec) in sorted(ordered.items()):
        pair = (min(first, second), max(first, second))
        if pair in seen:
            continue
        seen.add(pair)
        other = ordered.get((second, first))
        if other is None:
            stats.one_order_only += 1
            continue
        share_two = 1.0 - other[0]  # also for rec.first_model, shown second there
        stats.pairs += 1
        flipped = _direction(share_one) * _direction(share_two) < 0
        if flipped:
            stats.position_flips += 1
            score = 0.5
        else:
            mean = (share_one + share_two) / 2
            score = 1.0 if mean > 0.5 else 0.0 if mean < 0.5 else 0.5
        verdict = PairVerdict(rec.first_model, rec.second_model, score, rec.sequence_hash)
        out.append(CombinedPair(verdict, first, second, flipped))
    return out
