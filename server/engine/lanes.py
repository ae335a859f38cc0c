"""The batched engine's slots split over several contexts on one model's weights ("lanes"),
each an `Engine`, stepped in turn by one thread.

Why: on a GPU, `llama_decode` returns once the step is queued, but the next step of the same
context can only be built once this one's tokens are sampled, so the GPU waits for the host's
sampling and Python between steps: 0.37-0.42 ms of a 2.9 ms step at 16 sequences on an H100
(BENCHMARKS.md, issue 16, session 12). With two lanes, each context with its own CUDA stream and
graph, the host works on one lane's step while the other's decodes. Measured on an H100
(BENCHMARKS.md, issue 16, sessions 13-14): on the 1B shape two lanes in one thread
(`ONE_THREAD`, the default) reach 100-102% of llama-batched-bench at 64 conversations in the
generation phase against 77-84% for one lane, and stay within one lane's spread at 16 and 32
(two 8-row steps cost more than one of 16); on the 8B shape they lose below 64 (58% against
91-96% at 16). So one lane stays the default (`lanes` in the config).

A request goes to the lane holding its conversation (an idle slot whose cache its prompt
continues, matched as admission matches it, or that covers at least half of it), else to the
lane with the fewest busy and queued slots, so the lanes carry about as many rows each, and
among those to the one with an empty slot or the oldest cache.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from server.engine.model import BatchedModel
from server.engine.scheduler import Engine, Generation, Launched, Slot

log = logging.getLogger("storybench.server")

# One thread steps all lanes in turn (True), or each lane's engine its own thread (False).
ONE_THREAD = True


@dataclass
class LaneStats:
    """The lanes' `EngineStats`, summarised side by side."""

    engines: list[Engine]

    def summary(self) -> dict[str, Any]:
        return {"lanes": [e.stats.summary() for e in self.engines]}


class Lanes:
    """What `EngineHost` and the API use of an `Engine`, over several.

    With `one_thread` (the default, `ONE_THREAD`) one thread steps every lane in turn: it
    finishes a lane's step (waits for its decode, samples) and launches that lane's next one,
    then goes to the next lane, whose step has been decoding meanwhile. Otherwise each lane's
    engine runs its own thread; the threads then hand the GIL back and forth, and a lane's
    llama.cpp call that returns while the other runs Python waits for it (BENCHMARKS.md, issue
    16, session 13)."""

    def __init__(self, models: list[BatchedModel], one_thread: bool | None = None) -> None:
        self.models = models
        self.one_thread = ONE_THREAD if one_thread is None else one_thread
        self._cond: threading.Condition | None = threading.Condition() if self.one_thread else None
        self.engines = [Engine(m, lane=k, cond=self._cond) for k, m in enumerate(models)]
        self.model = models[0]  # weights, tokenizer and template: the same for every lane
        self.stats = LaneStats(self.engines)
        self._stopping = False
        self._thread: threading.Thread | None = None
        if self.one_thread:
            name = f"engine:{self.model.name}:lanes"
            self._thread = threading.Thread(target=self._drive, name=name, daemon=True)
            self._thread.start()

    def _drive(self) -> None:
        """Each lane in turn: finish its step in flight, admit, launch its next step; wait
        when no lane has anything to do."""
        assert self._cond is not None
        engines = self.engines
        in_flight: list[Launched | None] = [None] * len(engines)
        while True:
            with self._cond:
                while not self._stopping and not any(in_flight) and not any(e.wants_step() for e in engines):
                    for engine in engines:
                        engine._last_step_end = None  # idle: the wait is not engine time
                    self._cond.wait()
                if self._stopping:
                    return
            for k, engine in enumerate(engines):
                step, in_flight[k] = in_flight[k], None
                if step is not None:
                    engine.finish_step(step)
                in_flight[k] = engine.launch_step()

    @property
    def slots(self) -> list[Slot]:
        return [s for e in self.engines for s in e.slots]

    @property
    def busy_slots(self) -> int:
        return sum(e.busy_slots for e in self.engines)

    @property
    def queued(self) -> int:
        return sum(e.queued for e in self.engines)

    def submit(self, gen: Generation) -> None:
        engine = self.choose(gen)
        gen.lane = self.engines.index(engine)
        engine.submit(gen)

    def cancel(self, gen: Generation) -> None:
        if gen.lane is not None:
            self.engines[gen.lane].cancel(gen)

    def choose(self, gen: Generation) -> Engine:
        """The lane whose idle slot keeps the most of `gen`'s prompt in its cache, when that is
        the next turn of its conversation or at least half the prompt (`Engine.reusable`, with
        the text match admission uses: a story whose answer was re-spelled still goes home),
        else the least loaded lane. A lane is read under its own lock, one after another: a
        slot taken a moment later only costs a cache miss or an uneven step."""
        best: tuple[int, Engine] | None = None
        for engine in self.engines:
            kept = engine.reusable(gen)
            if kept and (best is None or kept > best[0]):
                best = (kept, engine)
        if best is not None:
            return best[1]
        return min(self.engines, key=_load)

    def close(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            for engine in self.engines:
                engine.close(timeout)
            return
        assert self._cond is not None
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("lanes thread of %r did not stop within %.0f s", self.model.name, timeout)
            return
        for engine in self.engines:  # no thread of their own: each stops and ends what it had
            engine.close(timeout)

    def close_models(self) -> None:
        """The lanes' contexts, then the weights (the first model owns them)."""
        for model in reversed(self.models):
            model.close()


def _load(engine: Engine) -> tuple[int, int, float]:
    """Busy and queued slots; then, for lanes equally busy, the one with more empty slots, then
    the one whose idle slot was used longest ago: the cache a new conversation displaces is the
    oldest one, across lanes as within one (`prefix.choose_slot`)."""
    idle = [s for s in engine.slots if s.gen is None]
    empty = sum(1 for s in idle if not s.cache)
    oldest = min((s.last_used for s in idle), default=float("inf"))
    return engine.busy_slots + engine.queued, -empty, oldest


def start_engine(model: BatchedModel) -> Engine | Lanes:
    """An `Engine` for the model, or `Lanes` when its config asks for more than one lane (the
    first lane is `model`'s own context, already sized for it)."""
    sizes = model.config.lane_slots
    if len(sizes) == 1:
        return Engine(model)
    others: list[BatchedModel] = []
    try:
        for n in sizes[1:]:
            others.append(model.lane(n))
    except BaseException:  # e.g. out of memory for one more context: nothing left half-made
        for other in others:
            other.close()
        raise
    return Lanes([model, *others])
