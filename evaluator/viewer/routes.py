"""The viewer's pages, one GET route each; templates/ draws them (Jinja2, autoescaped).

    /                      runs: status, models, sequences, turns stored / planned
    /runs/{id}             one run: its conversations, then the run report
    /conversations/{id}    one conversation turn by turn, its judgements and comparisons
    /turns/{id}            one turn: the messages sent, answers, numbers, judgements
    /side-by-side?a=&b=    two conversations turn by turn and the verdicts between them
    /leaderboard?judge=&rubric_version=&sequences=&models=&allow_self_judge=
    /search?q=             answers containing a text, linked to their turns

A store failure is a page with its message (503), a missing document a 404 page, a leaderboard
that cannot be drawn (nothing judged, a mix) the command's message on the page (200: the
filters above it are how one fixes it).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from evaluator.leaderboard.gather import LeaderboardError
from evaluator.store.errors import StoreError
from evaluator.store.store import Store
from evaluator.viewer import data, embed

router = APIRouter()


def _store(request: Request) -> Store:
    store: Store = request.app.state.store.get()
    return store


def _page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request, name, context, status_code=status
    )
    return response


def _problem(request: Request, title: str, message: str, status: int) -> HTMLResponse:
    return _page(request, "problem.html", status, title=title, message=message)


def _guarded(request: Request, title: str, build: Any) -> Response:
    """Run `build()`; a StoreError becomes a page with its message rather than a 500."""
    try:
        result: Response = build()
    except StoreError as exc:
        return _problem(request, title, str(exc), 503)
    return result


@router.get("/static/report.css", include_in_schema=False)
def report_css() -> Response:
    return Response(embed.REPORT_CSS, media_type="text/css")


@router.get("/", response_class=HTMLResponse)
def runs(request: Request) -> Response:
    def build() -> Response:
        rows = data.runs_overview(_store(request))
        live = any(r.state.status == "running" for r in rows)
        return _page(request, "runs.html", rows=rows, refresh=live)

    return _guarded(request, "Runs", build)


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run(request: Request, run_id: str) -> Response:
    def build() -> Response:
        store = _store(request)
        found = store.get_run(run_id)
        if found is None:
            return _problem(request, "No such run", f"No run {run_id!r} is stored.", 404)
        rows = data.runs_overview_one(store, found)
        convs = data.run_conversations(store, found)
        report = Markup(embed.report_fragment(store, found))  # noqa: S704 - rendered escaped by the report
        return _page(
            request, "run.html", row=rows, conversations=convs, report=report,
            refresh=rows.state.status == "running",
        )  # fmt: skip

    return _guarded(request, "Run", build)


@router.get("/conversations/{conversation_id:path}", response_class=HTMLResponse)
def conversation(request: Request, conversation_id: str) -> Response:
    def build() -> Response:
        view = data.conversation(_store(request), conversation_id)
        if view is None:
            return _problem(
                request, "No such conversation", f"No turns of {conversation_id!r} are stored.", 404
            )
        return _page(request, "conversation.html", c=view)

    return _guarded(request, "Conversation", build)


@router.get("/turns/{response_id:path}", response_class=HTMLResponse)
def turn(request: Request, response_id: str) -> Response:
    def build() -> Response:
        view = data.turn_view(_store(request), response_id)
        if view is None:
            return _problem(request, "No such turn", f"No turn {response_id!r} is stored.", 404)
        return _page(request, "turn.html", v=view, t=view.turn)

    return _guarded(request, "Turn", build)


@router.get("/side-by-side", response_class=HTMLResponse)
def side_by_side(request: Request, a: str = "", b: str = "") -> Response:
    def build() -> Response:
        if not a or not b:
            return _problem(request, "Side by side", "Give two conversation ids: ?a=...&b=...", 400)
        view = data.side_by_side(_store(request), a, b)
        if view is None:
            return _problem(request, "Side by side", "One of the two conversations is not stored.", 404)
        return _page(request, "side_by_side.html", s=view)

    return _guarded(request, "Side by side", build)


@router.get("/leaderboard", response_class=HTMLResponse)
def leaderboard(
    request: Request,
    judge: str = "",
    rubric_version: str = "",
    sequences: str = "",
    models: str = "",
    allow_self_judge: bool = False,
) -> Response:
    filters = embed.LeaderboardFilters(judge, rubric_version, sequences, models, allow_self_judge)

    def build() -> Response:
        try:
            html = request.app.state.boards.fragment(_store(request), filters)
        except LeaderboardError as exc:
            return _page(request, "leaderboard.html", f=filters, board=None, message=str(exc))
        fragment = Markup(html)  # noqa: S704 - rendered escaped by evaluator/leaderboard/render.py
        return _page(request, "leaderboard.html", f=filters, board=fragment, message=None)

    return _guarded(request, "Leaderboard", build)


@router.get("/search", response_class=HTMLResponse)
def search(request: Request, q: str = "") -> Response:
    def build() -> Response:
        hits = data.search(_store(request), q) if q.strip() else []
        return _page(request, "search.html", q=q, hits=hits, limit=data.SEARCH_LIMIT)

    return _guarded(request, "Search", build)
