"""Static charts of the leaderboard and the run report: inline SVG for HTML, PNG beside Markdown.

A leaf module (standard library, numpy and matplotlib only) so that any renderer can use it
without pulling in the store or the statistics. Figures are built with matplotlib's object API
(`matplotlib.figure.Figure`, never pyplot): no global figure registry, nothing to close, and
no GUI backend. matplotlib reads a few settings from its global `rcParams` while it draws (how
text is written, the salt of element ids); they are applied with `rc_context` under one lock,
so two threads rendering charts at once never see each other's settings.

The SVG is made for inlining in our reports:
- text stays text (`svg.fonttype = "none"`): small, searchable, and the browser picks the font.
  matplotlib escapes it as XML character data, so a model name is never markup; mathtext is off
  (`text.parse_math`), so a name with `$` in it is shown as written rather than parsed;
- ids are salted with a fixed string, so the same input gives byte-identical output;
- the XML prolog, DOCTYPE, metadata and the embedded `<style>` element are removed (a `<style>`
  inside inline SVG would style the whole page); the root gets a width of 100% up to the
  figure's natural width, `height:auto` and keeps its viewBox, so it scales down on a narrow
  window instead of overflowing it, and does not blow up on a wide one.
"""

from __future__ import annotations

import io
import math
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType  # matplotlib 3.11+; only the type checker needs it

PNG_DPI = 110
WIDTH_IN = 7.5  # figure width in inches: 720 px at 96 px per inch, the natural SVG width
NO_DATA = "no data"
MAX_LABEL = 40  # longer names are shortened on the chart (the tables beside it show them whole)

_RC: dict[RcKeyType, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "storybench-charts",
    "text.parse_math": False,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#d0d7de",
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "legend.fontsize": 9,
}
_METADATA: dict[str, Any] = {"Date": None, "Creator": None, "Format": None, "Type": None}
_LOCK = threading.Lock()
_PROLOG = re.compile(r"\A.*?(?=<svg\b)", re.S)
_STYLE = re.compile(r"<defs>\s*<style[^>]*>[^<]*</style>\s*</defs>\s*")
_GROUP_ID = re.compile(r'<g id="[^"]*">')  # matplotlib's group ids; nothing refers to them
_ROOT = re.compile(r'<svg ([^>]*?)width="([\d.]+)pt" height="([\d.]+)pt"([^>]*)>')
# Ten distinct colours, then the same colours dashed, then dotted: 30 series stay tellable.
_COLORS = [matplotlib.colormaps["tab10"](i) for i in range(10)]
_STYLES = ["-", "--", ":"]
_MARKERS = ["o", "s", "^", "D", "v"]


@dataclass(frozen=True)
class RatingBar:
    label: str  # model name: user text, escaped by matplotlib in the SVG
    rating: float
    lo: float
    hi: float


@dataclass(frozen=True)
class TurnPoint:
    turn: int  # 1-based turn number
    mean: float
    lo: float | None  # None: no interval (e.g. one conversation)
    hi: float | None
    n: int  # conversations behind the point


@dataclass(frozen=True)
class TurnSeries:
    label: str
    points: list[TurnPoint]


@dataclass(frozen=True)
class Chart:
    """A rendered chart: its SVG for inlining, and the figure to write the same picture as PNG."""

    title: str  # plain text: alt text or figure caption
    svg: str  # inline-ready <svg ...>...</svg>
    _figure: Figure = field(repr=False, compare=False)

    def write_png(self, path: Path) -> None:
        """The same figure as a PNG at `path`, written to a temporary file in the same folder
        and renamed into place, so a reader never sees half an image."""
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh, _settings():
                self._figure.savefig(fh, format="png", dpi=PNG_DPI)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@contextmanager
def _settings() -> Iterator[None]:
    with _LOCK, matplotlib.rc_context(_RC):
        yield


def _inline_svg(figure: Figure, title: str) -> str:
    buf = io.StringIO()
    figure.savefig(buf, format="svg", metadata=_METADATA)
    svg = _PROLOG.sub("", buf.getvalue(), count=1)
    svg = _STYLE.sub("", svg, count=1)
    svg = _GROUP_ID.sub("<g>", svg)

    def root(m: re.Match[str]) -> str:
        width_px = float(m.group(2)) * 96 / 72
        return (
            f'<svg {m.group(1)}role="img" aria-label="{escape(title, quote=True)}" '
            f'style="width:100%;max-width:{width_px:.0f}px;height:auto;display:block" '
            f'stroke-linejoin="round" stroke-linecap="butt"{m.group(4)}>'
        )

    svg, found = _ROOT.subn(root, svg, count=1)
    if not found:  # matplotlib's output changed shape: better to fail here than overflow a page
        raise RuntimeError("unexpected SVG root element from matplotlib")
    return svg.strip() + "\n"


def _chart(title: str, build: Callable[[], Figure]) -> Chart:
    """Build the figure and render its SVG under the shared settings (the Text objects read
    `text.parse_math` when they are created)."""
    with _settings():
        figure = build()
        svg = _inline_svg(figure, title)
    return Chart(title=title, svg=svg, _figure=figure)


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def _no_data(title: str) -> Figure:
    figure = Figure(figsize=(WIDTH_IN, 1.6), layout="constrained")
    ax = figure.add_subplot()
    ax.set_axis_off()
    ax.set_title(title, loc="left")
    ax.text(0.5, 0.5, NO_DATA, ha="center", va="center", color="#57606a", transform=ax.transAxes)
    return figure


def _style(i: int) -> dict[str, Any]:
    return {
        "color": _COLORS[i % 10],
        "linestyle": _STYLES[(i // 10) % len(_STYLES)],
        "marker": _MARKERS[(i // 10) % len(_MARKERS)],
    }


def _legend(figure: Figure, handles: list[Line2D], labels: list[str]) -> None:
    """Below the plot, in as many columns as fit: 20 names stay readable and never cover data."""
    columns = min(len(labels), 3)
    figure.legend(handles, labels, loc="outside lower center", ncols=columns)


def _legend_height(n: int) -> float:
    return 0.25 * math.ceil(n / 3) + 0.2 if n else 0.0


def ratings_chart(bars: list[RatingBar], *, title: str = "Pairwise rating (95% interval)") -> Chart:
    """One row per model, best first: the rating as a point, its interval as a bar, and a
    line at 1000 (the scale's anchor). The height grows with the number of models."""

    def build() -> Figure:
        if not bars:
            return _no_data(title)
        ranked = sorted(bars, key=lambda b: (-b.rating, b.label))
        n = len(ranked)
        figure = Figure(figsize=(WIDTH_IN, 1.0 + 0.3 * n), layout="constrained")
        ax = figure.add_subplot()
        y = np.arange(n)[::-1]
        ratings = np.array([b.rating for b in ranked])
        lo = np.array([min(b.lo, b.rating) for b in ranked])
        hi = np.array([max(b.hi, b.rating) for b in ranked])
        ax.axvline(1000, color="#8c959f", linewidth=1, linestyle="--", zorder=1)
        ax.hlines(y, lo, hi, color="#0969da", linewidth=2.2, zorder=2)
        ax.plot(ratings, y, "o", color="#0a3069", markersize=5, zorder=3)
        ax.set_yticks(y, [_short(b.label) for b in ranked])
        ax.set_ylim(-0.7, n - 0.3)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("rating (1000 = the scale's anchor)")
        ax.set_title(title, loc="left")
        return figure

    return _chart(title, build)


def _draw_series(ax: Axes, s: TurnSeries, index: int, band_alpha: float) -> Line2D:
    """One line of means in the style of position `index`, its interval as a shaded band
    (over the points that have one)."""
    points = sorted(s.points, key=lambda p: p.turn)
    style = _style(index)
    (line,) = ax.plot(
        [p.turn for p in points], [p.mean for p in points], markersize=4, linewidth=1.6, **style
    )
    band = [(p.turn, p.lo, p.hi) for p in points if p.lo is not None and p.hi is not None]
    if band:
        turns, lo, hi = zip(*band, strict=True)
        ax.fill_between(turns, lo, hi, color=style["color"], alpha=band_alpha, linewidth=0)
    return line


def _turn_axis(ax: Axes, series: list[TurnSeries]) -> None:
    """Whole turns only, with a little room at both ends."""
    turns = sorted({p.turn for s in series for p in s.points})
    ax.set_xticks(turns)
    ax.set_xlim(turns[0] - 0.3, turns[-1] + 0.3)
    ax.set_xlabel("turn")


def _has_points(series: list[TurnSeries]) -> bool:
    return any(s.points for s in series)


def score_by_turn_chart(
    series: list[TurnSeries],
    *,
    scale: tuple[float, float] | None,
    title: str = "Mean rubric score by turn (95% interval)",
) -> Chart:
    """Per model, the mean rubric score at each turn with its interval band: does the writing
    hold up as the story grows? The y axis spans the rubric's scale when it is given."""

    def build() -> Figure:
        if not _has_points(series):
            return _no_data(title)
        figure = Figure(figsize=(WIDTH_IN, 3.6 + _legend_height(len(series))), layout="constrained")
        ax = figure.add_subplot()
        alpha = 0.15 if len(series) <= 4 else 0.07  # many overlapping bands would turn to mud
        handles = [_draw_series(ax, s, i, alpha) for i, s in enumerate(series)]
        _turn_axis(ax, series)
        if scale is not None:
            low, high = scale
            pad = (high - low) * 0.03
            ax.set_ylim(low - pad, high + pad)
        ax.set_ylabel("mean score")
        ax.set_title(title, loc="left")
        _legend(figure, handles, [_short(s.label) for s in series])
        return figure

    return _chart(title, build)


def usage_by_turn_chart(
    tokens: list[TurnSeries],
    latency: list[TurnSeries],
    *,
    title: str = "Completion tokens and latency by turn",
) -> Chart:
    """Two stacked panels sharing the turn axis: mean completion tokens, mean latency (s).
    Stacked rather than side by side so each panel keeps its width on a narrow window."""

    def build() -> Figure:
        if not (_has_points(tokens) or _has_points(latency)):
            return _no_data(title)
        names = list(dict.fromkeys([s.label for s in tokens] + [s.label for s in latency]))
        order = {name: i for i, name in enumerate(names)}
        figure = Figure(figsize=(WIDTH_IN, 5.2 + _legend_height(len(names))), layout="constrained")
        top, bottom = figure.subplots(2, 1, sharex=True)
        handles: dict[str, Line2D] = {}
        for ax, series in ((top, tokens), (bottom, latency)):
            # Same colour per model in both panels, whatever each list holds.
            for s in series:
                handles.setdefault(s.label, _draw_series(ax, s, order[s.label], 0.1))
            ax.set_ylim(bottom=0)
        top.set_ylabel("completion tokens")
        bottom.set_ylabel("latency (s)")
        _turn_axis(bottom, tokens + latency)
        top.set_title(title, loc="left")
        _legend(figure, [handles[n] for n in names], [_short(n) for n in names])
        return figure

    return _chart(title, build)
