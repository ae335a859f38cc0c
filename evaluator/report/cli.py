"""`storybench-eval report`: one run as a self-contained HTML (or Markdown) file.

Thin on purpose: it resolves the run, picks the path and format, and hands over to
`write_report`. Errors follow evaluator/cli.py: store and file problems print one message and
exit 1 (like `show` and `export`, a run that does not exist is 1 too); usage errors are click's 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from evaluator.cli_common import EXIT_CONFIG, EXIT_FAILED, RUN_OR_LATEST, fail, resolve_run_or_exit
from evaluator.cli_options import db_option, mongo_option
from evaluator.report.output import FORMATS, default_path, format_for, write_report
from evaluator.store.errors import StoreError
from evaluator.store.store import open_store


@click.command("report", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_id", required=False)
@click.option("--latest", is_flag=True, help="Report on the most recently started run instead of RUN_ID.")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Output file. Default: reports/<run id>.html (.md for Markdown), folder created if "
    "needed. An existing file is replaced.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="html: one self-contained file (inline CSS, no JavaScript). md: Markdown for issues "
    "and pull requests. Default: md if -o ends in .md, else html.",
)
@click.option(
    "--no-transcripts",
    is_flag=True,
    help="Leave out the transcripts (a GitHub comment holds at most 65,536 characters).",
)
@mongo_option
@db_option
def report_command(
    run_id: str | None,
    latest: bool,
    out: Path | None,
    fmt: str | None,
    no_transcripts: bool,
    mongo_uri: str | None,
    db_name: str,
) -> None:
    """Write a report of one run (id or unique prefix) and print the file's path.

    The report shows the run (status, command, code version, the served model files), a
    summary per model and sequence (turns by outcome, latency, time to first token, tokens/s,
    prompt tokens reused from the server's cache, cost), judge scores per judge and rubric
    version, a turn-by-turn table, and every conversation's transcript with failed turns
    marked. It only reads the store.
    """
    if (run_id is None) == (not latest):
        fail(RUN_OR_LATEST, EXIT_CONFIG)
    try:
        with open_store(mongo_uri, db_name=db_name) as store:
            run = resolve_run_or_exit(store, run_id, latest=latest)
            chosen = format_for(out, fmt)
            path = out if out is not None else default_path(run.id, chosen)
            written = write_report(
                store, run, path, chosen, transcripts=not no_transcripts, make_parent=out is None
            )
    except StoreError as exc:
        fail(str(exc), EXIT_FAILED)
    click.echo(str(written))
