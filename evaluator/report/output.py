"""Writing a report file: where it goes by default, and never a half-written file.

A report is a rendering of the store, regenerated at will (for example while a run is still
playing), so an existing report file is replaced. It is written to a temporary file beside the
target and renamed into place: an interrupted report, or one whose database stops answering
half-way, leaves the previous file as it was. A link at the target is replaced, never followed.
A Markdown report's chart is a PNG beside it (`<stem>.usage.png`), written the same way and
before the report, so the report never links to a missing or half-written image.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from evaluator.records import RunRecord
from evaluator.report.gather import conversations, summarize
from evaluator.report.model import Summary, usage_chart
from evaluator.report.render_html import render_html
from evaluator.report.render_md import render_md
from evaluator.store.errors import StoreError
from evaluator.store.store import Store
from evaluator.whole_file import WriteError, written_whole

Format = Literal["html", "md"]
FORMATS: tuple[str, ...] = ("html", "md")
DEFAULT_DIR = Path("reports")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ReportError(StoreError):
    """A report could not be written (bad path, unwritable folder); the message says why."""


def default_path(run_id: str, fmt: str) -> Path:
    """reports/<run id>.<fmt>; a run id is stored text, so anything but [A-Za-z0-9._-] becomes _."""
    name = _UNSAFE.sub("_", run_id).lstrip(".") or "run"
    return DEFAULT_DIR / f"{name}.{fmt}"


def format_for(path: Path | None, fmt: str | None) -> str:
    """--format wins; else the file's suffix (.md/.markdown -> md); else html."""
    if fmt is not None:
        return fmt
    if path is not None and path.suffix.lower() in (".md", ".markdown"):
        return "md"
    return "html"


def usage_png_path(out: Path) -> Path:
    """Where a Markdown report's tokens-and-latency chart goes: beside it, named after it."""
    return out.with_name(f"{out.stem}.usage.png")


def _write_usage_png(summary: Summary, out: Path) -> str | None:
    """The chart's PNG beside the Markdown report `out`; its file name, None without data."""
    chart = usage_chart(summary.usage)
    if chart is None:
        return None
    png = usage_png_path(out)
    try:
        chart.write_png(png)
    except OSError as exc:
        raise ReportError(f"could not write {png}: {exc.strerror or exc}") from exc
    return png.name


def write_report(
    store: Store,
    run: RunRecord,
    out: Path,
    fmt: str,
    *,
    transcripts: bool = True,
    make_parent: bool = False,
) -> Path:
    """Render `run` (a `runs` document) into `out`; return the path written.

    `make_parent` creates the folder (for the default reports/); a folder given by the user
    must exist. Raises ReportError for paths, StoreError when the database fails.
    """
    if fmt not in FORMATS:
        raise ReportError(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    if out.is_dir():
        raise ReportError(f"{out} is a folder; give a file name with -o")
    if make_parent:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReportError(f"cannot create the folder {out.parent}: {exc.strerror or exc}") from exc
    if not out.parent.is_dir():
        raise ReportError(f"the folder {out.parent} does not exist")
    summary = summarize(store, run)
    convs = conversations(store, run) if transcripts else None
    usage_png = _write_usage_png(summary, out) if fmt == "md" else None
    try:
        with written_whole(out, errors="replace") as fh:
            if fmt == "html":
                render_html(summary, convs, fh)
            else:
                render_md(summary, convs, fh, usage_png=usage_png)
    except WriteError as exc:
        raise ReportError(str(exc)) from exc
    return out
