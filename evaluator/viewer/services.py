"""The viewer's background work over one store: computed pages (background.py) and the
answer search index (search_index.py), in a cache folder of the store's own.

Both start when the app starts, from a thread, so the server answers at once: it opens the
store, computes the default leaderboard (the page that takes longest), then starts building
the search index. The folder is `<cache root>/<store id>/` where the store id is a hash of where
the store is (the embedded server's data folder, else the URI without credentials, and the
database name); without a cache root (tests, `--no-cache`) a temporary folder is used and
removed at shutdown. Nothing here writes the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from evaluator.store.errors import StoreError
from evaluator.store.store import Store
from evaluator.viewer.background import Results
from evaluator.viewer.search_index import AnswerIndex

# A background read pauses between its pages while pages are being answered, up to this long
# per page of the read (so a steady stream of requests cannot stop it).
MAX_PAUSE_S = 1.0


class PageGate:
    """Counts the requests being answered; `pause()` (between a background read's pages, see
    `Store.between_pages`) waits until there are none. The embedded database answers one query
    at a time, and the 2 cores are shared: a page waits less when the background waits."""

    def __init__(self) -> None:
        self._answering = 0
        self._idle = threading.Condition()

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        with self._idle:
            self._answering += 1
        try:
            yield
        finally:
            with self._idle:
                self._answering -= 1
                self._idle.notify_all()

    def pause(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._answering == 0, timeout=MAX_PAUSE_S)


def default_cache_root() -> Path:
    """$XDG_CACHE_HOME/storybench/viewer, else ~/.cache/storybench/viewer."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "storybench" / "viewer"


def store_id(store: Store) -> str:
    where = str(store.embedded.data_dir.resolve()) if store.embedded is not None else store.display_uri
    return hashlib.sha256(f"{where}\n{store.db_name}".encode()).hexdigest()[:16]


class Services:
    """Created with the app; `results()` and `index()` exist once the store is open."""

    def __init__(
        self,
        store: Callable[[], Store],
        cache_root: Path | None,
        warm: Callable[[Services], None] | None = None,
    ) -> None:
        self._store, self._root, self._warm = store, cache_root, warm
        self._lock = threading.Lock()
        self._results: Results | None = None
        self._index: AnswerIndex | None = None
        self._temporary: Path | None = None
        self._closed = False

    def store(self) -> Store:
        return self._store()

    def start(self) -> None:
        """Open the store and start the background work, in a thread (a store that does not
        answer makes each page say so, as before)."""
        threading.Thread(target=self._start, name="viewer-warm-up", daemon=True).start()

    def _start(self) -> None:
        """The leaderboard first, then the search index (unless a search started it): one
        heavy reader at a time, so pages asked for meanwhile wait less for the database."""
        try:
            if self._warm is not None:
                self._warm(self)
        except Exception:  # noqa: BLE001 - the page that computes it again shows the error
            pass
        with contextlib.suppress(StoreError):  # the search page shows the store's message
            self.index()

    def _folder(self) -> Path:
        if self._closed:  # the warm-up thread may outlive the app by one computation
            raise StoreError("the viewer is shutting down")
        store = self._store()
        if self._root is not None:
            return self._root / store_id(store)
        if self._temporary is None:
            self._temporary = Path(tempfile.mkdtemp(prefix="storybench-view-"))
        return self._temporary

    def results(self) -> Results:
        with self._lock:
            if self._results is None:
                self._results = Results(self._folder() / "pages")
            return self._results

    def index(self) -> AnswerIndex:
        with self._lock:
            if self._index is None:
                self._index = AnswerIndex(self._folder() / "answers.sqlite3", self._store)
                self._index.start()
            return self._index

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._index is not None:
                self._index.stop()
            if self._results is not None:
                self._results.close()
            if self._temporary is not None:
                shutil.rmtree(self._temporary, ignore_errors=True)
