"""Reports of stored runs (`storybench-eval report`): one self-contained HTML or Markdown file.

    gather.py         reads a run from the store in two streamed passes (numbers, then text)
    stats.py          aggregates turns and judgements into the summary (pure functions)
    model.py          the typed values both renderers draw from
    present.py        format-neutral tables and phrases
    render_html.py    HTML (inline CSS, no scripts; every stored string escaped)
    render_md.py      Markdown for issues and pull requests
    output.py         default path, atomic write
    cli.py            the click command `report_command`

docs/reports.md describes what a report contains and how its numbers are computed.
"""

from __future__ import annotations

from evaluator.report.output import FORMATS, ReportError, default_path, write_report

__all__ = ["FORMATS", "ReportError", "default_path", "write_report"]
