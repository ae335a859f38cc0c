"""The run report and the leaderboard as fragments of a viewer page.

Both are rendered by their own modules (evaluator/report/render_html.py,
evaluator/leaderboard/render.py) exactly as the files `report` and `leaderboard -o x.html`
write, so the viewer shows the same numbers and charts. Those pages are self-contained: an
inline <style> and a CSP meta tag in their head. The viewer keeps only their body (its own
page head links the same styles as a first-party file, `/static/report.css`), so no inline
style element reaches a page whose policy forbids it.
"""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from evaluator.leaderboard.build import Leaderboard, build
from evaluator.leaderboard.gather import gather
from evaluator.leaderboard.judges import link_judges
from evaluator.leaderboard.render import charts
from evaluator.leaderboard.render import render_html as render_leaderboard
from evaluator.records import RunRecord
from evaluator.report.gather import summarize
from evaluator.report.render_html import CSS as REPORT_CSS
from evaluator.report.render_html import render_html as render_report
from evaluator.store.store import Store

__all__ = [
    "REPORT_CSS",
    "BoardCache",
    "LeaderboardFilters",
    "body_of",
    "leaderboard_fragment",
    "report_fragment",
]

# Bootstrap resamples for the intervals: fewer than the command's 1000 so a page answers fast;
# the command line gives the published figures.
VIEW_RESAMPLES = 200


def body_of(page: str) -> str:
    """What lies between <body> and </body> of a page our renderers wrote."""
    start = page.index("<body>") + len("<body>")
    return page[start : page.rindex("</body>")]


def report_fragment(store: Store, run: RunRecord) -> str:
    """The run report without its transcripts: the viewer links each conversation to its own
    page instead, so a run of thousands of turns does not read every answer to draw one page."""
    out = io.StringIO()
    render_report(summarize(store, run), None, out)
    return body_of(out.getvalue())


def _names(csv: str | None) -> list[str] | None:
    names = [n.strip() for n in (csv or "").split(",") if n.strip()]
    return list(dict.fromkeys(names)) or None


@dataclass(frozen=True)
class LeaderboardFilters:
    """The leaderboard's filters as they stand in the URL (comma-separated lists)."""

    judge: str = ""
    rubric_version: str = ""
    sequences: str = ""
    models: str = ""
    allow_self_judge: bool = False


def leaderboard(store: Store, f: LeaderboardFilters) -> Leaderboard:
    """The command's board for these filters; raises LeaderboardError like the command."""
    named = _names(f.judge)
    judges: list[str | None] = list(named) if named else [None]
    boards = [
        build(
            gather(
                store,
                judge=one,
                rubric_version=f.rubric_version or None,
                models=_names(f.models),
                sequences=_names(f.sequences),
                allow_self_judge=f.allow_self_judge,
            ),
            resamples=VIEW_RESAMPLES,
        )
        for one in judges
    ]
    return link_judges(boards)


def leaderboard_fragment(board: Leaderboard) -> str:
    out = io.StringIO()
    render_leaderboard(board, out, charts(board))
    return body_of(out.getvalue())


class BoardCache:
    """Rendered leaderboards by (filters, the store's document counts), for `ttl_s` seconds.

    The leaderboard reads the whole store and bootstraps its intervals: seconds on a large
    store, far over a page's budget, and the same answer until something is added. A new run,
    turn, judgement or comparison changes the counts and so the key; a change that keeps them
    (a failed comparison retried, an error turn replaced) shows once the entry expires.
    """

    def __init__(self, size: int = 16, ttl_s: float = 60.0) -> None:
        self._entries: OrderedDict[tuple[object, ...], tuple[float, str]] = OrderedDict()
        self._size, self._ttl_s = size, ttl_s
        self._lock = threading.Lock()

    def fragment(self, store: Store, filters: LeaderboardFilters) -> str:
        """The board's HTML fragment; raises LeaderboardError (never cached) like `leaderboard`."""
        key = (filters, store.collection_sizes())
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and now - hit[0] < self._ttl_s:
                self._entries.move_to_end(key)
                return hit[1]
        html = leaderboard_fragment(leaderboard(store, filters))
        with self._lock:
            self._entries[key] = (now, html)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return html
