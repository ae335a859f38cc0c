"""What every `storybench-eval` command shares: the consoles, `fail`, exit codes, the code
version and run resolution (RUN_ID / unique prefix / --latest).

A leaf module: it imports nothing from evaluator.cli, evaluator.judge or evaluator.report, so
the packages that register commands on the group (evaluator/judge/cli.py,
evaluator/report/cli.py) use it without importing the root, and no import circle exists.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import NoReturn

from rich.console import Console
from rich.markup import escape

from evaluator.records import RunRecord
from evaluator.store import Store

console = Console()
err_console = Console(stderr=True)

# Exit codes of every command (documented in each command's --help).
EXIT_OK = 0
EXIT_FAILED = 1  # database failure, no such run, a run or judging that stopped
EXIT_CONFIG = 2  # bad configuration or usage
EXIT_INCOMPLETE = 3  # some turns or judgements failed: re-run to retry them
EXIT_INTERRUPTED = 130  # Ctrl-C: re-run to resume

NO_RUNS = "no runs stored yet; play one with `storybench-eval run`"
RUN_OR_LATEST = "give a RUN_ID or --latest, one of them (list runs with `storybench-eval runs`)"


def no_such_run(run_id: str) -> str:
    return f"no run '{run_id}'; list them with `storybench-eval runs`"


def fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    """Print `error: message` on stderr (stored text escaped, never console markup) and exit."""
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False)
    sys.exit(code)


def code_version() -> str:
    """The installed version plus the git commit of the checkout, when there is one."""
    try:
        version = metadata.version("storybench")
    except metadata.PackageNotFoundError:
        version = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return f"{version}+{commit}" if commit else version


class RunNotFound(LookupError):
    """RUN_ID matches no run, or --latest found none; the message says what to do."""


def resolve_run(store: Store, run_id: str | None, *, latest: bool = False) -> RunRecord:
    """The run a command is about: RUN_ID (exact or a unique prefix) or the newest (--latest).

    Raises click-free errors so callers decide the exit code: ValueError for usage (both or
    neither given), RunNotFound when nothing matches, StoreError for an ambiguous prefix.
    """
    if (run_id is None) == (not latest):
        raise ValueError(RUN_OR_LATEST)
    if run_id is None:
        newest = store.latest_run()
        if newest is None:
            raise RunNotFound(NO_RUNS)
        return newest
    found = store.get_run(run_id)
    if found is None:
        raise RunNotFound(no_such_run(run_id))
    return found


def resolve_run_or_exit(store: Store, run_id: str | None, *, latest: bool = False) -> RunRecord:
    """`resolve_run` for commands: usage problems exit 2, a missing run exits 1."""
    try:
        return resolve_run(store, run_id, latest=latest)
    except ValueError as exc:
        fail(str(exc), EXIT_CONFIG)
    except RunNotFound as exc:
        fail(str(exc), EXIT_FAILED)


SHOWN_FAILURES = 10


def print_failures(failures: list[tuple[str, str]], noun: str) -> None:
    """The first failures as "label: reason" lines (stored text escaped), then how many more."""
    for label, reason in failures[:SHOWN_FAILURES]:
        console.print(f"  [yellow]{escape(label)}: {escape(reason)}[/yellow]", highlight=False)
    if len(failures) > SHOWN_FAILURES:
        console.print(f"  ... and {len(failures) - SHOWN_FAILURES} more failed {noun}")


def stopped_exit(status: str, message: str | None, verb: str) -> int | None:
    """The exit code of a judging command that stopped early (failed: 1, Ctrl-C: 130), after
    saying why; None when it ran to its end."""
    if status == "failed":
        err_console.print(f"[bold red]{verb} stopped:[/bold red] {escape(str(message))}", highlight=False)
        return EXIT_FAILED
    if status == "interrupted":
        err_console.print(f"[yellow]{escape(str(message))}[/yellow]")
        return EXIT_INTERRUPTED
    return None
