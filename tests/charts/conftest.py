"""Chart fixtures: deterministic leaderboard-like data for 20 models, a small run in a store for
the report's usage chart, and the check that an inline SVG carries no active content."""

from __future__ import annotations

import random
import re
from html.parser import HTMLParser
from typing import Any

from evaluator.charts import RatingBar, TurnPoint, TurnSeries
from evaluator.records import ResponseRecord, RunRecord
from evaluator.store import Store
from tests.report.conftest import exp_key, run_record, turn_record

HOSTILE_MODEL = 'a<b&c </svg><script>1</script> $\\bad{$ "'  # short: shown whole
SVG_BLOCK = re.compile(r"<svg\b.*?</svg>", re.S)
SVG_TAGS = {"svg", "g", "path", "defs", "clippath", "use", "text", "rect", "polyline", "line"}
SVG_ATTRS = {
    "xmlns", "xmlns:xlink", "version", "viewbox", "role", "aria-label", "style", "stroke-linejoin",
    "stroke-linecap", "d", "id", "x", "y", "width", "height", "transform", "clip-path", "xlink:href",
    "points", "x1", "x2", "y1", "y2",
}  # fmt: skip


def model_names(n: int) -> list[str]:
    return [f"model-{i:02d}" for i in range(n)]


def rating_bars(names: list[str], seed: int = 7) -> list[RatingBar]:
    rng = random.Random(seed)
    bars = []
    for name in names:
        rating = 1000 + rng.gauss(0, 120)
        bars.append(RatingBar(name, rating, rating - rng.uniform(20, 80), rating + rng.uniform(20, 80)))
    return bars


def score_series(names: list[str], turns: int = 5, seed: int = 7) -> list[TurnSeries]:
    """Means that drift down over turns, with bands, inside a 1-10 rubric scale."""
    rng = random.Random(seed)
    out = []
    for name in names:
        base = rng.uniform(5, 8)
        points = []
        for t in range(1, turns + 1):
            m = base - 0.3 * t + rng.gauss(0, 0.3)
            points.append(TurnPoint(t, m, m - 0.6, m + 0.6, 3))
        out.append(TurnSeries(name, points))
    return out


class SvgElements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.starts: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.texts: list[str] = []
        self._in_text = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.starts.append((tag, attrs))
        self._in_text = tag == "text"

    def handle_endtag(self, tag: str) -> None:
        self._in_text = False

    def handle_data(self, data: str) -> None:
        if self._in_text:
            self.texts.append(data)


def parse_svg(svg: str) -> SvgElements:
    """An inline SVG as an HTML parser reads it (the way a browser meets it in our pages)."""
    parsed = SvgElements()
    parsed.feed(svg)
    parsed.close()
    return parsed


def svg_problems(svg: str) -> list[str]:
    """What would make an inline SVG active or able to restyle the page: anything but drawing
    elements, event handlers, links outside the SVG itself, <style>, <script>, <foreignObject>."""
    problems = []
    for tag, attrs in parse_svg(svg).starts:
        if tag not in SVG_TAGS:
            problems.append(f"element <{tag}>")
        for name, value in attrs:
            if name not in SVG_ATTRS:
                problems.append(f"attribute {name} on <{tag}>")
            if name == "xlink:href" and not (value or "").startswith("#"):
                problems.append(f"link {value!r}")
            if "javascript" in (value or "").lower() or "url(http" in (value or ""):
                problems.append(f"{name}={value!r}")
    return problems


def seed_usage_run(store: Store, models: list[str], run_id: str = "20261128-150000-chart0") -> RunRecord:
    """A run of `models` x one sequence x two runs x three turns. Completion tokens are
    10 x (turn index + 1) + 5 x model position, latency 1 + turn index + model position (s);
    the last turn of the second run is an error (its numbers must not count)."""
    run = run_record(
        run_id,
        models=list(models),
        sequences=["lighthouse"],
        experiments=[
            {
                "model": m,
                "sequence": "lighthouse",
                "experiment_key": exp_key(m, "lighthouse"),
                "generation": 1,
            }
            for m in models
        ],
        planned_turns=6 * len(models),
    )
    store.create_run(run)
    for position, model in enumerate(models):
        for run_index in (0, 1):
            for turn_index in range(3):
                outcome = "error" if (run_index, turn_index) == (1, 2) else "ok"
                changes: dict[str, Any] = {"run_id": run_id}
                if outcome == "ok":
                    changes["latency_s"] = 1.0 + turn_index + position
                    changes["completion_tokens"] = 10 * (turn_index + 1) + 5 * position
                record: ResponseRecord = turn_record(
                    model, "lighthouse", run_index, turn_index, outcome, **changes
                )
                store.save_response(record)
    return run
