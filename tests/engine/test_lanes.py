"""Lanes (`"lanes"`, `server/engine/lanes.py`): the batched engine's slots split over several
contexts on the same weights, an engine thread each. On the CPU they only cost (the decode is
the host's own work), but the code path is the GPU's, so these tests pin it with the bundled
model: the config's split, a context per lane, requests spread over the lanes and answered as
one lane answers them, and a conversation's next turn sent to the lane holding its cache."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import llama_cpp
import pytest

from server.config import ServerConfigError, load_config
from server.engine.host import EngineHost
from server.engine.lanes import Lanes, start_engine
from server.engine.model import BatchedModel
from server.engine.prefix import common_prefix
from server.engine.scheduler import Engine, Slot
from tests.engine.conftest import batched_entry
from tests.engine.test_backend_sampling import Job, greedy
from tests.engine.test_engine import PROMPTS, Run, agreeing
from tests.engine.test_prefix import BOS, spell
from tests.support.servers import MAIN_MODEL, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=[True, False], ids=["one-thread", "thread-a-lane"])
def lanes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lanes]:
    """Four slots in two lanes, otherwise the session engine's settings; the lanes stepped by
    one thread (the default) or each by its own."""
    tmp = tmp_path_factory.mktemp("lanes")
    entry = batched_entry(n_ctx=512, n_parallel=4, n_threads_sampling=2, lanes=2)
    model = BatchedModel(load_config(write_config(tmp / "c.json", [entry])).models[0])
    if request.param:
        running = start_engine(model)
        assert isinstance(running, Lanes) and running.one_thread
    else:
        running = Lanes([model, model.lane(2)], one_thread=False)
    yield running
    running.close()
    running.close_models()


def test_the_config_splits_the_slots_evenly(tmp_path: Path) -> None:
    five = load_config(write_config(tmp_path / "a.json", [batched_entry(n_parallel=5, lanes=2)])).models[0]
    assert five.lanes == 2 and five.lane_slots == [3, 2]
    assert five.lane_cells(3) == 3 * five.n_ctx
    one = load_config(write_config(tmp_path / "b.json", [batched_entry(n_parallel=5)])).models[0]
    assert one.lanes == 1 and one.lane_slots == [5]
    with pytest.raises(ServerConfigError) as err:
        load_config(write_config(tmp_path / "c.json", [batched_entry(n_parallel=2, lanes=3)]))
    assert 'field "lanes"' in str(err.value) and "n_parallel is 2" in str(err.value)


def test_each_lane_has_a_context_of_its_own(lanes: Lanes) -> None:
    contexts = {id(e.model.context) for e in lanes.engines}
    assert len(contexts) == 2
    assert all(len(e.slots) == 2 and llama_cpp.llama_n_seq_max(e.model.ctx) == 2 for e in lanes.engines)
    assert lanes.engines[1].model.model is lanes.model.model  # one copy of the weights
    if lanes.one_thread:
        assert all(e._thread is None for e in lanes.engines)
        assert lanes._thread is not None and lanes._thread.name == f"engine:{MAIN_MODEL}:lanes"
    else:
        names = {e._thread.name for e in lanes.engines if e._thread is not None}
        assert names == {f"engine:{MAIN_MODEL}:0", f"engine:{MAIN_MODEL}:1"}


def test_requests_spread_over_the_lanes_and_answer_as_one_lane_does(lanes: Lanes, engine: Engine) -> None:
    """Four greedy requests at once: two a lane; each answer agrees with the same prompt alone
    on a one-lane engine (batches of other sizes may round a near tie the other way), and no
    answer is another prompt's."""
    alone = [Run(engine, p, 24).wait().gen.tokens for p in PROMPTS[:4]]
    runs = [Run(lanes, p, 24) for p in PROMPTS[:4]]  # type: ignore[arg-type]
    together = [r.wait().gen.tokens for r in runs]
    assert sorted(r.gen.lane for r in runs) == [0, 0, 1, 1]
    agree = [agreeing(a, b) for a, b in zip(alone, together, strict=True)]
    assert all(n >= 8 for n in agree), (agree, alone, together)
    for i, tokens in enumerate(together):
        assert all(tokens[:8] != other[:8] for j, other in enumerate(alone) if j != i)
    assert lanes.busy_slots == 0 and lanes.queued == 0


def test_the_next_turn_goes_to_the_lane_holding_the_conversation(lanes: Lanes) -> None:
    first = [Run(lanes, p, 16).wait() for p in PROMPTS[4:8]]  # type: ignore[arg-type]
    for run, prompt in zip(first, PROMPTS[4:8], strict=True):
        again = Run(lanes, prompt + run.text + " Then", 8).wait()  # type: ignore[arg-type]
        assert again.gen.lane == run.gen.lane
        assert again.gen.cache_n >= len(run.gen.prompt)  # the first turn's prompt came from the cache


def test_a_respelled_answer_keeps_its_lane_and_its_cache(lanes: Lanes) -> None:
    """A first turn holding " a" + "day", where the tokenizer says " ad" + "ay" (as a generated
    answer can): the next turn, its text tokenized afresh, shares less than half of its tokens
    with the cache, yet its lane offers all of it and it goes there."""
    model = lanes.model
    head = model.completion_prompt("Once upon a time, one")
    first = head + [253, 1222] + model.tokenize(b" the dragon said", add_bos=False, special=False)
    answer = Job(lanes, first, 24, greedy(lanes)).wait()  # type: ignore[arg-type]
    text = "Once upon a time, one aday the dragon said" + answer.text + " Then they"
    turn = model.completion_prompt(text)
    assert common_prefix(turn, first) < len(turn) / 2  # token for token: a new conversation
    home = lanes.engines[answer.gen.lane or 0]
    again = Job(lanes, text, 4, greedy(lanes)).wait()  # type: ignore[arg-type]
    assert again.gen.lane == answer.gen.lane, (home.stats.summary(), again.gen.lane)
    assert again.gen.cache_n >= len(first)


def test_the_host_loads_and_reports_lanes(tmp_path: Path) -> None:
    """Three slots in two lanes with a shared pool of 640 cells: each lane's context holds its
    share (two slots' 426, one slot's 256 at least: a whole conversation), reported together."""
    entry = batched_entry(n_ctx=256, n_parallel=3, lanes=2, kv_unified=True, kv_pool=640)
    cfg = load_config(write_config(tmp_path / "c.json", [entry]))
    host = EngineHost(cfg)
    try:
        engine = host.load(MAIN_MODEL)
        assert isinstance(engine, Lanes)
        settings = host.loaded_settings()
        assert settings["lanes"] == 2 and settings["n_parallel"] == 3
        assert [s["id"] for s in settings["slots"]] == [0, 1, 2]
        assert len(settings["stats"]["lanes"]) == 2
        assert [m.pool for m in engine.models] == [426, 256]
        assert settings["kv_pool"] == 426 + 256
        assert settings["n_ctx_total"] >= 426 + 256  # llama.cpp may round a context up
    finally:
        host.free()
    assert host.engine is None


def test_closing_ends_what_runs_and_what_waits(tmp_path: Path) -> None:
    """Closing the lanes' thread mid-answer: the running and the queued generations end with an
    error, none is left hanging."""
    entry = batched_entry(n_ctx=512, n_parallel=2, lanes=2)
    model = BatchedModel(load_config(write_config(tmp_path / "c.json", [entry])).models[0])
    running = start_engine(model)
    assert isinstance(running, Lanes)
    try:
        runs = [Run(running, p, 400) for p in PROMPTS[:3]]  # type: ignore[arg-type]
        assert runs[0].done.wait(0.5) is False  # still generating
    finally:
        running.close()
        running.close_models()
    for run in runs:
        assert run.done.wait(5)
        assert run.events[-1] == ("error", "the server is shutting down"), run.events[-1]


class _Lane:
    """An engine as `Lanes.choose` sees it: slots, a queue, a spelling; `Engine.reusable` and
    `Engine._matcher` themselves run on them."""

    reusable = Engine.reusable
    _matcher = Engine._matcher

    def __init__(
        self,
        caches: list[list[int]],
        busy: int = 0,
        queued: int = 0,
        used: float = 0.0,
        spell: Callable[[int], bytes | None] | None = None,
    ) -> None:
        self.slots = [Slot(seq=k, cache=list(c), last_used=used) for k, c in enumerate(caches)]
        for slot in self.slots[:busy]:
            slot.gen = object()  # type: ignore[assignment]
        self._pending = deque([None] * queued)
        self._cond = threading.Condition()
        self._spell = spell
        self.model = SimpleNamespace(n_ctx_slot=4096)

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def busy_slots(self) -> int:
        return sum(1 for s in self.slots if s.gen is not None)


def _choose(lanes: list[_Lane], prompt: list[int]) -> int:
    router = object.__new__(Lanes)
    router.engines = lanes  # type: ignore[assignment]
    gen = SimpleNamespace(prompt=prompt, max_tokens=16)
    return lanes.index(router.choose(gen))  # type: ignore[arg-type]


def test_a_turn_goes_where_its_history_is_cached_if_that_lane_has_room() -> None:
    history = list(range(100, 160))
    turn = history + [7, 8, 9]
    assert _choose([_Lane([[1, 2], []]), _Lane([history, []], busy=0)], turn) == 1
    # the lane holding it is busier: the cache still wins while it has an idle slot for it...
    assert _choose([_Lane([[], []]), _Lane([history, [5]], busy=0, queued=1)], turn) == 1
    # ...not once its idle slots are all spoken for
    assert _choose([_Lane([[], []]), _Lane([[5], history], busy=1, queued=1)], turn) == 0
    # a shared opening (less than half the prompt) is no reason: the least busy lane
    shared = history[:20]
    assert _choose([_Lane([shared, []], busy=1), _Lane([[], []])], shared + list(range(500, 560))) == 1


def test_a_story_whose_answer_was_respelled_goes_back_to_its_lane() -> None:
    """The next prompt spells the cached answer's " a" + "day" as " ad" + "ay" (the tokenizer's
    way): token for token it shares less than half the cache; as text, all of it. The lane
    routes as its admission matches (`prefix.text_match`); a lane that re-tokenizes answers
    (`"retokenize_answers": true`, no spelling) matches token for token."""
    words = list(range(100, 400))
    cache = [BOS, *words[:10], 10, 11, *words[10:200]]
    turn = [BOS, *words[:10], 12, 13, *words[10:]]
    assert _choose([_Lane([[], []]), _Lane([[], cache], busy=1, spell=spell)], turn) == 1
    assert _choose([_Lane([[], []]), _Lane([[], cache], busy=1)], turn) == 0  # the least busy


def test_new_conversations_spread_to_empty_slots_then_the_oldest_cache() -> None:
    fresh = list(range(900, 950))
    assert _choose([_Lane([[1], []], busy=1), _Lane([[], []])], fresh) == 1  # fewer busy
    assert _choose([_Lane([[1], []]), _Lane([[], []])], fresh) == 1  # more empty slots
    assert _choose([_Lane([[1]], used=5.0), _Lane([[2]], used=3.0)], fresh) == 1  # older cache


def test_idle_time_between_requests_is_not_step_time(tmp_path: Path, lanes: Lanes) -> None:
    """A pause between two requests counts in no step's host time (`ms_per_step` "other"),
    neither for a one-lane engine's own thread nor for the lanes' thread."""
    entry = batched_entry(n_ctx=256, n_parallel=1)
    model = BatchedModel(load_config(write_config(tmp_path / "c.json", [entry])).models[0])
    alone = Engine(model)
    try:
        for runner in (alone, lanes):
            Run(runner, PROMPTS[0], 8).wait()  # type: ignore[arg-type]
            time.sleep(0.6)
            Run(runner, PROMPTS[1], 8).wait()  # type: ignore[arg-type]
    finally:
        alone.close()
        model.close()
    summaries = [alone.stats.summary(), *(e.stats.summary() for e in lanes.engines)]
    for summary in summaries:
        if summary["steps"]:
            assert summary["ms_per_step"]["other"] < 20, summary["ms_per_step"]  # 0.6 s over < 30 steps
