"""Pages too slow to compute while a browser waits: computed in a background thread, kept per
store state, and answered at once.

The leaderboard reads the whole store and bootstraps its intervals (seconds on a large store);
a run's report summarises every turn of the run and draws a chart (half a second). Each result
is kept under its key (the page and its filters) with the store's change marks
(`Store.change_marks`) it was computed from, in memory and, when the app has a cache folder, as
a JSON file there, so a restarted viewer over an unchanged store answers at once too. Nothing
here writes the store.

`Results.get` answers within `wait_s`: the result for the store as it is now when there is one
(or when it is computed within `wait_s`), else the newest result of an earlier state (flagged)
or nothing, while a worker computes the current one; the page says so and refreshes itself.
A result older than `revalidate_s` is still served but recomputed in the background: the only
store changes the marks miss (text metrics backfilled in place) show within that time.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

Value = dict[str, Any]  # JSON-able: it may be written to the cache folder

# How long a page waits for a computation before answering with what it has.
PAGE_WAIT_S = 0.1
REVALIDATE_S = 300.0


@dataclass(frozen=True)
class Result:
    value: Value
    marks: str  # the store's change marks it was computed from
    computed_at: datetime


@dataclass(frozen=True)
class Answer:
    """What a page shows: `result` (None while the first computation runs); `current` when
    it was computed from the store as it is now; `computing` while a worker computes (neither
    current nor computing: the store changed, and the result is computed again later)."""

    result: Result | None
    current: bool
    computing: bool


def key_of(*parts: object) -> str:
    return hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:32]


class Results:
    """Computed page parts by key, at most `size` in memory, optionally persisted in `folder`."""

    def __init__(
        self,
        folder: Path | None,
        *,
        workers: int = 2,
        size: int = 64,
        revalidate_s: float = REVALIDATE_S,
    ) -> None:
        self._folder = folder
        self._memory: OrderedDict[str, Result] = OrderedDict()
        self._pending: dict[tuple[str, str], Future[Result]] = {}
        self._errors: dict[str, BaseException] = {}
        self._size, self._revalidate_s = size, revalidate_s
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="viewer-compute")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def get(
        self,
        key: str,
        marks: str,
        compute: Callable[[], Value],
        wait_s: float = PAGE_WAIT_S,
        *,
        every_s: float = 0.0,
    ) -> Answer:
        """The result for `key` on the store whose change marks are `marks`; starts computing it
        when missing (see the module docstring), but not sooner than `every_s` after the last
        result (a store that changes on every turn would keep a long computation running for
        as long as the page is open). A computation that failed raises its error here, once,
        so the page shows it; the next request tries again."""
        with self._lock:
            error = self._errors.pop(key, None)
        if error is not None:
            raise error
        known = self._known(key)
        age = (datetime.now(timezone.utc) - known.computed_at).total_seconds() if known else 0.0
        if known is not None and known.marks == marks:
            if age > self._revalidate_s:
                self._submit(key, marks, compute, seen=known)
            return Answer(known, current=True, computing=age > self._revalidate_s)
        if known is not None and age < every_s:
            return Answer(known, current=False, computing=False)  # computed again later
        future = self._submit(key, marks, compute, seen=known)
        if future is None:  # still computing it for an earlier state of the store
            return Answer(known, current=False, computing=True)
        try:
            return Answer(future.result(timeout=wait_s), current=True, computing=False)
        except FutureTimeout:
            return Answer(known, current=False, computing=True)
        except BaseException:
            with self._lock:
                self._errors.pop(key, None)  # raised here already
            raise

    def peek(self, key: str) -> Result | None:
        """The newest result for `key`, whatever store state it was computed from."""
        return self._known(key)

    def _known(self, key: str) -> Result | None:
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                return hit
        loaded = self._load(key)
        if loaded is not None:
            self._remember(key, loaded)
        return loaded

    def _submit(
        self, key: str, marks: str, compute: Callable[[], Value], seen: Result | None = None
    ) -> Future[Result] | None:
        """The computation of `key` for `marks`, started unless one runs; None while one runs
        for other marks (a store that changes on every turn must not pile them up). A result
        for `marks` newer than the caller's `seen` (a computation that ended since the caller
        looked) is answered as it is, not computed again."""
        with self._lock:
            for (running_key, running_marks), running in self._pending.items():
                if running_key == key:
                    return running if running_marks == marks else None
            ended = self._memory.get(key)
            if ended is not None and ended is not seen and ended.marks == marks:
                done: Future[Result] = Future()
                done.set_result(ended)
                return done

            def work() -> Result:
                try:
                    result = Result(compute(), marks, datetime.now(timezone.utc))
                    # Kept before the computation stops counting as running: a page asking in
                    # between finds one or the other, never neither (which computed it twice).
                    self._remember(key, result)
                except BaseException as exc:
                    with self._lock:
                        self._errors[key] = exc
                    raise
                finally:
                    with self._lock:
                        self._pending.pop((key, marks), None)
                self._save(key, result)
                return result

            future = self._pool.submit(work)
            self._pending[(key, marks)] = future
            return future

    def _remember(self, key: str, result: Result) -> None:
        with self._lock:
            current = self._memory.get(key)
            if current is not None and current.computed_at > result.computed_at:
                return  # a newer computation finished first
            self._memory[key] = result
            self._memory.move_to_end(key)
            while len(self._memory) > self._size:
                self._memory.popitem(last=False)

    def _path(self, key: str) -> Path | None:
        return None if self._folder is None else self._folder / f"{key}.json"

    def _load(self, key: str) -> Result | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return Result(raw["value"], raw["marks"], datetime.fromisoformat(raw["computed_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable or from another version: computed again

    def _save(self, key: str, result: Result) -> None:
        path = self._path(key)
        if path is None:
            return
        doc = {"value": result.value, "marks": result.marks, "computed_at": result.computed_at.isoformat()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{threading.get_ident()}.{time.monotonic_ns()}.tmp")
            tmp.write_text(json.dumps(doc), encoding="utf-8")
            tmp.replace(path)
        except OSError:
            pass  # the cache folder is an optimisation: the page still has the result
