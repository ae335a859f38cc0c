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
from dataclasses import asdict, dataclass

from evaluator.leaderboard.build import Leaderboard, build
from evaluator.leaderboard.gather import LeaderboardError, gather
from evaluator.leaderboard.judges import link_judges
from evaluator.leaderboard.render import charts
from evaluator.leaderboard.render import render_html as render_leaderboard
from evaluator.records import RunRecord
from evaluator.report.gather import summarize
from evaluator.report.render_html import CSS as REPORT_CSS
from evaluator.report.render_html import render_html as render_report
from evaluator.store.store import Store
from evaluator.viewer.background import Value, key_of
from evaluator.viewer.data import run_conversations

__all__ = [
    "REPORT_CSS",
    "LeaderboardFilters",
    "board_key",
    "board_value",
    "body_of",
    "leaderboard_fragment",
    "report_fragment",
    "run_key",
    "run_value",
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
                paged=True,
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


def board_key(f: LeaderboardFilters) -> str:
    """The key of a board's computed result (background.py): its filters."""
    return key_of("leaderboard", f.judge, f.rubric_version, f.sequences, f.models, f.allow_self_judge)


def board_value(store: Store, f: LeaderboardFilters) -> Value:
    """The board's HTML fragment, or the command's message when it refuses (kept like a
    board: the same store gives the same refusal)."""
    try:
        return {"html": leaderboard_fragment(leaderboard(store, f)), "message": None}
    except LeaderboardError as exc:
        return {"html": None, "message": str(exc)}


def run_key(run_id: str) -> str:
    return key_of("run", run_id)


def run_value(store: Store, run: RunRecord) -> Value:
    """A run page's slow part: its conversations (turns read without text) and its report."""
    conversations = [asdict(c) for c in run_conversations(store, run)]
    return {"conversations": conversations, "report": report_fragment(store, run)}
