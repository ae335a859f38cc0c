"""Search across stored answers through an index of the viewer's own, outside the store.

A substring search in MongoDB (`$regex`) reads every answer: 1.8 s on 50,000 turns. A text
index in the store would change every writer, match words rather than substrings, and differ
between nx-27017 and mongod. So the viewer keeps its own: an SQLite FTS5 table (Python's
sqlite3) with the trigram tokenizer, in a file under its cache folder, holding no text (a
contentless table: the letter triples of each answer and its row number) and a table from row
number to the turn's `_id`.

A query of at least 3 characters asks the index for the answers holding every letter triple
of the query (case folded), then reads those answers from the store by `_id` (indexed) in
batches and keeps the ones that really contain the query (Python's `str.lower`, like the scan
it replaces): the same answers as the scan, in the order they were indexed.

A background thread builds the index once (every answer read in one pass; the file is kept, so
a restarted viewer reuses it), then keeps it current: when a search finds the number of turns
or the newest turn's time changed (a retried turn replaces its error turn in place), or
`REFRESH_S` after its last look, it reads the newest answers first (index
`responses_finished_at`) down to `OVERLAP_S` before the newest it had, and indexes those that
are new or were replaced. While the first build runs, a search answers from what is indexed so
far and says so.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from evaluator.records import ResponseRecord
from evaluator.store.errors import StoreError
from evaluator.store.store import Store

MIN_CHARS = 3
BATCH = 200  # answers per insert and commit while building
VERIFY_BATCH = 200  # candidate answers read from the store at once
MAX_CHECKED = 1000  # candidates checked per search; beyond, the page says more may match
REFRESH_S = 60.0
OVERLAP_S = 120.0  # re-read answers this much older than the newest indexed (writers' clocks)
VERSION = "1"

_SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS answers USING fts5(text, tokenize='trigram', detail='none', content='');
CREATE TABLE IF NOT EXISTS docs (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, finished TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Found:
    turns: list[ResponseRecord]
    complete: bool  # every candidate checked (False: more answers may match)


@dataclass(frozen=True)
class Progress:
    indexed: int  # answers in the index
    building: bool  # the first build is still running
    as_of: datetime | None  # when the index last read the store
    error: str | None  # why the last build or refresh failed


def match_expression(text: str) -> str:
    """Every distinct letter triple of `text` (case folded), ANDed, as an FTS5 query."""
    folded = text.lower()
    triples = dict.fromkeys(folded[i : i + 3] for i in range(len(folded) - 2))
    return " AND ".join('"' + t.replace('"', '""') + '"' for t in triples)


class AnswerIndex:
    """The index file at `path` over the store `store()` returns; `start()` runs its thread."""

    def __init__(self, path: Path, store: Callable[[], Store]) -> None:
        self._path, self._store = path, store
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = Progress(0, True, None, None)
        self._seen_count: int | None = None
        self._last_look = 0.0
        self._looks = threading.Condition()
        self._asked = self._answered = 0  # looks asked for by searches, and done

    # -- the page's side --------------------------------------------------------------------

    @property
    def progress(self) -> Progress:
        return self._progress

    def sync(self, timeout: float) -> bool:
        """Ask the thread to look for new answers (it reads them only if the number of turns
        or the newest turn's time changed, or REFRESH_S after its last look) and wait up to
        `timeout` for that look; False while it runs (the first build, a long catch-up)."""
        with self._looks:
            self._asked += 1
            ticket = self._asked
        self._wake.set()
        with self._looks:
            return self._looks.wait_for(lambda: self._answered >= ticket or self._stop.is_set(), timeout)

    def search(self, store: Store, text: str, limit: int) -> Found:
        """Turns whose cleaned answer contains `text` (case-insensitive), at most `limit`."""
        needle = text.lower()
        checked = 0
        with closing(self._connect()) as db:
            rows = db.execute(
                "SELECT d.id FROM answers JOIN docs d ON d.row = answers.rowid "
                "WHERE answers MATCH ? ORDER BY answers.rowid LIMIT ?",
                (match_expression(text), MAX_CHECKED + 1),
            ).fetchall()
        ids = [r[0] for r in rows]
        matched: list[str] = []
        for start in range(0, min(len(ids), MAX_CHECKED), VERIFY_BATCH):
            batch = ids[start : min(start + VERIFY_BATCH, MAX_CHECKED)]
            checked += len(batch)
            texts = store.answer_texts_by_ids(batch)
            matched += [i for i in batch if needle in texts.get(i, "").lower()]
            if len(matched) >= limit:
                return Found(store.answers_by_ids(matched[:limit]), True)
        return Found(store.answers_by_ids(matched), checked >= len(ids))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, timeout=30, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # a cache: rebuilt if ever lost
        return db

    # -- the thread -------------------------------------------------------------------------

    def start(self) -> None:
        """Create the tables (so a search can always query them), then start the thread."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.executescript(_SCHEMA)
        self._thread = threading.Thread(target=self._run, name="viewer-search-index", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._looks:
            self._looks.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        db = self._connect()
        try:
            if self._meta(db, "complete") == VERSION:  # kept from an earlier start
                (indexed,) = db.execute("SELECT count(*) FROM docs").fetchone()
                self._set(indexed=int(indexed), building=False)
                count = self._meta(db, "count")
                self._seen_count = int(count) if count is not None else None
                self._last_look = time.monotonic()  # unchanged count and newest time: no read
            while not self._stop.is_set():
                self._wake.clear()
                with self._looks:
                    ticket = self._asked
                try:
                    if self._meta(db, "complete") != VERSION:
                        self._build(db)
                    elif self._changed(db):
                        self._refresh(db)
                except Exception as exc:  # noqa: BLE001 - shown on the search page; tried again
                    self._set(error=str(exc) if isinstance(exc, StoreError | sqlite3.Error) else repr(exc))
                    self._stop.wait(5.0)
                with self._looks:
                    self._answered = ticket
                    self._looks.notify_all()
                    asked_since = self._asked > ticket
                if not asked_since:
                    self._wake.wait(timeout=REFRESH_S)
        finally:
            db.close()

    def _set(self, **changes: object) -> None:
        self._progress = replace(self._progress, **changes)  # type: ignore[arg-type]

    def _meta(self, db: sqlite3.Connection, key: str) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _changed(self, db: sqlite3.Connection) -> bool:
        """New turns (the count), a replaced one (the newest time), or REFRESH_S passed."""
        store = self._store()
        if store.collection_sizes()[1] != self._seen_count:
            return True
        newest, known = store.newest_finished_at(), self._meta(db, "newest")
        if newest is not None and newest.isoformat() != known:
            return True
        return time.monotonic() - self._last_look > REFRESH_S

    def _build(self, db: sqlite3.Connection) -> None:
        """Every answer in one pass, committed in batches so searches see the progress."""
        store = self._store()
        self._seen_count = store.collection_sizes()[1]
        self._last_look = time.monotonic()
        db.execute("DELETE FROM answers")
        db.execute("DELETE FROM docs")
        db.execute("DELETE FROM meta")
        self._set(indexed=0, building=True, error=None)
        batch: list[tuple[str, str, datetime]] = []
        newest: datetime | None = None
        for row in store.answer_texts():
            if self._stop.is_set():
                return
            batch.append(row)
            newest = row[2] if newest is None or row[2] > newest else newest
            if len(batch) >= BATCH:
                self._add(db, batch)
                batch = []
        self._add(db, batch)
        with db:
            if newest is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('newest', ?)", (newest.isoformat(),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('count', ?)", (str(self._seen_count),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('complete', ?)", (VERSION,))
        self._set(building=False, as_of=datetime.now(timezone.utc))

    def _refresh(self, db: sqlite3.Connection) -> None:
        """The newest answers first, down to OVERLAP_S before the newest indexed."""
        store = self._store()
        count = store.collection_sizes()[1]
        newest_text = self._meta(db, "newest")
        newest = datetime.fromisoformat(newest_text) if newest_text else None
        floor = newest - timedelta(seconds=OVERLAP_S) if newest else None
        known: dict[str, str] = {}
        batch: list[tuple[str, str, datetime]] = []
        for row in store.answer_texts(newest_first=True):
            if floor is not None and row[2] < floor:
                break
            batch.append(row)
        for start in range(0, len(batch), BATCH):  # SQLite bounds the number of parameters
            ids = [r[0] for r in batch[start : start + BATCH]]
            marks = ",".join("?" * len(ids))
            query = f"SELECT id, finished FROM docs WHERE id IN ({marks})"  # noqa: S608 - placeholders only
            known.update(db.execute(query, ids))
        fresh = [r for r in batch if known.get(r[0]) != r[2].isoformat()]
        self._add(db, fresh)
        top = max((r[2] for r in batch), default=newest)
        with db:
            if top is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('newest', ?)", (top.isoformat(),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('count', ?)", (str(count),))
        self._seen_count, self._last_look = count, time.monotonic()
        self._set(as_of=datetime.now(timezone.utc), error=None)

    def _add(self, db: sqlite3.Connection, rows: list[tuple[str, str, datetime]]) -> None:
        """Index these answers under new row numbers; a replaced turn's old row is orphaned
        (its `docs` entry now names the new row), so searches no longer find it."""
        if not rows:
            return
        with db:
            (start,) = db.execute("SELECT coalesce(max(row), 0) + 1 FROM docs").fetchone()
            for offset, (response_id, text, finished) in enumerate(rows):
                row = start + offset
                db.execute("INSERT INTO answers(rowid, text) VALUES (?, ?)", (row, text))
                db.execute(
                    "INSERT OR REPLACE INTO docs(row, id, finished) VALUES (?, ?, ?)",
                    (row, response_id, finished.isoformat()),
                )
        (indexed,) = db.execute("SELECT count(*) FROM docs").fetchone()
        self._set(indexed=int(indexed))
