"""The leaderboard across runs: ratings from pairwise verdicts and rubric means, each with a
95% interval from a bootstrap over sequences. docs/leaderboard.md is the user's guide.

    ratings.py   Bradley-Terry with ties (Davidson), fitted by maximum likelihood with scipy;
                 cluster-bootstrap intervals, rank ranges; cluster-bootstrap means
    gather.py          what one table is computed from, read from the whole store; the mix
                       checks; self-judged judgements left out
    pairs.py           pairwise verdicts as outcomes: both orders combined, repeats averaged
    build.py           the numbers: ratings, rubric means, score by turn, text metrics
    length_control.py  the rating at equal length (a length covariate, sandwich intervals)
    reliability.py     the judge's figures: position bias, re-judge spread, agreement, length bias
    judges.py          several judges side by side, and their agreement
    tables.py          the tables and lines every format shows
    render.py          table, Markdown (PNG charts beside it), HTML (inline SVG), JSON, CSV
    cli.py             the click command; `register(group)` adds it to `storybench-eval`
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add `leaderboard` to the command group (called by evaluator/cli.py, like a plugin hook)."""
    from evaluator.leaderboard.cli import leaderboard_command

    group.add_command(leaderboard_command)


__all__ = ["register"]
