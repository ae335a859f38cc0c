"""Pairwise comparison: `storybench-eval compare` judges two models' whole conversations side by side.

    conversations.py  which stored conversations stand for a model (across runs; shared with the leaderboard)
    pairs.py          which comparisons to make: matched conversations, both orders
    prompt.py         the judge's prompt and the reading of its verdict (the rubric's `pairwise` block)
    judging.py        the requests and the stored `pairwise` documents (failures stored with their reason)
    cli.py            the click command; `register(group)` adds it to `storybench-eval`

docs/leaderboard.md is the user's guide.
"""

from __future__ import annotations

import click

from evaluator.compare.cli import compare_command


def register(group: click.Group) -> None:
    """Add `compare` to the command group (called by evaluator/cli.py, like a plugin hook)."""
    group.add_command(compare_command)


__all__ = ["register"]
