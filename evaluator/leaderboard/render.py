"""The leaderboard as a terminal table, Markdown, JSON, CSV or HTML.

Every format shows the same numbers from one `Leaderboard`: the pairwise rating with its 95%
interval and rank range, wins/ties/losses over pairs, the rubric mean with its interval,
conversations and the mean answer length, under a header naming the judge, the rubric version
and the prompt set. HTML is one self-contained file with inline SVG charts and the report's
Content-Security-Policy (no scripts); Markdown links PNG charts written beside it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TextIO

from evaluator.charts import Chart, RatingBar, TurnPoint, TurnSeries, ratings_chart, score_by_turn_chart
from evaluator.leaderboard.build import Leaderboard, ModelRow
from evaluator.leaderboard.ratings import MeanCI
from evaluator.report import render_html as html_parts
from evaluator.report import render_md as md_parts
from evaluator.report.present import Table

__all__ = ["FORMATS", "charts", "render_csv", "render_html", "render_json", "render_md", "summary_table"]

FORMATS = ("table", "md", "html", "json", "csv")
_NONE = "-"


def _num(value: float | None, digits: int = 0) -> str:
    return _NONE if value is None else f"{value:.{digits}f}"


def _ci(ci: tuple[float, float] | None, digits: int = 0) -> str:
    return _NONE if ci is None else f"{ci[0]:.{digits}f} to {ci[1]:.{digits}f}"


def _rating_ci(board: Leaderboard, row: ModelRow) -> str:
    if row.model == board.anchor and row.rating is not None:
        return "anchor"  # fixed at 1000: its interval has no width by construction
    return _ci(row.rating_ci)


def terminal_rows(board: Leaderboard) -> list[list[str]]:
    """The summary for an 80-column terminal: each interval under its value (two-line cells)."""
    rows = []
    for r in board.rows:
        rating = _num(r.rating) + ("" if r.rating is None else f"\n{_rating_ci(board, r)}")
        rubric = _mean(r.rubric) + (
            "" if r.rubric is None or r.rubric.ci is None else f"\n{_ci(r.rubric.ci, 2)}"
        )
        rows.append(
            [
                _ranks(r),
                r.model,
                rating,
                f"{r.wins}/{r.ties}/{r.losses}",
                rubric,
                str(r.conversations),
                _num(r.answer_tokens),
            ]
        )
    return rows


TERMINAL_HEADERS = ["rank", "model", "rating\n95% CI", "W/T/L", "rubric\n95% CI", "convs", "answer\ntokens"]


def _ranks(row: ModelRow) -> str:
    best, worst = row.rank_range
    return str(best) if best == worst else f"{best}-{worst}"


def _mean(m: MeanCI | None) -> str:
    return _NONE if m is None else f"{m.mean:.2f}"


def summary_table(board: Leaderboard) -> Table:
    headers = [
        "rank", "model", "rating", "95% CI", "W/T/L", "pairs", "rubric", "rubric 95% CI", "convs",
        "answer tokens",
    ]  # fmt: skip
    rows = [
        [
            _ranks(r),
            r.model,
            _num(r.rating),
            _rating_ci(board, r),
            f"{r.wins}/{r.ties}/{r.losses}",
            str(r.pairs),
            _mean(r.rubric),
            _ci(r.rubric.ci if r.rubric else None, 2),
            str(r.conversations),
            _num(r.answer_tokens),
        ]  # fmt: skip
        for r in board.rows
    ]
    numeric = [False, False, True, True, True, True, True, True, True, True]
    anchor = f"; {board.anchor} fixed at 1000" if board.anchor else ""
    note = (
        f"rating: Bradley-Terry-Davidson on pairwise verdicts (both orders), 1000 + 400 log10 odds{anchor}; "
        f"intervals: 95%, {board.resamples} bootstrap resamples of sequences; rank: range over the intervals"
    )
    return Table(headers, rows, numeric, title="Leaderboard", note=note)


def criteria_table(board: Leaderboard) -> Table | None:
    if not board.criteria:
        return None
    headers = ["model", *board.criteria]
    rows = []
    for r in board.rows:
        cells = []
        for name in board.criteria:
            m = r.criteria.get(name)
            cells.append(_NONE if m is None else f"{m.mean:.2f} ({_ci(m.ci, 2)})")
        rows.append([r.model, *cells])
    return Table(
        headers, rows, [False] + [True] * len(board.criteria), title="Rubric criteria (mean, 95% CI)"
    )


def facts(board: Leaderboard) -> list[tuple[str, str]]:
    stats = board.pair_stats
    flips = (
        f"{stats.position_flips} of {stats.pairs} pairs ({stats.flip_rate:.0%})"
        if stats.flip_rate is not None
        else _NONE
    )
    return [
        ("judge", board.judge),
        ("rubric version", board.rubric_version),
        (
            "prompt set",
            f"{board.prompt_set} ({len(board.sequences)} sequences: {', '.join(board.sequences)})",
        ),
        ("position flips", flips),
        (
            "left out",
            f"{stats.one_order_only} pair(s) with one order judged, {stats.failed} failed comparison(s)",
        ),
    ]


# ---- charts -------------------------------------------------------------------------------


def _turn_series(board: Leaderboard) -> list[TurnSeries]:
    out = []
    for r in board.rows:
        if not r.by_turn:
            continue
        points = [
            TurnPoint(
                t.turn,
                t.score.mean,
                t.score.ci[0] if t.score.ci else None,
                t.score.ci[1] if t.score.ci else None,
                t.score.n,
            )
            for t in r.by_turn
        ]
        out.append(TurnSeries(r.model, points))
    return out


def charts(board: Leaderboard, scale: tuple[float, float] | None = None) -> list[Chart]:
    """The ratings with their intervals (when rated) and the mean rubric score by turn (when
    turns were judged)."""
    out = []
    bars = [
        RatingBar(r.model, r.rating, *(r.rating_ci or (r.rating, r.rating)))
        for r in board.rows
        if r.rating is not None
    ]
    if bars:
        out.append(ratings_chart(bars))
    series = _turn_series(board)
    if series:
        out.append(score_by_turn_chart(series, scale=scale))
    return out


# ---- formats ------------------------------------------------------------------------------


def render_json(board: Leaderboard, out: TextIO) -> None:
    json.dump(board.to_json(), out, indent=2, ensure_ascii=False)
    out.write("\n")


def render_csv(board: Leaderboard, out: TextIO) -> None:
    """One row per model; the header names the judge, rubric version and prompt set in columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    criteria = [f"criterion_{c}" for c in board.criteria]
    writer.writerow(
        [
            "judge",
            "rubric_version",
            "prompt_set",
            "model",
            "rank_best",
            "rank_worst",
            "rating",
            "rating_lo",
            "rating_hi",
            "wins",
            "ties",
            "losses",
            "pairs",
            "rubric_mean",
            "rubric_lo",
            "rubric_hi",
            "conversations",
            "mean_answer_tokens",
            *criteria,
        ]  # fmt: skip
    )
    for r in board.rows:
        j = r.to_json()
        lo_hi = j["rating_ci"] or [None, None]
        rubric = j["rubric_ci"] or [None, None]
        writer.writerow(
            [
                board.judge,
                board.rubric_version,
                board.prompt_set,
                r.model,
                *r.rank_range,
                j["rating"],
                *lo_hi,
                r.wins,
                r.ties,
                r.losses,
                r.pairs,
                j["rubric_mean"],
                *rubric,
                r.conversations,
                j["mean_answer_tokens"],
                *(j["criteria"].get(c, {}).get("mean") for c in board.criteria),
            ]  # fmt: skip
        )
    out.write(buffer.getvalue())


def render_md(board: Leaderboard, out: TextIO, chart_files: list[tuple[Chart, str]] | None = None) -> None:
    """Markdown; `chart_files` are (chart, file name beside the Markdown) already written."""
    out.write("# StoryBench leaderboard\n\n")
    for key, value in facts(board):
        out.write(f"- **{md_parts.inline(key)}**: {md_parts.inline(value)}\n")
    out.write("\n")
    out.write(md_parts.table(summary_table(board)))
    crit = criteria_table(board)
    if crit is not None:
        out.write(md_parts.table(crit))
    for chart, name in chart_files or []:
        out.write(f"![{md_parts.inline(chart.title)}]({name})\n\n")
    _md_notes(board, out)


def _md_notes(board: Leaderboard, out: TextIO) -> None:
    for note in board.notes:
        out.write(f"- note: {md_parts.inline(note)}\n")
    for failure in board.failures[:20]:
        out.write(f"- failed comparison: {md_parts.inline(failure)}\n")
    if len(board.failures) > 20:
        out.write(f"- ... and {len(board.failures) - 20} more failed comparisons\n")


def render_html(board: Leaderboard, out: TextIO, chart_list: list[Chart] | None = None) -> None:
    esc = html_parts.esc
    out.write(_page_head("StoryBench leaderboard"))
    out.write('<h1>StoryBench leaderboard</h1>\n<table class="facts">')
    for key, value in facts(board):
        out.write(f"<tr><th>{esc(key)}</th><td>{esc(value)}</td></tr>")
    out.write("</table>\n")
    out.write(html_parts.table(summary_table(board)))
    for chart in chart_list or []:
        out.write(f'<figure class="chart">{chart.svg}<figcaption>{esc(chart.title)}</figcaption></figure>\n')
    crit = criteria_table(board)
    if crit is not None:
        out.write(html_parts.table(crit))
    if board.notes or board.failures:
        out.write("<h2>Notes</h2>\n<ul>")
        for note in board.notes:
            out.write(f"<li>{esc(note)}</li>")
        for failure in board.failures[:50]:
            out.write(f"<li>failed comparison: {esc(failure)}</li>")
        if len(board.failures) > 50:
            out.write(f"<li>... and {len(board.failures) - 50} more failed comparisons</li>")
        out.write("</ul>\n")
    out.write("</body></html>\n")


def _page_head(title: str) -> str:
    """The report's page head: the same Content-Security-Policy (no scripts) and styles."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{html_parts._CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html_parts.esc(title)}</title>\n<style>{html_parts._CSS}</style></head>\n<body>\n"
    )


def chart_file_names(md_path: Path, chart_list: list[Chart]) -> list[tuple[Chart, str]]:
    """PNG names beside the Markdown file: `<stem>.rating.png`, `<stem>.by-turn.png`."""
    kinds = ["rating" if "rating" in c.title.lower() else "by-turn" for c in chart_list]
    return [(c, f"{md_path.stem}.{kind}.png") for c, kind in zip(chart_list, kinds, strict=True)]
