"""Judge-free text metrics of stored turns: `storybench-eval metrics` backfills them.

    backfill.py  which turns lack current metrics; computing and storing them, conversation by
                 conversation in turn order (the figures themselves: evaluator/text_metrics.py)
    cli.py       the click command; `register(group)` adds it to `storybench-eval`

New turns get their metrics when they are stored (evaluator/turn_record.py); this command is for
turns stored before the metrics existed, or under an older METRICS_VERSION.
"""

from __future__ import annotations

import click

from evaluator.metrics.cli import metrics_command


def register(group: click.Group) -> None:
    """Add `metrics` to the command group (called by evaluator/cli.py, like a plugin hook)."""
    group.add_command(metrics_command)


__all__ = ["register"]
