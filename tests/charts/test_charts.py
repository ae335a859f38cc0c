"""evaluator.charts on its own: valid, inline-ready SVG with the labels as escaped text, the same
bytes for the same input, readable with 20 models, "no data" for empty input, and PNG files."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from evaluator.charts import (
    MAX_LABEL,
    NO_DATA,
    Chart,
    RatingBar,
    TurnPoint,
    TurnSeries,
    ratings_chart,
    score_by_turn_chart,
    usage_by_turn_chart,
)
from tests.charts.conftest import HOSTILE_MODEL, model_names, rating_bars, score_series, svg_problems

SVG_NS = "{http://www.w3.org/2000/svg}"


def texts(chart: Chart) -> list[str]:
    root = ET.fromstring(chart.svg)
    return ["".join(t.itertext()) for t in root.iter(f"{SVG_NS}text")]


def text_y(chart: Chart) -> dict[str, float]:
    root = ET.fromstring(chart.svg)
    return {"".join(t.itertext()): float(t.attrib["y"]) for t in root.iter(f"{SVG_NS}text")}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def usage_series(names: list[str]) -> tuple[list[TurnSeries], list[TurnSeries]]:
    tokens = [
        TurnSeries(n, [TurnPoint(t, 100.0 * t + i, None, None, 3) for t in (1, 2, 3)])
        for i, n in enumerate(names)
    ]
    latency = [
        TurnSeries(n, [TurnPoint(t, 1.5 * t + i, None, None, 3) for t in (1, 2, 3)])
        for i, n in enumerate(names)
    ]
    return tokens, latency


def all_charts(names: list[str]) -> list[Chart]:
    return [
        ratings_chart(rating_bars(names)),
        score_by_turn_chart(score_series(names), scale=(1, 10)),
        usage_by_turn_chart(*usage_series(names)),
    ]


@pytest.mark.parametrize("n", [1, 20])
def test_svg_is_inline_ready_xml_with_every_model_named(n: int) -> None:
    names = model_names(n)
    for chart in all_charts(names):
        assert chart.svg.startswith("<svg ") and chart.svg.rstrip().endswith("</svg>")
        assert "<?xml" not in chart.svg and "<!DOCTYPE" not in chart.svg
        root = ET.fromstring(chart.svg)  # well-formed XML, SVG namespace
        assert root.tag == f"{SVG_NS}svg"
        assert "width" not in root.attrib and "height" not in root.attrib
        style = root.attrib["style"]
        assert "width:100%" in style and "height:auto" in style and "max-width:720px" in style
        assert len(root.attrib["viewBox"].split()) == 4
        assert root.attrib["aria-label"] == chart.title
        assert set(names) <= set(texts(chart)), chart.title  # text stays text: one <text> per name
        assert chart.title in texts(chart)
        assert svg_problems(chart.svg) == []  # no <style>, script or outside link


def test_ratings_are_sorted_best_first_and_the_chart_grows_with_models(tmp_path: Path) -> None:
    bars = [
        RatingBar("low", 900, 850, 950),
        RatingBar("top", 1150, 1100, 1200),
        RatingBar("mid", 1000, 960, 1040),
    ]
    y = text_y(ratings_chart(bars))
    assert y["top"] < y["mid"] < y["low"]  # SVG y grows downwards: the best model is the top row
    small, large = ratings_chart(bars), ratings_chart(rating_bars(model_names(20)))
    small.write_png(tmp_path / "small.png")
    large.write_png(tmp_path / "large.png")
    (w_small, h_small), (w_large, h_large) = (
        png_size(tmp_path / "small.png"),
        png_size(tmp_path / "large.png"),
    )
    assert w_small == w_large and h_large > 3 * h_small  # 20 rows keep their height each
    rows = sorted(v for k, v in text_y(large).items() if k.startswith("model-"))
    assert min(b - a for a, b in zip(rows, rows[1:], strict=False)) > 14  # ~1.5 lines of 10px text


def test_same_input_gives_the_same_bytes_even_from_threads() -> None:
    names = model_names(20)
    first = [c.svg for c in all_charts(names)]
    assert [c.svg for c in all_charts(names)] == first
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda _: [c.svg for c in all_charts(names)], range(4)))
    assert all(svgs == first for svgs in parallel)
    assert ratings_chart(rating_bars(names, seed=8)).svg != first[0]


def test_model_names_are_escaped_text_never_markup_or_math() -> None:
    bars = [RatingBar(HOSTILE_MODEL, 1010, 990, 1030), RatingBar("b", 990, 970, 1010)]
    series = [TurnSeries(HOSTILE_MODEL, [TurnPoint(1, 5, 4, 6, 3), TurnPoint(2, 4, None, None, 1)])]
    for chart in (
        ratings_chart(bars),
        score_by_turn_chart(series, scale=None),
        usage_by_turn_chart(series, series),
    ):
        assert HOSTILE_MODEL in texts(chart)  # shown as written: no mathtext, nothing dropped
        assert "<script" not in chart.svg and "&lt;script&gt;" in chart.svg
        assert svg_problems(chart.svg) == []


def test_long_names_are_shortened_on_the_chart() -> None:
    name = "organisation/" + "x" * 80
    shown = [
        t for t in texts(ratings_chart([RatingBar(name, 1000, 990, 1010)])) if t.startswith("organisation")
    ]
    assert shown == [name[: MAX_LABEL - 1] + "…"]


def test_the_rubric_scale_sets_the_y_range() -> None:
    series = [TurnSeries("m", [TurnPoint(1, 3.2, 3.0, 3.4, 3), TurnPoint(2, 3.6, 3.3, 3.9, 3)])]
    assert {"1", "10"} <= set(texts(score_by_turn_chart(series, scale=(1, 10))))
    assert "10" not in texts(score_by_turn_chart(series, scale=None))
    assert {"1", "2"} <= set(texts(score_by_turn_chart(series, scale=None)))  # whole turns on x


def test_usage_chart_has_both_panels_and_one_entry_per_model() -> None:
    tokens, latency = usage_series(["a", "b"])
    chart = usage_by_turn_chart(tokens, latency[:1])  # a model with tokens but no latency is fine
    shown = texts(chart)
    assert {"completion tokens", "latency (s)", "turn"} <= set(shown)
    assert shown.count("a") == shown.count("b") == 1  # one shared legend


@pytest.mark.parametrize(
    "chart",
    [
        lambda: ratings_chart([]),
        lambda: score_by_turn_chart([], scale=(1, 10)),
        lambda: score_by_turn_chart([TurnSeries("m", [])], scale=None),
        lambda: usage_by_turn_chart([], []),
    ],
)
def test_empty_input_draws_no_data(chart, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    drawn: Chart = chart()
    assert NO_DATA in texts(drawn)
    drawn.write_png(tmp_path / "empty.png")
    assert png_size(tmp_path / "empty.png")[0] > 0


def test_png_is_written_whole_and_replaces_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "chart.png"
    target.write_bytes(b"old")
    ratings_chart(rating_bars(model_names(3))).write_png(target)
    width, height = png_size(target)
    assert (width, height) == (825, 209)  # 7.5 x (1.0 + 0.3 x 3 rows) inches at 110 dpi
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]  # no temporary file left
    with pytest.raises(OSError):
        ratings_chart([]).write_png(tmp_path / "missing-folder" / "x.png")
