"""Backend sampling (`"backend_sampling": true`): chains run inside llama.cpp's decode graph.

On the GPU this takes sampling off the CPU; here, on the CPU, the same code path runs with the
bundled model, so these tests pin its behaviour: the same greedy tokens as sampling on the CPU,
seeds that replay, chains kept per slot between requests with the same settings, and requests
whose chain llama.cpp cannot run in the graph (a grammar) still sampled correctly beside them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from llama_cpp.llama_grammar import LlamaGrammar
from llama_cpp.server.types import CreateChatCompletionRequest

from server.config import load_config
from server.engine import scheduler
from server.engine.api import Seeds, prepare
from server.engine.model import BatchedModel
from server.engine.sampling import (
    Chains,
    SamplingParams,
    build_chains,
    chains_for,
    in_graph,
    request_defaults,
)
from server.engine.scheduler import Engine, Event, Generation
from tests.engine.conftest import N_PARALLEL, batched_entry, engine_on
from tests.engine.test_engine import PROMPTS, agreeing, eog_tokens
from tests.support.servers import write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gpu_style(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """An engine that attaches every chain it can to its sequence, as on a GPU."""
    tmp = tmp_path_factory.mktemp("backend-sampling")
    entry = batched_entry(n_ctx=512, n_parallel=N_PARALLEL, n_threads_sampling=2, backend_sampling=True)
    model = BatchedModel(load_config(write_config(tmp / "c.json", [entry])).models[0])
    assert model.config.backend_sampling
    running = Engine(model)
    yield running
    running.close()
    model.close()


class Job:
    def __init__(
        self,
        engine: Engine,
        prompt: str | list[int],  # text, or the prompt's tokens as they are
        max_tokens: int,
        params: SamplingParams,
        chains: Chains | None = None,
    ) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()
        model = engine.model
        if chains is None:
            chains = build_chains(model.model, params, model.config.backend_sampling)
        self.gen = Generation.sampled_by(
            chains,
            params,
            prompt=model.completion_prompt(prompt) if isinstance(prompt, str) else list(prompt),
            max_tokens=max_tokens,
            sink=self._sink,
        )
        engine.submit(self.gen)

    def _sink(self, events: list[Event]) -> None:
        self.events += events
        if any(kind in ("done", "error") for kind, _ in events):
            self.done.set()

    def wait(self) -> Job:
        assert self.done.wait(240), "generation did not finish"
        assert self.events[-1][0] == "done", self.events[-1]
        return self

    @property
    def text(self) -> str:
        return "".join(v for k, v in self.events if k == "text")


def greedy(engine: Engine) -> SamplingParams:
    return SamplingParams(temperature=0.0, logit_bias={t: -100.0 for t in eog_tokens(engine)})


def test_the_default_follows_the_gpu(tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("defaults")
    on_cpu = load_config(write_config(tmp / "a.json", [batched_entry(n_gpu_layers=0)])).models[0]
    assert on_cpu.backend_sampling is False
    forced = load_config(write_config(tmp / "b.json", [batched_entry(backend_sampling=True)])).models[0]
    assert forced.backend_sampling is True


def test_greedy_in_the_graph_matches_greedy_on_the_cpu(gpu_style: Engine, engine: Engine) -> None:
    before = gpu_style.stats.backend_sampled
    for prompt in PROMPTS[:3]:
        ours = Job(gpu_style, prompt, 24, greedy(gpu_style)).wait()
        reference = Job(engine, prompt, 24, greedy(engine)).wait()
        assert ours.gen.tokens == reference.gen.tokens and len(ours.gen.tokens) == 24
    assert gpu_style.stats.backend_sampled - before == 3 * 24  # every token picked in the graph
    assert engine.stats.backend_sampled == 0  # the CPU engine attaches nothing


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0, repeat_penalty=1.5, frequency_penalty=0.5),  # graph picks
        SamplingParams(temperature=0.7, top_k=40, seed=5),  # graph keeps 40, the CPU finishes
        SamplingParams(temperature=0.7, top_k=0, seed=5),  # all in the graph
    ],
    ids=["greedy-penalties", "top-k-split", "no-top-k"],
)
def test_split_chains_sample_as_one_cpu_chain(
    gpu_style: Engine, engine: Engine, params: SamplingParams
) -> None:
    """The graph's share of the chain plus the CPU's share pick what the whole chain picks on
    the CPU (penalties included: each token goes back into the graph chain's history)."""
    params.logit_bias = {t: -100.0 for t in eog_tokens(engine)}
    ours = Job(gpu_style, PROMPTS[7], 32, params).wait().gen.tokens
    reference = Job(engine, PROMPTS[7], 32, params).wait().gen.tokens
    print(f"tokens agreeing with the CPU chain: {agreeing(ours, reference)} of 32")
    assert agreeing(ours, reference) >= 16, (ours, reference)


def test_a_seed_replays_and_the_slot_keeps_its_chain(gpu_style: Engine) -> None:
    params = SamplingParams(temperature=1.0, top_k=40, top_p=0.95, min_p=0.05, seed=77)
    first = Job(gpu_style, PROMPTS[5], 32, params).wait()
    attached, reused = gpu_style.stats.chains_attached, gpu_style.stats.chains_reused
    second = Job(gpu_style, PROMPTS[5], 32, params).wait()  # the same slot: its cache matches
    assert second.gen.slot == first.gen.slot
    assert (gpu_style.stats.chains_attached, gpu_style.stats.chains_reused) == (attached, reused + 1)
    assert second.gen.tokens == first.gen.tokens  # the reused chain was reset: the seed restarts
    others = [
        Job(gpu_style, PROMPTS[5], 32, SamplingParams(temperature=1.0, seed=seed)).wait().gen.tokens
        for seed in (78, 79)
    ]
    assert any(tokens != first.gen.tokens for tokens in others)


def test_grammar_requests_are_sampled_on_the_cpu_beside_graph_ones(gpu_style: Engine) -> None:
    grammar = LlamaGrammar.from_json_schema(
        json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}),
        verbose=False,
    )
    constrained = SamplingParams(temperature=0.0, grammar=grammar)
    assert not in_graph(constrained)
    alone = [Job(gpu_style, p, 16, greedy(gpu_style)).wait().gen.tokens for p in PROMPTS[:4]]
    before = gpu_style.stats.backend_sampled
    free = [Job(gpu_style, p, 16, greedy(gpu_style)) for p in PROMPTS[:4]]
    json_jobs = [Job(gpu_style, f"{p} As JSON:", 48, constrained) for p in PROMPTS[4:8]]
    for job in json_jobs:
        job.wait()
        assert job.gen.finish_reason == "stop", job.text
        assert isinstance(json.loads(job.text)["n"], int)
    for job, reference in zip(free, alone, strict=True):
        assert agreeing(job.wait().gen.tokens, reference) >= 8
    grammar_tokens = sum(j.gen.predicted_n + 1 for j in json_jobs)  # + the end-of-generation token
    assert gpu_style.stats.backend_sampled - before == 4 * 16  # the JSON ones were not
    assert grammar_tokens > 0


def test_every_slot_starts_with_the_chain_of_a_request_that_sets_nothing(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attaching a chain makes llama.cpp re-plan its compute buffers at the next decode, so
    every slot starts with the chain a request that sets no sampling field gets
    (`READY_CHAINS`): such a request into a slot never used reuses it; other settings attach
    their own. The ready chain's key is the API's: a chat body with no sampling field."""
    tmp = tmp_path_factory.mktemp("ready")
    with engine_on(tmp, backend_sampling=True, n_parallel=3, n_threads_sampling=1) as engine:
        stats = engine.stats
        assert stats.chains_ready == 3 and all(s.attached is not None for s in engine.slots)
        body = CreateChatCompletionRequest(messages=[{"role": "user", "content": "Tell me a story."}])
        sampling = prepare(engine.model, "chat", body, Seeds(1)).sampling
        chains = chains_for(engine.model, sampling)
        assert {s.attached_key for s in engine.slots} == {chains.graph_key}
        chains.close()
        Job(engine, "Once upon a time", 4, sampling).wait()
        assert (stats.chains_attached, stats.chains_reused) == (0, 1)
        Job(engine, "In a land far away", 4, greedy(engine)).wait()
        assert (stats.chains_attached, stats.chains_reused) == (1, 1)
    monkeypatch.setattr(scheduler, "READY_CHAINS", False)
    with engine_on(tmp, backend_sampling=True, n_parallel=2, n_threads_sampling=1) as engine:
        assert engine.stats.chains_ready == 0 and all(s.attached is None for s in engine.slots)
        Job(engine, "Once upon a time", 4, request_defaults()).wait()
        assert (engine.stats.chains_attached, engine.stats.chains_reused) == (1, 0)
