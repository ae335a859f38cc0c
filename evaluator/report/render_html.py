"""The report as one self-contained HTML file: inline CSS, no scripts, no external assets.

Every value that comes from the store (answers, prompts, errors, model names, rationales, the
run's command) is model output or user input and is escaped with `html.escape` right where it
is written; no stored string ever lands in an attribute or a tag name. A Content-Security-Policy
that allows no script, image or connection is set as well, as a second line of defence.
Transcripts use <details>, so they stay collapsed without JavaScript. Charts are inline SVG
(`evaluator.charts`): markup, not an image, so the policy's `img-src 'none'` stays; their text is
escaped by matplotlib, which writes it.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import TextIO

from evaluator.records import OUTCOMES, EvaluationRecord
from evaluator.report import present
from evaluator.report.model import Conversation, Summary, Turn, usage_chart
from evaluator.report.present import Table

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'none'"
CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5rem auto;max-width:1400px;
padding:0 1rem;color:#1b1f24;background:#fff}
h1{font-size:1.5rem;margin:0 0 .2rem}h2{font-size:1.2rem;margin:2rem 0 .5rem;border-bottom:1px solid #d0d7de}
h3{font-size:1rem;margin:1.2rem 0 .4rem}h4{font-size:.95rem;margin:0 0 .3rem}
nav a{margin-right:1rem}
table{border-collapse:collapse;margin:.3rem 0 .4rem;font-size:13px}
th,td{border:1px solid #d0d7de;padding:.25rem .5rem;vertical-align:top;text-align:left}
th{background:#f6f8fa;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
table.facts th{width:11rem}table.facts td,table.facts th{border:none;padding:.1rem .5rem .1rem 0}
table.facts td,details.conv>summary,h4,.meta{overflow-wrap:anywhere}
.wide{overflow-x:auto}.note{color:#57606a;font-size:12px;margin:0 0 1rem}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
pre{white-space:pre-wrap;overflow-wrap:anywhere;background:#f6f8fa;border:1px solid #d0d7de;
border-radius:4px;padding:.5rem .6rem;margin:.2rem 0 .6rem}
details.conv{border:1px solid #d0d7de;border-radius:6px;margin:.4rem 0;padding:.3rem .6rem}
details.conv>summary{cursor:pointer;font-weight:600}details.conv.bad{border-left:5px solid #cf222e}
article.turn{border-top:1px solid #d0d7de;padding:.6rem 0}
.meta{color:#57606a;font-size:12px;margin:.1rem 0 .4rem}.label{font-weight:600;font-size:12px;color:#57606a}
.badge{display:inline-block;border-radius:10px;padding:0 .5rem;font-size:12px;font-weight:600;
background:#eaeef2;color:#1b1f24}
.b-ok{background:#dafbe1;color:#116329}.b-empty,.b-context_exhausted{background:#fff8c5;color:#7d4e00}
.b-error,.b-other{background:#ffebe9;color:#a40e26}
.failure{border:2px solid #cf222e;background:#ffebe9;color:#82071e;border-radius:4px;padding:.4rem .6rem;
margin:.3rem 0 .5rem;white-space:pre-wrap;overflow-wrap:anywhere}
.noanswer{font-style:italic;color:#82071e}
.judged{background:#f6f8fa;border-radius:4px;padding:.3rem .6rem;margin:.3rem 0}
.judged p{margin:.2rem 0;white-space:pre-wrap;overflow-wrap:anywhere}
figure.chart{margin:.5rem 0 1rem}figure.chart figcaption{color:#57606a;font-size:12px;margin-top:.2rem}
"""


def esc(value: object) -> str:
    """Every stored value goes through here: text, never markup."""
    return html.escape(str(value), quote=True)


def _badge(outcome: str) -> str:
    css = outcome if outcome in OUTCOMES else "other"  # a fixed class, never stored text
    return f'<span class="badge b-{css}">{esc(outcome)}</span>'


def table(t: Table) -> str:
    parts = []
    if t.title:
        parts.append(f"<h3>{esc(t.title)}</h3>")
    parts.append('<div class="wide"><table><thead><tr>')
    for header, numeric in zip(t.headers, t.numeric, strict=True):
        parts.append(f'<th class="n">{esc(header)}</th>' if numeric else f"<th>{esc(header)}</th>")
    parts.append("</tr></thead><tbody>")
    for row in t.rows:
        cells = (
            f'<td class="n">{esc(cell)}</td>' if numeric else f"<td>{esc(cell)}</td>"
            for cell, numeric in zip(row, t.numeric, strict=True)
        )
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table></div>")
    if t.note:
        parts.append(f'<p class="note">{esc(t.note)}</p>')
    return "\n".join(parts) + "\n"


def _facts(summary: Summary) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in present.facts(summary) if v)
    return f'<table class="facts">{rows}</table>\n'


def _judgements(judgements: list[EvaluationRecord], what: str, model_id: str | None = None) -> str:
    if not judgements:
        return ""
    parts = [f'<div class="judged"><div class="label">{esc(what)}</div>']
    for j in judgements:
        parts.append(f"<p><strong>{esc(present.judgement_line(j, model_id))}</strong></p>")
        if j.rationale:
            parts.append(f"<p>{esc(j.rationale)}</p>")
    parts.append("</div>")
    return "\n".join(parts)


def _turn(turn: Turn) -> str:
    name = f" · {esc(turn.turn_name)}" if turn.turn_name else ""
    parts = [
        f'<article class="turn"><h4>Turn {turn.turn_index}{name} {_badge(turn.outcome)}</h4>',
        f'<p class="meta">{esc(" · ".join(present.turn_facts(turn)))}</p>',
    ]
    problem = present.failure(turn)
    if problem:
        parts.append(f'<div class="failure"><strong>{esc(problem)}</strong></div>')
    parts.append(f'<div class="label">user</div><pre>{esc(turn.prompt)}</pre>')
    if turn.answer:
        parts.append(f'<div class="label">answer</div><pre>{esc(turn.answer)}</pre>')
    else:
        parts.append('<p class="noanswer">no answer</p>')
    if turn.raw_answer is not None:
        parts.append(
            "<details><summary>the answer as returned (with its &lt;think&gt; blocks)</summary>"
            f"<pre>{esc(turn.raw_answer)}</pre></details>"
        )
    parts.append(_judgements(turn.judgements, "judgements of this turn", turn.model_id))
    parts.append("</article>")
    return "\n".join(p for p in parts if p)


def _conversation(conv: Conversation) -> str:
    planned = "" if conv.turns_planned is None else f"/{conv.turns_planned}"
    bad = [t for t in conv.turns if t.outcome != "ok"]
    title = (
        f"{conv.model} · {conv.sequence} · run {conv.run_index} — {len(conv.turns)}{planned} turns: "
        f"{present.outcome_counts(conv.turns)}"
    )
    flag = f' <span class="badge b-error">{len(bad)} not ok</span>' if bad else ""
    seed = "" if conv.seed is None else f" · seed {conv.seed}"
    ending = present.unplayed(conv)
    parts = [
        f'<details class="conv{" bad" if bad else ""}"><summary>{esc(title)}{flag}</summary>',
        f'<p class="meta">experiment {esc(conv.experiment_key)}{esc(seed)}</p>',
        _judgements(conv.judgements, "judgements of the whole conversation", _model_id(conv)),
        f'<div class="label">system</div><pre>{esc(conv.system)}</pre>' if conv.system else "",
        *(_turn(t) for t in conv.turns),
        f'<p class="note">{esc(ending)}</p>' if ending else "",
        "</details>\n",
    ]
    return "\n".join(p for p in parts if p)


def _usage(summary: Summary) -> str:
    chart = usage_chart(summary.usage)
    if chart is None:
        return '<p class="note">No ok turn reports tokens or latency.</p>\n'
    caption = f"{chart.title}: means over ok turns of every sequence and run, turns counted from 1."
    return f'<figure class="chart">\n{chart.svg}<figcaption>{esc(caption)}</figcaption></figure>\n'


def page_head(title: str) -> str:
    """The head of every page StoryBench writes (report, leaderboard): no scripts allowed by the
    Content-Security-Policy, the styles inline. `title` is escaped."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style></head>\n<body>\n"
    )


def render_html(summary: Summary, conversations: Iterable[Conversation] | None, out: TextIO) -> None:
    """Write the report; `conversations` None leaves the transcripts out."""
    run_id = summary.header.run_id
    out.write(page_head(f"StoryBench report: {run_id}"))
    out.write(
        f"<h1>StoryBench report</h1>\n<p>run <code>{esc(run_id)}</code></p>\n"
        '<nav><a href="#summary">summary</a><a href="#scores">judge scores</a>'
        '<a href="#turns">turn by turn</a><a href="#usage">tokens and latency</a>'
        '<a href="#transcripts">transcripts</a></nav>\n'
        '<h2 id="run">Run</h2>\n'
    )
    out.write(_facts(summary))
    models = present.models_table(summary)
    if models is not None:
        out.write('<h2 id="models">Models</h2>\n' + table(models))
    summary_html = table(present.report_summary_table(summary))
    out.write('<h2 id="summary">Summary per model and sequence</h2>\n' + summary_html)
    out.write('<h2 id="scores">Judge scores</h2>\n')
    scores = present.score_tables(summary)
    if scores:
        out.write("".join(table(t) for t in scores))
    else:
        out.write('<p class="note">No judgements are stored for this run\'s turns.</p>\n')
    out.write('<h2 id="turns">Turn by turn</h2>\n')
    out.write(
        "".join(table(t) for t in present.turn_tables(summary)) or '<p class="note">No turns stored.</p>\n'
    )
    metrics = present.metrics_table(summary)
    if metrics is not None:
        out.write(table(metrics))
    out.write('<h2 id="usage">Tokens and latency by turn</h2>\n' + _usage(summary))
    out.write('<h2 id="transcripts">Transcripts</h2>\n')
    if conversations is None:
        out.write('<p class="note">Left out (--no-transcripts).</p>\n')
    else:
        written = 0
        for conv in conversations:
            out.write(_conversation(conv))
            written += 1
        if not written:
            out.write('<p class="note">No turns stored for this run.</p>\n')
    out.write("</body></html>\n")


def _model_id(conv: Conversation) -> str | None:
    """The evaluated model's id, for the self-judging flag of whole-conversation judgements."""
    return conv.turns[0].model_id if conv.turns else None
