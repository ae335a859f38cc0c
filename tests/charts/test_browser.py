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

from evaluator.leaderboard.build import build
from evaluator.leaderboard.gather import gather
from evaluator.leaderboard.render import charts
from evaluator.leaderboard.render import render_html as render_leaderboard
from evaluator.report.gather import conversations, summarize
from evaluator.report.render_html import render_html
from tests.charts.conftest import HOSTILE_MODEL, model_names, seed_usage_run
from tests.leaderboard.conftest import add_ordered_verdicts, add_scores, seed_models
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


def leaderboard_page(folder: Path) -> Path:
    """`storybench-eval leaderboard`'s HTML for 20 models (one with a long unbreakable name),
    from verdicts and scores stored in a store and read back the way the command reads them."""
    store = memory_store()
    names = [*model_names(19), LONG_NAME]
    convs = seed_models(store, names, sequences=3, runs=1, turns=3)
    for k, name in enumerate(names):
        add_scores(store, convs[name], 1 + k % 9, judge="judge", rubric="v1", turns=3)
    add_ordered_verdicts(store, convs, names)
    board = build(gather(store), resamples=100)
    out = io.StringIO()
    render_leaderboard(board, out, charts(board, scale=(1, 10)))
    path = folder / "leaderboard.html"
    path.write_text(out.getvalue(), encoding="utf-8")
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
    for page, n_charts in ((report_page(tmp_path), 1), (leaderboard_page(tmp_path), 2)):
        for width in WIDTHS:
            m = show(browser, page, width)
            where = f"{page.name} at {width} px"
            assert m["innerWidth"] == width, where
            assert m["scrollWidth"] <= width and m["bodyScrollWidth"] <= width, f"{where} overflows: {m}"
            assert len(m["svgs"]) == n_charts, where
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
