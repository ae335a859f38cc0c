"""`storybench-eval view`: a read-only local web viewer over the store. docs/viewer.md.

app.py        the FastAPI app factory `create_app(store_opener, token=None, ...)`; the
              middleware (GET only, the token, the security headers)
security.py   the Content-Security-Policy, the binding rule, token checks
routes.py     one GET route per page
data.py       what the pages show, read from the store (typed values, no markup)
embed.py      the run report and the leaderboard, rendered by their own modules, as fragments
background.py slow page parts computed in a thread, kept per store state (memory + cache folder)
search_index.py  the answer search index (SQLite FTS5 trigram, outside the store)
services.py   the background work of one store: its cache folder, the warm-up at start
templates/    Jinja2 pages (autoescaped); static/ the first-party CSS; no script anywhere
cli.py        the click command; `register(group)` adds it to `storybench-eval`
"""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add `view` to the command group (called by evaluator/cli.py, like a plugin hook)."""
    from evaluator.viewer.cli import view_command

    group.add_command(view_command)


__all__ = ["register"]
