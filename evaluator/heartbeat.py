"""Keeps a run's `heartbeat_at` fresh while its process lives, so that `runs` and `show` on
another host can tell a live run from one whose process was killed (evaluator/store/liveness.py).

The beat runs on a daemon thread of its own, not on the run's event loop: a slow or dead
database then delays only the heartbeat, never a turn, and the thread dies with the process,
which is the point. A failing beat is logged once and otherwise ignored: turn writes have their
own error handling and stop the run when the database is really gone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from types import TracebackType

from evaluator.records import DEFAULT_HEARTBEAT_S

HEARTBEAT_ENV = "STORYBENCH_HEARTBEAT_S"
MIN_HEARTBEAT_S = 0.05  # short intervals are for tests; a real run beats every few tens of seconds
_STOP_WAIT_S = 2.0

log = logging.getLogger(__name__)


def heartbeat_interval(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds between beats: STORYBENCH_HEARTBEAT_S, else DEFAULT_HEARTBEAT_S (30).

    Raises ValueError with a message for the user when the variable is not a usable number.
    """
    raw = environ.get(HEARTBEAT_ENV, "").strip()
    if not raw:
        return DEFAULT_HEARTBEAT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value >= MIN_HEARTBEAT_S or value == float("inf"):
        raise ValueError(
            f"{HEARTBEAT_ENV}={raw!r}: must be a number of seconds >= {MIN_HEARTBEAT_S:g} "
            f"(default {DEFAULT_HEARTBEAT_S:g}); unset it to use the default"
        )
    return value


def process_identity() -> tuple[str, int]:
    """(host name, pid) recorded with a run: where a reader can check that its process lives."""
    return socket.gethostname(), os.getpid()


class Heartbeat:
    """Calls `beat()` every `interval_s` seconds on a daemon thread until stopped.

    `beat` returns False when there is nothing left to keep alive (the run is no longer
    "running"); the thread then ends. An exception from `beat` is logged once (the first) and
    the beats go on: the database may come back. Use as a context manager around the run.
    """

    def __init__(self, beat: Callable[[], bool], interval_s: float, what: str = "the run") -> None:
        self.beat = beat
        self.interval_s = interval_s
        self.what = what
        self.beats = 0  # successful beats, for tests and curiosity
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="storybench-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        """True while the beat thread lives: after `stop()`, or once `beat` returned False, it
        ends at its next wake-up, and from then on `beat` is never called again."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop beating; waits briefly for a beat in flight, never for a hung database."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(_STOP_WAIT_S)

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                alive = self.beat()
            except Exception as exc:  # never let the heartbeat touch the run
                if self._stop.is_set():
                    return
                self.failures += 1
                if self.failures == 1:
                    log.warning(
                        "could not refresh the heartbeat of %s (%s); the run goes on, but other "
                        "hosts may show it as abandoned until a beat gets through",
                        self.what,
                        exc,
                    )
                continue
            if not alive:
                return
            self.beats += 1
