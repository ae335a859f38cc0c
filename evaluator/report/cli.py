"""`storybench-eval report`: one run as a self-contained HTML (or Markdown) file.

Thin on purpose: it resolves the run, picks the path and format, and hands over to
`write_report`. Errors follow evaluator/cli.py: store and file problems print one message and
exit 1 (like `show` and `export`, a run that does not exist is 1 too); usage errors are click's 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from evaluator.cli_options import db_option, mongo_option
from evaluator.report.output import FORMATS, default_path, format_for, write_report
from evaluator.store.errors import StoreError
from evaluator.store.store import open_store


def _fail(message: str, code: int = 1) -> None:
    from evaluator.cli import fail  # at call time: evaluator/cli.py imports this module

    fail(message, code=code)


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
        raise click.UsageError("give a RUN_ID or --latest (one of them)")
    try:
        with open_store(mongo_uri, db_name=db_name) as store:
            if latest:
                newest = store.list_runs(limit=1)
                if not newest:
                    _fail("no runs stored yet; `storybench-eval run` starts one")
                    return
                run = newest[0]
            else:
                found = store.get_run(run_id or "")
                if found is None:
                    _fail(f"no run '{run_id}'; list them with `storybench-eval runs`")
                    return
                run = found
            chosen = format_for(out, fmt)
            path = out if out is not None else default_path(str(run.get("_id", "")), chosen)
            written = write_report(
                store, run, path, chosen, transcripts=not no_transcripts, make_parent=out is None
            )
    except StoreError as exc:
        _fail(str(exc))
        return
    click.echo(str(written))
