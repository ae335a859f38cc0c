"""The HTML pages in a real browser: Debian's headless chromium, driven by selenium through
Debian's chromedriver (never a downloaded one). At a desktop width and at a phone's, nothing may
widen the page beyond the window (a wide table scrolls inside its own `.wide` box, which does
not widen the body), and every chart is drawn at a real size that fits the window.

`.ci/run` installs chromium and chromium-driver; elsewhere the test is skipped when they are
missing. Screenshots of every page and width are left in the test's tmp folder for a person
to look at.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evaluator.charts import ratings_chart, score_by_turn_chart
from evaluator.report.gather import conversations, summarize
from evaluator.report.render_html import render_html
from tests.charts.conftest import HOSTILE_MODEL, model_names, rating_bars, score_series, seed_usage_run
from tests.support.memory_store import memory_store

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTHS = (1400, 390)
LONG_NAME = "organisation/" + "Unbreakable" * 8  # no hyphen or space to wrap at

MEASURE = """
const svgs = Array.from(document.querySelectorAll('svg')).map(svg => {
  const r = svg.getBoundingClientRect();
  const box = svg.viewBox.baseVal;
  return {left: r.left, right: r.right, width: r.width, height: r.height, ratio: box.height / box.width};
});
return {scrollWidth: document.documentElement.scrollWidth, bodyScrollWidth: document.body.scrollWidth,
        innerWidth: window.innerWidth, svgs: svgs};
"""


def report_page(folder: Path) -> Path:
    """The run report of 20 models, one with a long unbreakable name and one with markup."""
    store = memory_store()
    run = seed_usage_run(store, [*model_names(18), LONG_NAME, HOSTILE_MODEL])
    out = io.StringIO()
    render_html(summarize(store, run), conversations(store, run), out)
    path = folder / "report.html"
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def charts_page(folder: Path) -> Path:
    """The leaderboard's two charts for 20 models, in a page styled like the report."""
    names = [*model_names(19), LONG_NAME]
    figures = "".join(
        f"<figure>{c.svg}<figcaption>{c.title}</figcaption></figure>"
        for c in (ratings_chart(rating_bars(names)), score_by_turn_chart(score_series(names), scale=(1, 10)))
    )
    path = folder / "charts.html"
    path.write_text(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><title>charts</title>'
        "<style>body{font:14px system-ui,sans-serif;margin:1.5rem auto;max-width:1400px;padding:0 1rem}"
        "figure{margin:.5rem 0 1rem}</style></head><body><h1>Leaderboard charts</h1>"
        f"{figures}</body></html>",
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(
            f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}); .ci/run installs them"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def show(driver: Any, page: Path, width: int, height: int = 900) -> dict[str, Any]:
    """Load `page` in a viewport exactly `width` px wide (a desktop window cannot be made as
    narrow as a phone, so the viewport is set through the DevTools protocol) and measure it."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    driver.get(page.as_uri())
    measured: dict[str, Any] = driver.execute_script(MEASURE)
    return measured


def test_pages_fit_the_window_and_draw_their_charts(browser: Any, tmp_path: Path) -> None:
    for page, charts in ((report_page(tmp_path), 1), (charts_page(tmp_path), 2)):
        for width in WIDTHS:
            m = show(browser, page, width)
            where = f"{page.name} at {width} px"
            assert m["innerWidth"] == width, where
            assert m["scrollWidth"] <= width and m["bodyScrollWidth"] <= width, f"{where} overflows: {m}"
            assert len(m["svgs"]) == charts, where
            for svg in m["svgs"]:
                assert svg["width"] > 0 and svg["left"] >= 0 and svg["right"] <= width, f"{where}: {svg}"
                assert svg["width"] <= 720.5  # never blown up past its natural size
                # height:auto keeps the drawing's proportions (not the 150 px default of a box)
                assert svg["height"] == pytest.approx(svg["width"] * svg["ratio"], rel=0.02), (
                    f"{where}: {svg}"
                )
            # The whole page, for a person to look at.
            full = browser.execute_script("return document.documentElement.scrollHeight")
            show(browser, page, width, height=min(int(full), 8000))
            shot = tmp_path / f"{page.stem}-{width}.png"
            assert browser.save_screenshot(str(shot)), where
            print(f"screenshot: {shot}")
