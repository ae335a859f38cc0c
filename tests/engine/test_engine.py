"""The engine in this process, with the bundled model: exact token ids, greedy decoding."""

from __future__ import annotations

import threading
import time

import pytest

from server.engine.sampling import SamplingParams, build_sampler
from server.engine.scheduler import Engine, Event, Generation

pytestmark = pytest.mark.integration

PROMPTS = [
    "The lighthouse keeper climbed the stairs and",
    "Recipe for tomato soup: first,",
    "In 1492, the ships",
    "def fibonacci(n):",
    "The capital of France is Paris. The capital of Spain is",
    "Dear Sir, I am writing to complain about",
    "The three primary colours are",
    "The rules of chess are simple:",
]


class Run:
    """One generation submitted to the engine, collected synchronously."""

    def __init__(
        self,
        engine: Engine,
        prompt: str,
        max_tokens: int,
        *,
        no_eog: bool = True,
        stop: list[str] | None = None,
    ) -> None:
        model = engine.model
        bias = {t: -100.0 for t in eog_tokens(engine)} if no_eog else {}
        self.events: list[Event] = []
        self.done = threading.Event()
        self.gen = Generation(
            prompt=model.completion_prompt(prompt),
            max_tokens=max_tokens,
            sampler=build_sampler(model.model, SamplingParams(temperature=0.0, logit_bias=bias)),
            sink=self._sink,
            stop=stop or [],
        )
        engine.submit(self.gen)

    def _sink(self, events: list[Event]) -> None:
        self.events += events
        if any(kind in ("done", "error") for kind, _ in events):
            self.done.set()

    def wait(self, timeout: float = 240) -> Run:
        assert self.done.wait(timeout), "generation did not finish"
        assert self.events[-1][0] == "done", self.events[-1]
        return self

    @property
    def text(self) -> str:
        return "".join(v for k, v in self.events if k == "text")


_EOG: list[int] = []


def eog_tokens(engine: Engine) -> list[int]:
    if not _EOG:
        _EOG.extend(t for t in range(engine.model.n_vocab) if engine.model.is_eog(t))
    return _EOG


def agreeing(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_greedy_alone_twice_gives_the_same_text(engine: Engine) -> None:
    first = Run(engine, PROMPTS[0], 32).wait()
    second = Run(engine, PROMPTS[0], 32).wait()  # from the slot's cache this time
    assert second.gen.cache_n == len(second.gen.prompt) - 1
    assert first.gen.tokens == second.gen.tokens and len(first.gen.tokens) == 32
    assert first.text == second.text


def test_greedy_alone_matches_llama_cpp_python(engine: Engine) -> None:
    """The same tokens as the serial engine (llama-cpp-python's `Llama.generate`)."""
    from llama_cpp import Llama

    ours = Run(engine, PROMPTS[6], 32).wait()
    llama = Llama(
        model_path=str(engine.model.config.path), n_ctx=512, n_threads=1, verbose=False, logits_all=False
    )
    try:
        reference: list[int] = []
        for token in llama.generate(ours.gen.prompt, temp=0.0, top_k=1):
            reference.append(token)
            if len(reference) == 32:
                break
    finally:
        llama.close()
    assert ours.gen.tokens == reference


def test_greedy_alone_versus_alongside_seven_others(
    engine: Engine, record_property: pytest.RecordProperty
) -> None:
    max_tokens = 32
    alone = [Run(engine, p, max_tokens).wait().gen.tokens for p in PROMPTS]
    runs = [Run(engine, p, max_tokens) for p in PROMPTS]  # submitted together: one batch
    together = [r.wait().gen.tokens for r in runs]
    assert {r.gen.slot for r in runs} == set(range(len(PROMPTS)))  # 8 sequences at once
    agree = [agreeing(a, b) for a, b in zip(alone, together, strict=True)]
    record_property("greedy_tokens_agreeing_alone_vs_batched", agree)
    print(f"greedy tokens agreeing (of {max_tokens}) alone vs alongside 7 others: {agree}")
    assert all(n >= 8 for n in agree), (agree, alone, together)
    # No sequence took another's tokens: every answer differs from the other prompts' answers.
    for i, tokens in enumerate(together):
        for j, other in enumerate(alone):
            if i != j:
                assert agreeing(tokens, other) < 8, (i, j)


def test_cancel_frees_the_slot_at_once(engine: Engine) -> None:
    run = Run(engine, PROMPTS[1], 400)
    deadline = time.monotonic() + 60
    while run.gen.predicted_n < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    engine.cancel(run.gen)
    deadline = time.monotonic() + 10
    while engine.busy_slots:
        assert time.monotonic() < deadline, "the slot is still busy"
        time.sleep(0.01)
    generated = run.gen.predicted_n
    # The slot serves the next request, reusing what the cancelled one had evaluated. Its steps
    # are the barrier: had the cancelled generation stayed in the batch, it would have grown
    # while they ran.
    again = Run(engine, PROMPTS[1], 4).wait()
    assert again.gen.cache_n == len(again.gen.prompt) - 1
    assert run.gen.predicted_n == generated < 400  # nothing more was generated
    assert not run.done.is_set()  # a cancelled generation reports nothing more


def test_stop_string_spanning_tokens_and_the_length_limit(engine: Engine) -> None:
    full = Run(engine, PROMPTS[4], 24).wait()
    assert full.gen.finish_reason == "length" and full.gen.predicted_n == 24
    cut = len(full.text) // 2
    stop = full.text[cut : cut + 5]
    assert stop.strip()
    run = Run(engine, PROMPTS[4], 24, stop=[stop]).wait()
    assert run.gen.finish_reason == "stop"
    assert run.text == full.text[: full.text.index(stop)]


@pytest.mark.parametrize("overlap", [True, False])
def test_a_stop_string_found_while_the_next_step_decodes(engine: Engine, overlap: bool) -> None:
    """With the text worked out during the next decode (`OVERLAP`), a stop string ends
    the generation one step late and drops the extra token: text, tokens, counts and reason are
    those of the text worked out at once, beside a generation that runs on, and the slot serves
    the next request from its cache."""
    full = Run(engine, PROMPTS[5], 24).wait()
    stop = full.text[len(full.text) // 3 :][:4]
    assert stop.strip()
    engine.overlap = overlap
    before = engine.stats.stops_overlapped
    try:
        other = Run(engine, PROMPTS[6], 24)
        run = Run(engine, PROMPTS[5], 24, stop=[stop]).wait()
        assert other.wait().gen.finish_reason == "length" and other.gen.predicted_n == 24
    finally:
        engine.overlap = True
    assert run.gen.finish_reason == "stop"
    assert run.text == full.text[: full.text.index(stop)]
    # The token that completed the stop string counts; the one sampled after it does not.
    n = run.gen.predicted_n
    assert run.gen.tokens == full.gen.tokens[:n] and 0 < n < 24
    assert engine.stats.stops_overlapped - before == (1 if overlap else 0)
    again = Run(engine, PROMPTS[5], 4).wait()
    assert again.gen.cache_n == len(again.gen.prompt) - 1
    assert again.gen.tokens == full.gen.tokens[:4]
