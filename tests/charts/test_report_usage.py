"""The run report's "tokens and latency by turn" chart: the numbers behind it (ok turns only),
inline SVG in the HTML with the model names as escaped text, a PNG beside the Markdown."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from evaluator.report.gather import conversations, summarize
from evaluator.report.output import ReportError, usage_png_path, write_report
from evaluator.report.render_html import render_html
from evaluator.report.render_md import render_md
from evaluator.store import Store
from tests.charts.conftest import HOSTILE_MODEL, SVG_BLOCK, seed_usage_run, svg_problems
from tests.support.memory_store import memory_store

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; form-action 'none'"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def store() -> Store:
    return memory_store()


class Outline(HTMLParser):
    """Start tags outside any <svg>, and the text of each <h2>."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.h2: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_h2 = tag == "h2"
        if tag == "h2":
            self.h2.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.h2[-1] += data


def html_of(store: Store, run_id: str) -> str:
    run = store.get_run(run_id)
    assert run is not None
    out = io.StringIO()
    render_html(summarize(store, run), conversations(store, run), out)
    return out.getvalue()


def test_usage_points_are_means_of_ok_turns_per_model_and_turn(store: Store) -> None:
    run = seed_usage_run(store, ["m1", "m2"])
    usage = summarize(store, run).usage
    assert [(p.model, p.turn_index, p.ok_turns) for p in usage] == [
        ("m1", 0, 2), ("m1", 1, 2), ("m1", 2, 1), ("m2", 0, 2), ("m2", 1, 2), ("m2", 2, 1),
    ]  # fmt: skip
    by_key = {(p.model, p.turn_index): p for p in usage}
    assert by_key[("m2", 1)].completion_tokens_mean == 25.0  # 10 x (turn index + 1) + 5 x position
    assert by_key[("m2", 0)].latency_mean == 2.0  # 1 + turn index + model position
    assert by_key[("m1", 2)].latency_mean == 3.0  # the error turn of run 1 does not count


def test_html_section_holds_the_chart_with_escaped_model_names(store: Store) -> None:
    run = seed_usage_run(store, [HOSTILE_MODEL, "m2"])
    document = html_of(store, run.id)
    charts = SVG_BLOCK.findall(document)
    assert len(charts) == 1 and svg_problems(charts[0]) == []
    names = ["".join(t.itertext()) for t in ET.fromstring(charts[0]).iter("{http://www.w3.org/2000/svg}text")]
    assert HOSTILE_MODEL in names and "m2" in names  # one legend entry each, as text
    assert "&lt;/svg&gt;&lt;script&gt;1&lt;/script&gt;" in charts[0]
    outline = Outline()
    outline.feed(SVG_BLOCK.sub("", document))
    assert "Tokens and latency by turn" in outline.h2
    assert "script" not in outline.tags and document.count("<svg") == 1
    assert re.search(
        r'<h2 id="usage">Tokens and latency by turn</h2>\n<figure class="chart">\n<svg ', document
    )
    assert re.search(
        r"</svg>\n<figcaption>Completion tokens and latency by turn: [^<]*</figcaption></figure>", document
    )
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in document  # unchanged


def test_markdown_report_links_a_png_written_beside_it(store: Store, tmp_path: Path) -> None:
    run = seed_usage_run(store, ["m1", "m2"])
    out = tmp_path / "my report.md"
    assert write_report(store, run, out, "md") == out
    png = usage_png_path(out)
    assert png == tmp_path / "my report.usage.png" and png.read_bytes()[:8] == PNG
    text = out.read_text(encoding="utf-8")
    assert (
        "## Tokens and latency by turn\n\n![Completion tokens and latency by turn](my%20report.usage.png)\n"
        in text
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my report.md", "my report.usage.png"]
    html_out = tmp_path / "r.html"
    write_report(store, run, html_out, "html")
    assert not usage_png_path(html_out).exists()  # the HTML holds its chart inline


def test_no_ok_turn_means_a_note_and_no_png(store: Store, tmp_path: Path) -> None:
    run = seed_usage_run(store, ["m1"])
    store.db["responses"].update_many({}, {"$set": {"outcome": "error"}})
    out = tmp_path / "r.md"
    write_report(store, run, out, "md")
    assert "*No ok turn reports tokens or latency.*" in out.read_text(encoding="utf-8")
    assert not usage_png_path(out).exists()
    assert "<svg" not in html_of(store, run.id)


def test_markdown_rendered_to_a_stream_points_to_the_html(store: Store) -> None:
    run = seed_usage_run(store, ["m1"])
    out = io.StringIO()
    render_md(summarize(store, run), None, out)
    assert "## Tokens and latency by turn\n\n*The chart is in the HTML report" in out.getvalue()


def test_an_unwritable_png_is_a_report_error(store: Store, tmp_path: Path) -> None:
    run = seed_usage_run(store, ["m1"])
    out = tmp_path / "r.md"
    usage_png_path(out).mkdir()  # a folder in the way of the PNG
    with pytest.raises(ReportError, match="r.usage.png"):
        write_report(store, run, out, "md")
    assert not out.exists()
