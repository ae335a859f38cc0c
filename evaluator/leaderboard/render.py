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
from evaluator.leaderboard.build import Leaderboard
from evaluator.leaderboard.tables import (
    criteria_table,
    facts,
    reliability_rows,
    summary_table,
    text_metrics_table,
)
from evaluator.report import render_html as html_parts
from evaluator.report import render_md as md_parts

__all__ = ["FORMATS", "charts", "render_csv", "render_html", "render_json", "render_md", "summary_table"]

FORMATS = ("table", "md", "html", "json", "csv")


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
    """The first judge's table; judges shown beside it under `other_judges`, each in the same shape."""
    doc = board.to_json()
    if board.others:
        doc["other_judges"] = [other.to_json() for other in board.others]
    json.dump(doc, out, indent=2, ensure_ascii=False)
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
    """Markdown; `chart_files` are (chart, file name beside the Markdown) already written. Judges
    shown side by side (`board.others`) follow, each with its own table (charts: HTML only)."""
    out.write("# StoryBench leaderboard\n\n")
    for one, files in [(board, chart_files or []), *((other, []) for other in board.others)]:
        if board.others:
            out.write(f"## Judge {md_parts.inline(one.judge)}\n\n")
        _md_board(one, out, files)


def _md_board(board: Leaderboard, out: TextIO, chart_files: list[tuple[Chart, str]]) -> None:
    for key, value in facts(board):
        out.write(f"- **{md_parts.inline(key)}**: {md_parts.inline(value)}\n")
    out.write("\n**Judge reliability**\n\n")
    for figure, value, how in reliability_rows(board.reliability):
        out.write(f"- **{md_parts.inline(figure)}**: {md_parts.inline(value)} — {md_parts.inline(how)}\n")
    out.write("\n")
    out.write(md_parts.table(summary_table(board)))
    for extra in (criteria_table(board), text_metrics_table(board)):
        if extra is not None:
            out.write(md_parts.table(extra))
    for chart, name in chart_files:
        out.write(f"![{md_parts.inline(chart.title)}]({name})\n\n")
    _md_notes(board, out)
    out.write("\n")


def _md_notes(board: Leaderboard, out: TextIO) -> None:
    for note in board.notes:
        out.write(f"- note: {md_parts.inline(note)}\n")
    for failure in board.failures[:20]:
        out.write(f"- failed comparison: {md_parts.inline(failure)}\n")
    if len(board.failures) > 20:
        out.write(f"- ... and {len(board.failures) - 20} more failed comparisons\n")


def render_html(board: Leaderboard, out: TextIO, chart_list: list[Chart] | None = None) -> None:
    """One page: the board, then each judge shown beside it (`board.others`) with its charts."""
    out.write(html_parts.page_head("StoryBench leaderboard"))
    out.write("<h1>StoryBench leaderboard</h1>\n")
    boards = [(board, chart_list or [])] + [(other, charts(other)) for other in board.others]
    for one, one_charts in boards:
        if board.others:
            out.write(f"<h2>Judge {html_parts.esc(one.judge)}</h2>\n")
        _html_board(one, out, one_charts)
    out.write("</body></html>\n")


def _html_board(board: Leaderboard, out: TextIO, chart_list: list[Chart]) -> None:
    esc = html_parts.esc
    out.write('<table class="facts">')
    for key, value in facts(board):
        out.write(f"<tr><th>{esc(key)}</th><td>{esc(value)}</td></tr>")
    out.write('</table>\n<h3>Judge reliability</h3>\n<table class="facts">')
    for figure, value, how in reliability_rows(board.reliability):
        out.write(f'<tr><th>{esc(figure)}</th><td>{esc(value)}<div class="note">{esc(how)}</div></td></tr>')
    out.write("</table>\n")
    out.write(html_parts.table(summary_table(board)))
    for chart in chart_list:
        out.write(f'<figure class="chart">{chart.svg}<figcaption>{esc(chart.title)}</figcaption></figure>\n')
    for extra in (criteria_table(board), text_metrics_table(board)):
        if extra is not None:
            out.write(html_parts.table(extra))
    if board.notes or board.failures:
        out.write("<h3>Notes</h3>\n<ul>")
        for note in board.notes:
            out.write(f"<li>{esc(note)}</li>")
        for failure in board.failures[:50]:
            out.write(f"<li>failed comparison: {esc(failure)}</li>")
        if len(board.failures) > 50:
            out.write(f"<li>... and {len(board.failures) - 50} more failed comparisons</li>")
        out.write("</ul>\n")


def chart_file_names(md_path: Path, chart_list: list[Chart]) -> list[tuple[Chart, str]]:
    """PNG names beside the Markdown file: `<stem>.rating.png`, `<stem>.by-turn.png`."""
    kinds = ["rating" if "rating" in c.title.lower() else "by-turn" for c in chart_list]
    return [(c, f"{md_path.stem}.{kind}.png") for c, kind in zip(chart_list, kinds, strict=True)]
