"""Reports of stored runs (`storybench-eval report`): one self-contained HTML or Markdown file.

    gather.py         reads a run from the store in two streamed passes (numbers, then text)
    stats.py          aggregates turns and judgements into the summary (pure functions)
    model.py          the typed values both renderers draw from
    present.py        format-neutral tables and phrases
    render_html.py    HTML (inline CSS, no scripts; every stored string escaped)
    render_md.py      Markdown for issues and pull requests
    output.py         default path, atomic write
    cli.py            the click command; `register(group)` adds it to `storybench-eval`

docs/reports.md describes what a report contains and how its numbers are computed.
"""

from __future__ import annotations

import click

from evaluator.report.cli import report_command
from evaluator.report.output import FORMATS, ReportError, default_path, write_report


def register(group: click.Group) -> None:
    """Add `report` to the command group (called by evaluator/cli.py, like a plugin hook)."""
    group.add_command(report_command)


__all__ = ["FORMATS", "ReportError", "default_path", "register", "write_report"]
