"""`make screenshots`: a PNG of each viewer page under docs/screenshots/, from a seeded
temporary (in-memory) store, taken with Debian's headless chromium.

    .venv/bin/python -m tests.viewer.screenshots [docs/screenshots]
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import quote

from evaluator.viewer.app import create_app
from tests.support.memory_store import memory_store
from tests.viewer.live import browser_missing, chromium, serving
from tests.viewer.seed import TEST_WAIT_S, seed

WIDTH = 1280
MAX_HEIGHT = 4000


def main(argv: list[str]) -> int:
    missing = browser_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    folder = Path(argv[0] if argv else "docs/screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    store = memory_store()
    seeded = seed(store, live=True)
    a, b = seeded.conversations["alpha"][1], seeded.conversations["gamma"][1]
    pages = {
        "runs": "/",
        "run": "/runs/run-1",
        "conversation": f"/conversations/{quote(a)}",
        "turn": f"/turns/{quote(a)}:t1",
        "side-by-side": f"/side-by-side?a={quote(a)}&b={quote(b)}",
        "leaderboard": "/leaderboard",
        "search": "/search?q=keeper",
    }
    with serving(create_app(lambda: store, wait_s=TEST_WAIT_S)) as root, chromium(WIDTH) as driver:
        for name, path in pages.items():
            driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            )
            driver.get(root + path)
            height = min(
                int(driver.execute_script("return document.documentElement.scrollHeight")), MAX_HEIGHT
            )
            driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
            out = folder / f"viewer-{name}.png"
            driver.save_screenshot(str(out))
            print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
