"""Several judges side by side (`leaderboard --judge J1,J2`): each judge's own table, and how
much the judges agree.

For every pair of judges: per criterion, Spearman's rho and ordinal Krippendorff's alpha over
the targets both scored (reliability.agreement), and Spearman's rho between the two tables'
orders of the models they both ranked (by rating where both rated, else by rubric mean). The
figures land in each judge's reliability block, under the other judge's name; the first
judge's table carries every judge's block in its JSON.
"""

from __future__ import annotations

from evaluator.leaderboard.build import Leaderboard
from evaluator.leaderboard.reliability import agreement, spearman

__all__ = ["link_judges"]


def _order_values(board: Leaderboard, models: list[str], by_rating: bool) -> list[float]:
    rows = {r.model: r for r in board.rows}
    if by_rating:
        return [float(rows[m].rating or 0.0) for m in models]
    return [float(r.rubric.mean) if (r := rows[m]).rubric is not None else 0.0 for m in models]


def _table_correlation(a: Leaderboard, b: Leaderboard) -> float | None:
    rows_a = {r.model: r for r in a.rows}
    rows_b = {r.model: r for r in b.rows}
    common = sorted(set(rows_a) & set(rows_b))
    rated = [m for m in common if rows_a[m].rating is not None and rows_b[m].rating is not None]
    if len(rated) >= 3:
        return spearman(_order_values(a, rated, True), _order_values(b, rated, True))
    scored = [m for m in common if rows_a[m].rubric is not None and rows_b[m].rubric is not None]
    return spearman(_order_values(a, scored, False), _order_values(b, scored, False))


def link_judges(boards: list[Leaderboard]) -> Leaderboard:
    """Fill each board's agreement with every other; return the first board, carrying the
    others' reliability blocks."""
    for i, a in enumerate(boards):
        for b in boards[i + 1 :]:
            a.reliability.judge_agreement[b.judge] = agreement(a.target_means, b.target_means)
            b.reliability.judge_agreement[a.judge] = agreement(b.target_means, a.target_means)
            rho = _table_correlation(a, b)
            a.reliability.leaderboard_spearman[b.judge] = rho
            b.reliability.leaderboard_spearman[a.judge] = rho
    first = boards[0]
    first.other_reliability = {b.judge: b.reliability for b in boards[1:]}
    first.others = boards[1:]
    return first
