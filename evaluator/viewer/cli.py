"""`storybench-eval view`: serve the viewer with uvicorn.

It binds 127.0.0.1 unless told otherwise. Bound anywhere else it refuses to start without a
token in STORYBENCH_VIEW_TOKEN, and every request must then carry it. The store is opened at
start-up and closed when the server stops (Ctrl-C); computed pages and the search index are
kept under the user's cache folder (services.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from evaluator.cli_common import EXIT_CONFIG, fail
from evaluator.cli_options import db_option, mongo_option
from evaluator.store.store import Store, open_store
from evaluator.viewer.security import TOKEN_ENV, is_local

DEFAULT_PORT = 8765


def token_for(host: str) -> str | None:
    """The token the server will require: STORYBENCH_VIEW_TOKEN when set (even on loopback);
    a ValueError when the host is not loopback and none is set."""
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not is_local(host):
        raise ValueError(
            f"--host {host} makes the viewer reachable from other machines; set {TOKEN_ENV} to a "
            "secret token first (requests must then carry it), or bind 127.0.0.1"
        )
    return token


@click.command("view", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help=f"Address to bind. Anything but 127.0.0.1, localhost or ::1 needs {TOKEN_ENV}.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where computed pages and the search index are kept between starts "
    "[default: $XDG_CACHE_HOME/storybench/viewer or ~/.cache/storybench/viewer].",
)
@click.option("--no-cache", is_flag=True, help="Keep them in a temporary folder, removed at exit.")
@mongo_option
@db_option
def view_command(
    port: int, host: str, cache_dir: Path | None, no_cache: bool, mongo_uri: str | None, db_name: str
) -> None:
    """Browse the store in a web browser: runs, reports, the leaderboard, turns, search.

    Read-only: no route writes (the viewer's own cache folder is outside the store). Open
    http://127.0.0.1:8765/ (with ?token=<token> once when a token is set).
    """
    import uvicorn

    from evaluator.viewer.app import create_app
    from evaluator.viewer.services import default_cache_root

    try:
        token = token_for(host)
    except ValueError as exc:
        fail(str(exc), EXIT_CONFIG)

    def opener() -> Store:
        return open_store(mongo_uri, db_name=db_name)

    shown = f"[{host}]" if ":" in host else host
    click.echo(f"StoryBench viewer on http://{shown}:{port}/ (Ctrl-C stops it)")
    cache_root = None if no_cache else (cache_dir or default_cache_root())
    app = create_app(opener, token, cache_root=cache_root)
    uvicorn.run(app, host=host, port=port, log_level="warning")
