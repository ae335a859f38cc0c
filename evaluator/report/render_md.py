"""The report as GitHub-flavoured Markdown, for pasting into an issue or a pull request.

GitHub renders HTML inside Markdown, so stored text is escaped twice over: inline text (table
cells, error messages, rationales) has HTML's special characters turned into entities and
Markdown's punctuation backslash-escaped, with line breaks folded into spaces; prompts and
answers go into fenced code blocks whose fence is longer than any run of backticks in the text,
so nothing inside can close it or be read as Markdown or HTML. Transcripts sit in <details>
blocks (GitHub shows them collapsed); their <summary> lines are HTML-escaped. The chart of
tokens and latency by turn is a PNG file beside the report (`output.write_report` writes it),
linked by its file name.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Iterable
from typing import TextIO

from evaluator.records import EvaluationRecord
from evaluator.report import present
from evaluator.report.model import Conversation, Summary, Turn
from evaluator.report.present import Table

# Inline text never starts a line here (it follows "| ", "- **label**: ", "**Turn", ...), so the
# line-start markers (#, -, +, 1.) need no escape; these act anywhere. `$` starts math on GitHub.
_PUNCTUATION = re.compile(r"([\\`*_\[\]|~$])")
_BACKTICKS = re.compile(r"`+")


def inline(value: object) -> str:
    """Stored text as one line of literal Markdown text."""
    flat = " ".join(str(value).split())
    return html.escape(_PUNCTUATION.sub(r"\\\1", flat), quote=False)


def fenced(text: str) -> str:
    """A code block that `text` cannot break out of."""
    longest = max((len(m) for m in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text.rstrip(chr(10))}\n{fence}\n"


def table(t: Table) -> str:
    lines = []
    if t.title:
        lines += [f"### {inline(t.title)}", ""]
    lines.append("| " + " | ".join(inline(h) for h in t.headers) + " |")
    lines.append("|" + "|".join("---:" if n else "---" for n in t.numeric) + "|")
    lines += ["| " + " | ".join(inline(c) for c in row) + " |" for row in t.rows]
    if t.note:
        lines += ["", f"*{inline(t.note)}*"]
    return "\n".join(lines) + "\n\n"


def _judgements(judgements: list[EvaluationRecord], what: str, model_id: str | None = None) -> str:
    if not judgements:
        return ""
    lines = [f"{inline(what)}:", ""]
    for j in judgements:
        line = f"- **{inline(present.judgement_line(j, model_id))}**"
        if j.rationale:
            line += f" — {inline(j.rationale)}"
        lines.append(line)
    return "\n".join(lines) + "\n\n"


def _turn(turn: Turn) -> str:
    name = f" · {inline(turn.turn_name)}" if turn.turn_name else ""
    marker = "" if turn.outcome == "ok" else "⚠ "
    facts = " · ".join(inline(f) for f in present.turn_facts(turn))
    parts = [f"**Turn {turn.turn_index}{name}** · {marker}**{inline(turn.outcome)}** · {facts}\n\n"]
    problem = present.failure(turn)
    if problem:
        parts.append(f"> ⚠ **{inline(problem)}**\n\n")
    parts.append("User:\n\n" + fenced(turn.prompt) + "\n")
    if turn.answer:
        parts.append("Answer:\n\n" + fenced(turn.answer) + "\n")
    else:
        parts.append("*no answer*\n\n")
    if turn.raw_answer is not None:
        parts.append(
            "<details><summary>the answer as returned (with its &lt;think&gt; blocks)</summary>\n\n"
            + fenced(turn.raw_answer)
            + "\n</details>\n\n"
        )
    parts.append(_judgements(turn.judgements, "Judgements of this turn", turn.model_id))
    return "".join(parts)


def _conversation(conv: Conversation) -> str:
    planned = "" if conv.turns_planned is None else f"/{conv.turns_planned}"
    bad = sum(t.outcome != "ok" for t in conv.turns)
    title = (
        f"{conv.model} · {conv.sequence} · run {conv.run_index} — {len(conv.turns)}{planned} turns: "
        f"{present.outcome_counts(conv.turns)}" + (f" — ⚠ {bad} not ok" if bad else "")
    )
    seed = "" if conv.seed is None else f" · seed {conv.seed}"
    ending = present.unplayed(conv)
    parts = [
        f"<details><summary>{html.escape(title)}</summary>\n\n",
        f"*experiment {inline(conv.experiment_key)}{seed}*\n\n",
        _judgements(conv.judgements, "Judgements of the whole conversation", _model_id(conv)),
        "System:\n\n" + fenced(conv.system) + "\n" if conv.system else "",
        *(_turn(t) for t in conv.turns),
        f"*{inline(ending)}*\n\n" if ending else "",
        "</details>\n\n",
    ]
    return "".join(parts)


def _usage(summary: Summary, usage_png: str | None) -> str:
    if not any(p.completion_tokens_mean is not None or p.latency_mean is not None for p in summary.usage):
        return "*No ok turn reports tokens or latency.*\n\n"
    if usage_png is None:
        return "*The chart is in the HTML report, and in the PNG file written beside a Markdown report.*\n\n"
    alt = "Completion tokens and latency by turn"
    note = "Means over ok turns of every sequence and run, turns counted from 1."
    return f"![{alt}]({urllib.parse.quote(usage_png)})\n\n*{note}*\n\n"


def render_md(
    summary: Summary,
    conversations: Iterable[Conversation] | None,
    out: TextIO,
    *,
    usage_png: str | None = None,
) -> None:
    """Write the report; `conversations` None leaves the transcripts out. `usage_png` is the
    file name (beside the report) of the tokens-and-latency chart, None when none was written."""
    out.write(f"# StoryBench report: run {inline(summary.header.run_id)}\n\n")
    out.write("".join(f"- **{inline(k)}**: {inline(v)}\n" for k, v in present.facts(summary) if v) + "\n")
    models = present.models_table(summary)
    if models is not None:
        out.write("## Models\n\n" + table(models))
    out.write("## Summary per model and sequence\n\n" + table(present.report_summary_table(summary)))
    out.write("## Judge scores\n\n")
    scores = present.score_tables(summary)
    out.write("".join(table(t) for t in scores) or "*No judgements are stored for this run's turns.*\n\n")
    out.write("## Turn by turn\n\n")
    out.write("".join(table(t) for t in present.turn_tables(summary)) or "*No turns stored.*\n\n")
    metrics = present.metrics_table(summary)
    if metrics is not None:
        out.write(table(metrics))
    out.write("## Tokens and latency by turn\n\n" + _usage(summary, usage_png))
    out.write("## Transcripts\n\n")
    if conversations is None:
        out.write("*Left out (--no-transcripts).*\n")
        return
    written = 0
    for conv in conversations:
        out.write(_conversation(conv))
        written += 1
    if not written:
        out.write("*No turns stored for this run.*\n")


def _model_id(conv: Conversation) -> str | None:
    """The evaluated model's id, for the self-judging flag of whole-conversation judgements."""
    return conv.turns[0].model_id if conv.turns else None
