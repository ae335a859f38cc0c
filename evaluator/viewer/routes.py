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
filters above it are how one fixes it). The run report and the leaderboard are computed in the
background and kept per store state (background.py); search goes through the viewer's own
index (search_index.py). A page whose part is still being computed says so and refreshes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from evaluator.store.errors import StoreError
from evaluator.store.store import Store
from evaluator.viewer import data, embed
from evaluator.viewer.background import Results
from evaluator.viewer.search_index import MIN_CHARS

# A page whose content is being computed refreshes itself this often (seconds): a run's report
# takes about half a second, the leaderboard and the search index's first build many seconds.
COMPUTING_REFRESH_S = 1
LONG_REFRESH_S = 2

router = APIRouter()


def _store(request: Request) -> Store:
    store: Store = request.app.state.store.get()
    return store


def _results(request: Request) -> Results:
    results: Results = request.app.state.services.results()
    return results


def _wait(request: Request) -> float:
    """How long a page waits for background work before answering with what it has."""
    wait: float = request.app.state.wait_s
    return wait


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
        row = data.runs_overview_one(store, found)
        answer = _results(request).get(
            embed.run_key(run_id), store.change_marks(), lambda: embed.run_value(store, found), _wait(request)
        )
        value = answer.result.value if answer.result is not None else {}
        convs = [data.ConversationSummary(**c) for c in value.get("conversations", [])]
        report = Markup(value.get("report", ""))  # noqa: S704 - rendered escaped by the report
        running, waiting = row.state.status == "running", answer.computing and not answer.current
        return _page(
            request, "run.html", row=row, conversations=convs, report=report, answer=answer,
            refresh=running or waiting, refresh_s=COMPUTING_REFRESH_S if waiting else 10,
            computing_s=COMPUTING_REFRESH_S,
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
        store = _store(request)
        answer = _results(request).get(
            embed.board_key(filters),
            store.change_marks(),
            lambda: embed.board_value(store, filters),
            _wait(request),
            every_s=request.app.state.board_every_s,
        )
        value = answer.result.value if answer.result is not None else {}
        html, message = value.get("html"), value.get("message")
        board = Markup(html) if html is not None else None  # noqa: S704 - escaped by evaluator/leaderboard/render.py
        return _page(
            request, "leaderboard.html", f=filters, board=board, message=message, answer=answer,
            refresh=not answer.current, refresh_s=LONG_REFRESH_S,
            computing_s=LONG_REFRESH_S, again_s=request.app.state.board_every_s,
        )  # fmt: skip

    return _guarded(request, "Leaderboard", build)


@router.get("/search", response_class=HTMLResponse)
def search(request: Request, q: str = "") -> Response:
    def build() -> Response:
        if not q.strip():
            return _page(request, "search.html", q=q, hits=[], found=None, progress=None)
        store = _store(request)
        index = request.app.state.services.index()
        index.sync(_wait(request))
        progress = index.progress
        if len(q) < MIN_CHARS:
            found = None
            hits: list[data.Hit] = []
        else:
            found = index.search(store, q, data.SEARCH_LIMIT)
            hits = data.hits(found.turns, q)
        return _page(
            request, "search.html", q=q, hits=hits, limit=data.SEARCH_LIMIT, found=found, progress=progress,
            min_chars=MIN_CHARS, refresh=progress.building, refresh_s=LONG_REFRESH_S,
        )  # fmt: skip

    return _guarded(request, "Search", build)
