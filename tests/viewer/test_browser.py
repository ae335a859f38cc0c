"""The viewer in a real browser, over the embedded nx-27017 seeded through the real Store:
every page loads without a console error, the links lead runs -> run -> conversation -> turn,
the leaderboard's filters change the table and survive a reload, and a stored `<script>` stays
text. Skipped only when Debian's chromium or chromedriver is missing (`.ci/run` installs them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from evaluator.store import open_store
from evaluator.viewer.app import create_app
from tests.viewer.live import browser_missing, chromium, serving
from tests.viewer.seed import HOSTILE, MODELS, TEST_WAIT_S, Seeded, seed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Seeded]]:
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    data_dir: Path = tmp_path_factory.mktemp("viewer-store")
    with open_store(None, db_name="viewer_browser", data_dir=data_dir) as store:
        seeded = seed(store)
        with serving(create_app(lambda: store, wait_s=TEST_WAIT_S)) as root:
            yield root, seeded


@pytest.fixture(scope="module")
def driver(site: tuple[str, Seeded]) -> Iterator[Any]:
    with chromium() as d:
        yield d


def load(driver: Any, url: str) -> None:
    """Open `url` and fail on any error the page wrote to the console (CSP violations too)."""
    driver.get(url)
    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, f"{url}: {severe}"


def models_in_table(driver: Any) -> set[str]:
    from selenium.webdriver.common.by import By

    table = driver.find_element(By.XPATH, "//h3[text()='Leaderboard']/following-sibling::div[1]//table")
    return {
        row.find_elements(By.TAG_NAME, "td")[1].text
        for row in table.find_elements(By.CSS_SELECTOR, "tbody tr")
    }


def test_every_page_loads_without_console_errors(driver: Any, site: tuple[str, Seeded]) -> None:
    root, seeded = site
    a, b = seeded.conversations["alpha"][0], seeded.conversations["beta"][0]
    for path in (
        "/", "/runs/run-1", f"/conversations/{quote(a)}", f"/turns/{quote(a)}:t0",
        f"/side-by-side?a={quote(a)}&b={quote(b)}", "/leaderboard", "/leaderboard?judge=nobody",
        "/search?q=keeper",
    ):  # fmt: skip
        load(driver, root + path)
        assert driver.title.endswith("StoryBench viewer"), path


def test_links_lead_from_runs_to_a_turn(driver: Any, site: tuple[str, Seeded]) -> None:
    from selenium.webdriver.common.by import By

    root, seeded = site
    load(driver, root + "/")
    driver.find_element(By.LINK_TEXT, "run-1").click()
    assert driver.current_url == root + "/runs/run-1"
    driver.find_element(By.CSS_SELECTOR, "#conversations-table a[href^='/conversations/']").click()
    assert "/conversations/" in driver.current_url
    conv_title = driver.find_element(By.TAG_NAME, "h1").text
    driver.find_element(By.LINK_TEXT, "turn 1").click()
    assert "/turns/" in driver.current_url and driver.current_url.endswith("%3At1")
    assert driver.find_element(By.TAG_NAME, "h1").text.startswith("Turn 1")
    answer = driver.find_element(By.ID, "answer").text
    model = conv_title.split(" · ")[0]
    assert model in MODELS and answer.startswith(f"[writer:{model}]")
    assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_leaderboard_filters_change_the_table_and_survive_a_reload(
    driver: Any, site: tuple[str, Seeded]
) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, _ = site
    load(driver, root + "/leaderboard")
    assert models_in_table(driver) == set(MODELS) | {"m1"}
    field = driver.find_element(By.CSS_SELECTOR, "#filters input[name='models']")
    field.clear()
    field.send_keys("alpha,gamma")
    driver.find_element(By.CSS_SELECTOR, "#filters button[type='submit']").click()
    # A click returns before the browser has navigated: wait for the filtered page itself.
    WebDriverWait(driver, 30).until(lambda d: "models=alpha%2Cgamma" in d.current_url)
    navigating = (NoSuchElementException, StaleElementReferenceException)
    WebDriverWait(driver, 30, ignored_exceptions=navigating).until(
        lambda d: models_in_table(d) == {"alpha", "gamma"}
    )
    driver.refresh()
    assert "models=alpha%2Cgamma" in driver.current_url
    assert models_in_table(driver) == {"alpha", "gamma"}
    assert driver.find_element(By.CSS_SELECTOR, "#filters input[name='models']").get_attribute("value") == (
        "alpha,gamma"
    )
    assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_a_stored_script_stays_text(driver: Any, site: tuple[str, Seeded]) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    root, seeded = site
    for path in (f"/turns/{quote(seeded.hostile_turn)}", "/search?q=onerror", "/runs/run-hostile"):
        load(driver, root + path)
        with pytest.raises(NoAlertPresentException):
            _ = driver.switch_to.alert.text
        assert driver.execute_script("return document.querySelectorAll('main script, main img').length") == 0
    # The run page embeds the report without transcripts (each conversation has its own page):
    # the hostile answer is shown, as text, on its turn page below.
    load(driver, root + "/search?q=onerror")  # the regex search of the real store finds it
    assert "onerror=alert(1)" in driver.find_element(By.CSS_SELECTOR, ".hit p").text
    load(driver, root + f"/turns/{quote(seeded.hostile_turn)}")
    assert driver.find_element(By.ID, "answer").text == HOSTILE
