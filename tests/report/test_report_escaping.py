"""Everything in the store is untrusted text: model answers, prompts, errors, judge rationales,
even model names and the stored command. In a report it must stay text: no element, attribute
or Markdown construct may come from data. The answers are the reliability stand-in's (each ends
in a script tag and console markup, RELIABILITY.md) with worse added."""

from __future__ import annotations

import html
import io
import re
from html.parser import HTMLParser

import pytest

from evaluator.records import sequence_run_id
from evaluator.report.gather import conversations, summarize
from evaluator.report.render_html import render_html
from evaluator.report.render_md import fenced, inline, render_md
from evaluator.store import Store
from tests.charts.conftest import SVG_BLOCK, svg_problems
from tests.reliability.standin import MARKUP, expected_answer
from tests.report.conftest import exp_key, judgement, run_record, snapshot, turn_record
from tests.support.documents import replaced

pytestmark = pytest.mark.integration

HOSTILE = (
    '<script>alert(1)</script></details></pre>"><img src=x onerror=alert(2)>'
    "<iframe src=javascript:alert(3)></iframe><style>body{display:none}</style>"
    "&lt;script&gt; ``` ```` [click](javascript:alert(4)) ![x](http://evil.test/x.png) | $x$ \\"
)
ANSWER = expected_answer([{"role": "user", "content": "Write the premise."}]) + " " + HOSTILE + " " + MARKUP
TAGS_OF_OURS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "h4", "p", "code", "nav",
    "a", "table", "thead", "tbody", "tr", "th", "td", "div", "details", "summary", "article", "span",
    "pre", "strong", "figure", "figcaption",
}  # fmt: skip


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.starts: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.ends: list[str] = []
        self.style_blocks: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, attrs))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self.ends.append(tag)
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.style_blocks.append(data)


def hostile_run(store: Store) -> str:
    run_id = "20261128-140000-evil00"
    config = snapshot()
    config["sequences"][0]["system"] = HOSTILE
    store.create_run(
        run_record(run_id, command=f"storybench-eval run {HOSTILE}", message=HOSTILE, config_snapshot=config)
    )
    for i, outcome in enumerate(["ok", "ok", "error"]):
        rec = turn_record("m1", "lighthouse", 0, i, outcome)
        rec = replaced(
            rec,
            prompt=f"Write the premise. {HOSTILE}",
            response_text=ANSWER if outcome == "ok" else "",
            response_raw=f"<think>{HOSTILE}</think>{ANSWER}" if outcome == "ok" else "",
            turn_name=HOSTILE if i == 1 else rec.turn_name,
            error=HOSTILE if outcome == "error" else None,
            finish_reason=HOSTILE if i == 1 else rec.finish_reason,
        )
        store.save_response(rec)
        store.save_evaluation(
            judgement(rec.id, f"judge {HOSTILE}", f"v{HOSTILE}", {HOSTILE: 3, "voice": HOSTILE})
        )
        store.save_evaluation(replaced(judgement(rec.id, "judge-a", "v1", {"voice": 4}), rationale=HOSTILE))
    conv = sequence_run_id(exp_key("m1", "lighthouse"), "m1", "lighthouse", 0)
    store.save_evaluation(
        replaced(judgement(conv, "judge-a", "arc", {"arc": 1}, "sequence"), rationale=HOSTILE)
    )
    return run_id


def render(store: Store, run_id: str, renderer) -> str:  # type: ignore[no-untyped-def]
    run = store.get_run(run_id)
    assert run is not None
    out = io.StringIO()
    renderer(summarize(store, run), conversations(store, run), out)
    return out.getvalue()


def test_stored_markup_is_inert_in_html(store: Store) -> None:
    full = render(store, hostile_run(store), render_html)
    # The one chart (tokens and latency by turn) is checked on its own: drawing elements only.
    charts = SVG_BLOCK.findall(full)
    assert len(charts) == 1 and svg_problems(charts[0]) == []
    document = SVG_BLOCK.sub("", full)
    parsed = Elements()
    parsed.feed(document)
    parsed.close()
    tags = [tag for tag, _ in parsed.starts]
    assert {"script", "img", "iframe"}.isdisjoint(tags)
    assert set(tags) <= TAGS_OF_OURS
    assert tags.count("style") == 1 and len(parsed.style_blocks) == 1  # our own CSS only
    for tag, attrs in parsed.starts:
        names = {name for name, _ in attrs}
        assert names <= {"lang", "charset", "http-equiv", "content", "name", "class", "href", "id"}, tag
        assert all("alert" not in (value or "") and "javascript" not in (value or "") for _, value in attrs)
    # Every <details> opened is closed by us: the hostile "</details>" did not close one early.
    assert tags.count("details") == parsed.ends.count("details") == 1 + 2  # the conversation + 2 raw answers
    assert tags.count("pre") == parsed.ends.count("pre")
    # The text is all there, escaped, so a reader sees exactly what the model wrote.
    assert html.escape(ANSWER) in document
    assert document.count(html.escape(HOSTILE)) >= 8  # system, prompts, error, names, rationales, ...
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert "<script" not in document.lower()
    assert re.search(r"<img|<iframe", document, re.I) is None
    assert "script-src" not in document and "default-src 'none'" in document  # CSP: no scripts at all


def test_stored_markup_is_literal_in_markdown(store: Store) -> None:
    document = render(store, hostile_run(store), render_md)
    # Outside code fences, no raw "<" from data survives: only our own <details>/<summary> lines.
    outside = re.sub(r"(?ms)^(`{3,})text\n.*?^\1\n", "", document)
    for tag in re.findall(r"<([a-zA-Z/][^ >]*)", outside):
        assert tag in ("details", "/details", "summary", "/summary"), tag
    assert outside.count("<details>") == outside.count("</details>") == 3
    assert "[click](javascript" not in outside and "![x](" not in outside
    # Inside fences the text is verbatim, and the fence is longer than any backtick run in it.
    assert "`````text\n" + ANSWER + "\n`````" in document
    assert "\\$x\\$" in outside  # no math


def test_inline_and_fence_helpers() -> None:
    assert (
        inline("a|b <i>x</i>\n*y* `z` [l](u) & $1")
        == "a\\|b &lt;i&gt;x&lt;/i&gt; \\*y\\* \\`z\\` \\[l\\](u) &amp; \\$1"
    )
    assert fenced("no ticks") == "```text\nno ticks\n```\n"
    assert fenced("a ```` b").startswith("`````text\n")
