"""Continuous batching over one llama.cpp context with `n_parallel` sequences (slots).

One thread owns the context. Every step it builds one `llama_batch` from the next token of
every generating slot and then, within `n_batch`, chunks of the prompts still being evaluated,
calls `llama_decode` once, and samples every slot that produced logits with that slot's own
sampler chain. With backend sampling a chain is also attached to the slot's sequence and runs
inside the decode graph (on the GPU): it picks the token, or leaves its top-k candidates for the
CPU chain, so no row of logits comes back (see `sampling.build_chains`).

Requests wait in a FIFO queue for a free slot; a slot keeps the tokens it has evaluated after
its request ends, so the next request that starts with them (the next turn of the same
conversation) evaluates only what follows (see `prefix.choose_slot`).

The HTTP side talks to this thread only through `submit`, `cancel` and each generation's
`sink`, which receives the events of one step at a time: `("text", str)`, `("done",
finish_reason)` or `("error", message)`.

While a step decodes on the GPU (`OVERLAP`), the engine works out what does not need its result:
the text of the tokens it feeds (detokenizing, stop strings, events) and the settings and draws
of the rows the CPU finishes (`host_tail.prepare`). A stop string found then ends the generation
at the end of that step, whose extra token is dropped (its KV cell stays in the slot's cache,
which the next turn's prompt no longer matches there). On a GPU, idle slots between the step's
sequences get a throwaway token (`FILL_GAPS_UP_TO`), so llama.cpp decodes the step in one pass
(`micro_batches`); the prompts being evaluated fill a step's room in arrival order (`PROMPT_CHUNKS`).

About 1,300 lines on purpose: the step loop, admission and the per-slot state they mutate are one
piece of code that a single thread owns; split across modules, the invariant "only the engine
thread touches llama.cpp state" would no longer be visible in one file. Which slot a prompt goes
to, a pure function of the slots' tokens, is `prefix.py`.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp import _internals as internals

from server.engine import graph_tail, graph_top_k, micro_batches, tail_ops
from server.engine.host_cache import HostCache
from server.engine.host_sampling import HostPlan, HostSampler
from server.engine.host_tail import (
    HOST_TAIL_MIN_ROWS,
    NO_HISTORY,
    PenaltyCounts,
    TailPlan,
    TailRows,
    finish_prepared,
    penalize,
    prepare,
    read_rows,
)
from server.engine.model import BatchedModel
from server.engine.prefix import (
    Match,
    Matcher,
    Spelling,
    choose_slot,
    common_prefix,
    kept_for,
    text_match,
    token_match,
)
from server.engine.sampling import Chains, SamplingParams, build_sampler, chains_for, request_defaults
from server.engine.text import Pieces, TextStream
from server.timings import MS_DECIMALS, timings_object, usage_object

log = logging.getLogger("storybench.server")

# With a KV stream per slot, llama.cpp cuts a batch into micro-batches of consecutive sequence
# ids, each a pass over all the weights: a step over slots 0, 2 and 4 costs three decodes. On a
# GPU, where such a pass is most of a small step, a gap of at most this many slots between two
# of the step's sequences is filled with one throwaway token per idle slot (removed after the
# decode). Not on the CPU, where rows cost as much as passes (BENCHMARKS.md, issue 16, session 9).
FILL_GAPS_UP_TO = 16

# Work out the text of a step's tokens, and the next step's sampling settings and draws, while
# that step decodes (llama_decode returns once the GPU has the graph) rather than between steps:
# per-row Python that the GPU no longer waits for (BENCHMARKS.md, issue 16, session 9).
OVERLAP = True

# How a step's room (n_batch less its generating rows) goes to the prompts being evaluated.
# "fifo": the prompts in arrival order, each as much as is left, the last cut short, so the first
# to arrive get their first token soonest. "even": every prompt the same share, capped at what it
# has left (water filling), so a step's chunks are of one length and llama.cpp decodes them in one
# micro-batch (`micro_batches`), but prompts that arrive together all finish last. "even" was
# the GPU's default while generating rows shared prompt steps (session 10); since prompt steps
# carry no generating rows (`SEPARATE_PROMPTS`) "fifo" costs no more passes, and on an H100 it
# gave the first token sooner at equal tokens/s: 64 prompts at once, median 111-123 against
# 159-173 ms (1B) and 365-447 against 489-491 ms (8B); long stories over HTTP, turns 2-5 at
# 163-356 ms against session 14's 447-545 with "even" (BENCHMARKS.md, issue 16, session 15).
PROMPT_CHUNKS = "fifo"

# llama.cpp reuses a step's graph only when the next step has the same shape (the same sequences,
# tokens and output rows); any other shape is built afresh, on the CPU and again as a CUDA graph.
# A long story changes shape about four times a turn: a conversation leaves the step, its prompt
# comes in (two micro-batches), it comes back. On a GPU, (1) the slot whose answer just ended
# keeps a throwaway row with an output for up to HOLD_STEPS steps (removed after each step; its
# sample ignored), so the step keeps its shape until the next turn's prompt arrives, and (2)
# steps with prompt tokens carry no generating rows (`SEPARATE_PROMPTS`; at most every other
# step while some slot generates), so a prompt chunk is one micro-batch, not two, and the
# generating rows keep the decode step's shape (BENCHMARKS.md, issue 16, session 10).
HOLD_STEPS = 32
SEPARATE_PROMPTS = True

# With SEPARATE_PROMPTS, how many steps of prompt tokens may run back to back while some slot
# generates, before one decode step of the generating rows. 1: prompts and generating rows take
# turns. Each turn changes the step's shape twice (a graph built, a CUDA graph re-captured);
# more lets a wave of prompts (every story's next turn at once) finish before the rows that
# already generate go on, at the cost of their pausing that long. Measured on an H100 (1B long
# stories in the engine, answers of one length): 4 or 32 gave 3,415-3,756 tok/s against 3,602-
# 3,741 for 1, and later first tokens at turns 2-4 (84-110 against 36-70 ms). A shape change
# costs the two decode steps after it 1.2-1.4 ms in all (`benchmarks.prompt_cost`); bursts saved
# a tenth of the builds, too few to pay for the pause (BENCHMARKS.md, issue 16, session 16).
PROMPT_BURST = 1

# Rows whose graph chain left the CPU k candidates can go through their request's llama.cpp
# chain on the sampling threads, POOL_ROWS_PER_THREAD or more to a thread, the engine's thread
# taking one share itself, once a step has at least POOL_CHAIN_MIN_ROWS of them (None: never).
# Each row costs about 11 µs on an H100's host, one after another (0.37 ms a step at 32 rows),
# mostly in llama.cpp, where ctypes lets go of the GIL. Off until measured on a GPU: on the
# 2-core VM the hand-overs (a thread's wake-up, the GIL passed back and forth once a row) cost
# more than they saved, 0.26 against 0.10 ms a step at 16 rows, 0.29-0.32 against 0.16 at 32
# (BENCHMARKS.md, issue 16, session 12).
POOL_CHAIN_MIN_ROWS: int | None = None
POOL_ROWS_PER_THREAD = 4

# With backend sampling, every slot starts with the graph chain of a request that sets no
# sampling field (`sampling.request_defaults`) attached. Attaching a chain to a sequence makes
# llama.cpp re-plan its compute buffers (`sched_reserve`) at the next decode; a slot keeps its
# chain for later requests with the same key, so without this each slot's first request waits
# for one re-plan: 8-12 ms on an H100 or H200, against 4-5 ms into a used slot (BENCHMARKS.md,
# issue 16, session 15). The first request of all still waits for one. The defaults are what
# the evaluator's requests to a local model leave them at (top-k 40, repetition penalty 1.1);
# requests with other settings (e.g. repeat_penalty 1.0, as the benchmarks send both servers)
# attach their own.
READY_CHAINS = True

# With `"host_cache_mib"`, a slot's cache of at least this many tokens is copied to host memory
# before another conversation takes the slot, and a saved one goes back into a slot when a
# prompt continues it by at least this many tokens more than any slot's cache (`host_cache`).
HOST_CACHE_MIN_TOKENS = 64

Event = tuple[str, Any]
Sink = Callable[[list[Event]], None]
TailKey = tuple[int, bool]  # the candidates a row's graph leaves, and whether penalties follow
TailGroup = tuple[list[int], TailRows]  # output rows, and their settings and draws


@dataclass
class Generation:
    """One request inside the engine, and what it cost (llama.cpp server `timings`)."""

    prompt: list[int]
    max_tokens: int
    sampler: internals.LlamaSampler  # the CPU chain (`sampling.Chains.sampler`)
    sink: Sink
    stop: list[str] = field(default_factory=list)
    # The graph chain, its key and whether it takes accepted tokens (`sampling.Chains`); the
    # slot owns the graph chain from admission on.
    graph: internals.LlamaSampler | None = None
    graph_key: tuple[object, ...] | None = None
    accept_graph: bool = False
    # The engine's own top-k or greedy (`host_sampling`); `sampler` is then the chain after it.
    host: HostPlan | None = None
    # The chain after the graph's batched top-k, finished over the step's rows (`host_tail`).
    tail: TailPlan | None = None
    # To rebuild everything as one CPU chain should llama.cpp refuse the graph chain.
    params: SamplingParams | None = None
    cancelled: bool = False
    # filled by the engine
    stopped: bool = False  # a stop string was reached in text worked out during the next decode
    tokens: list[int] = field(default_factory=list)  # generated, the end-of-generation one excluded
    slot: int | None = None
    lane: int | None = None  # the lane it went to (`lanes.Lanes`)
    cache_n: int = 0
    predicted_n: int = 0
    finish_reason: str | None = None
    t_submit: float = field(default_factory=time.perf_counter)
    t_admit: float | None = None
    t_first: float | None = None
    t_end: float | None = None
    _text: TextStream | None = None
    _out: list[Event] = field(default_factory=list)

    @classmethod
    def sampled_by(cls, chains: Chains, params: SamplingParams, **fields: Any) -> Generation:
        """A generation that samples with `chains` (built from `params` by `build_chains`)."""
        return cls(
            sampler=chains.sampler,
            graph=chains.graph,
            graph_key=chains.graph_key,
            accept_graph=chains.accept_graph,
            host=chains.host,
            tail=chains.tail,
            params=params,
            **fields,
        )

    def close_samplers(self) -> None:
        """Free the request's own chains (a graph chain once admitted belongs to its slot)."""
        self.sampler.close()
        if self.graph is not None:
            self.graph.close()
            self.graph = None

    @property
    def prompt_n(self) -> int:
        return len(self.prompt) - self.cache_n

    def timings(self) -> dict[str, Any]:
        end = self.t_end or time.perf_counter()
        first = self.t_first or end
        return timings_object(
            prompt_tokens=len(self.prompt),
            cache_n=self.cache_n,
            prompt_ms=(first - (self.t_admit or first)) * 1000.0,
            predicted_n=self.predicted_n,
            predicted_ms=(end - first) * 1000.0,
            queue_ms=round(((self.t_admit or end) - self.t_submit) * 1000.0, MS_DECIMALS),
            slot=self.slot,
        )

    def usage(self) -> dict[str, Any]:
        return usage_object(
            prompt_tokens=len(self.prompt), completion_tokens=self.predicted_n, cached_tokens=self.cache_n
        )


@dataclass
class Slot:
    seq: int
    cache: list[int] = field(default_factory=list)  # tokens whose K/V the sequence holds
    gen: Generation | None = None
    at: int = 0  # prompt tokens evaluated so far (while prefilling)
    next_token: int | None = None  # sampled, to be decoded next step
    prompt_len: int = 0  # the last request's prompt: cache[:prompt_len]; its answer follows
    last_used: float = 0.0
    # The graph chain attached to this sequence, kept after its request ends: attaching another
    # makes llama.cpp re-plan its graph, so a next request with the same key (the next turn of
    # the conversation) resets and reuses it instead.
    attached: internals.LlamaSampler | None = None
    attached_key: tuple[object, ...] | None = None
    hold: int = 0  # steps left to keep a throwaway row with an output after its answer (`HOLD_STEPS`)


class _Batch:
    """A `llama_batch` over numpy buffers, refilled every step."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, np.int32)
        self.pos = np.zeros(capacity, np.int32)
        self.n_seq_id = np.ones(capacity, np.int32)
        self.seq = np.zeros(capacity, np.int32)
        self.logits = np.zeros(capacity, np.int8)
        i32 = ctypes.POINTER(ctypes.c_int32)
        base = self.seq.ctypes.data
        self._seq_ptrs = (i32 * capacity)(*[ctypes.cast(base + 4 * i, i32) for i in range(capacity)])
        self.struct = llama_cpp.llama_batch(
            n_tokens=0,
            token=self.token.ctypes.data_as(i32),
            embd=None,
            pos=self.pos.ctypes.data_as(i32),
            n_seq_id=self.n_seq_id.ctypes.data_as(i32),
            seq_id=self._seq_ptrs,
            logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq: int) -> int:
        i = self.n
        self.token[i], self.pos[i], self.seq[i], self.logits[i] = token, pos, seq, 1
        self.n += 1
        return i

    def add_rows(self, slots: list[Slot], tokens: list[int]) -> int:
        """One output row per slot: its token, after its cache, in its sequence; the first row's
        index."""
        i, k = self.n, len(slots)
        self.token[i : i + k] = tokens
        self.pos[i : i + k] = [len(s.cache) for s in slots]
        self.seq[i : i + k] = [s.seq for s in slots]
        self.logits[i : i + k] = 1
        self.n += k
        return i

    def add_run(self, tokens: list[int], pos: int, seq: int, output_last: bool) -> int:
        i, k = self.n, len(tokens)
        self.token[i : i + k] = tokens
        self.pos[i : i + k] = np.arange(pos, pos + k, dtype=np.int32)
        self.seq[i : i + k] = seq
        self.logits[i : i + k] = 0
        if output_last:
            self.logits[i + k - 1] = 1
        self.n += k
        return i + k - 1

    def decode(self, ctx: llama_cpp.llama_context_p) -> int:
        self.struct.n_tokens = self.n
        return int(llama_cpp.llama_decode(ctx, self.struct))


PROMPT_STEP_TOTALS = (
    "steps", "prompt_tokens", "decode", "sample", "busy", "micro_batches", "graph_builds", "launch",
)  # fmt: skip


@dataclass
class EngineStats:
    """Where the engine's time goes. `other` is Python: building the batch, detokenizing,
    stop strings, handing events over, admitting requests (between steps included)."""

    steps: int = 0
    tokens_generated: int = 0
    tokens_prompt: int = 0
    decode_s: float = 0.0
    sample_s: float = 0.0
    busy_s: float = 0.0  # steps plus the gaps between back-to-back steps
    backend_sampled: int = 0  # tokens picked in the decode graph
    chains_attached: int = 0  # chains attached to a sequence (each re-plans the graph once)
    chains_reused: int = 0  # requests that reused their slot's attached chain
    chains_ready: int = 0  # chains attached at start, before any request (`READY_CHAINS`)
    tail_rows: int = 0  # rows finished over the step's matrix (`host_tail`)
    # rows shared out between the engine's and the sampling threads (full rows of logits, and
    # rows of k candidates with `POOL_CHAIN_MIN_ROWS`)
    pooled_rows: int = 0
    # steps whose rows after the batched top-k went back to `llama_sampler_sample` (`host_tail`)
    tail_fallbacks: int = 0
    graph_tail_rows: int = 0  # rows whose whole chain ran in the decode graph (`graph_tail`)
    graph_tail_cpu_rows: int = 0  # rows of such chains the graph left to the CPU (not staged as built)
    sequences_per_step: float = 0.0  # running sum of generating sequences per step
    # Shared KV pool (`kv_pool`): admission rounds the queue's head waited for cells, idle caches dropped to
    # make room, and the most cells ever committed (running conversations at full length).
    pool_waits: int = 0
    pool_evictions: int = 0
    pool_peak: int = 0
    # Prompts that kept a cache past a re-tokenized answer (`prefix.text_match`), and the cached
    # tokens that kept beyond the token-for-token prefix.
    prompts_respelled: int = 0
    tokens_respelled: int = 0
    # Host copies of slots' caches (`host_cache_mib`): saved, put back, and the tokens put back.
    host_cache_saves: int = 0
    host_cache_restores: int = 0
    host_cache_tokens: int = 0
    # Host work done while a step decoded (`OVERLAP`): seconds, and the generations a stop
    # string ended one step late (their extra token dropped).
    overlapped_s: float = 0.0
    stops_overlapped: int = 0
    # Until llama_decode returned (the rest of `decode_s` waits for the GPU): what overlapped
    # work can hide behind is the difference.
    launch_s: float = 0.0
    # Throwaway tokens that joined a step's sequences into one micro-batch (`FILL_GAPS_UP_TO`).
    gap_fillers: int = 0
    # Throwaway output rows that kept a step's shape after an answer ended (`HOLD_STEPS`).
    held_rows: int = 0
    # Steps that only decoded (no prompt tokens), by number of sequences:
    # [steps, decode seconds, sample seconds, busy seconds, seconds until llama_decode returned].
    decode_only: dict[int, list[float]] = field(default_factory=dict)
    # Passes over the weights: the micro-batches llama.cpp cut the steps into (`micro_batches`),
    # and those whose graph llama.cpp built afresh rather than reusing the previous one (a new
    # shape: on the CPU, then again on the GPU as a new CUDA graph).
    micro_batches: int = 0
    graph_builds: int = 0
    # Steps that evaluated prompt tokens (with or without generating rows): totals by name
    # (`PROMPT_STEP_TOTALS`; seconds for decode, sample, busy and launch).
    prompt_steps: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PROMPT_STEP_TOTALS, 0.0))

    def add(
        self,
        generating: int,
        prompt_tokens: int,
        decode: float,
        sample: float,
        busy: float,
        launch: float,
        passes: int = 1,
        built: int = 0,
    ) -> None:
        self.steps += 1
        self.micro_batches += passes
        self.graph_builds += built
        self.launch_s += launch
        self.sequences_per_step += generating
        self.decode_s += decode
        self.sample_s += sample
        self.busy_s += busy
        if prompt_tokens == 0:
            row = self.decode_only.setdefault(generating, [0, 0.0, 0.0, 0.0, 0.0])
            for at, value in enumerate((1, decode, sample, busy, launch)):
                row[at] += value
        else:
            values = (1, prompt_tokens, decode, sample, busy, passes, built, launch)
            for name, value in zip(PROMPT_STEP_TOTALS, values, strict=True):
                self.prompt_steps[name] += value

    @staticmethod
    def _split(steps: float, decode: float, sample: float, busy: float) -> dict[str, float]:
        n = max(steps, 1)
        return {
            "decode": round(decode * 1000 / n, 3),
            "sample": round(sample * 1000 / n, 3),
            "other": round((busy - decode - sample) * 1000 / n, 3),
        }

    def summary(self) -> dict[str, Any]:
        p = self.prompt_steps
        steps = max(self.steps, 1)
        return {
            "steps": self.steps,
            "tokens_generated": self.tokens_generated,
            "tokens_prompt": self.tokens_prompt,
            "mean_sequences_per_step": round(self.sequences_per_step / steps, 3),
            "backend_sampled": self.backend_sampled,
            "chains_attached": self.chains_attached,
            "chains_ready": self.chains_ready,
            "chains_reused": self.chains_reused,
            "tail_rows": self.tail_rows,
            "pooled_rows": self.pooled_rows,
            "tail_fallbacks": self.tail_fallbacks,
            "graph_tail_rows": self.graph_tail_rows,
            "graph_tail_cpu_rows": self.graph_tail_cpu_rows,
            "pool_waits": self.pool_waits,
            "pool_evictions": self.pool_evictions,
            "pool_peak": self.pool_peak,
            "prompts_respelled": self.prompts_respelled,
            "tokens_respelled": self.tokens_respelled,
            "host_cache_saves": self.host_cache_saves,
            "host_cache_restores": self.host_cache_restores,
            "host_cache_tokens": self.host_cache_tokens,
            "overlapped_ms_per_step": round(self.overlapped_s * 1000 / steps, 3),
            "decode_call_ms_per_step": round(self.launch_s * 1000 / steps, 3),
            "stops_overlapped": self.stops_overlapped,
            "gap_fillers": self.gap_fillers,
            "held_rows": self.held_rows,
            "micro_batches": self.micro_batches,
            "graph_builds": self.graph_builds,
            "ms_per_step": self._split(self.steps, self.decode_s, self.sample_s, self.busy_s),
            "prompt_steps": {
                **{k: int(p[k]) for k in ("steps", "prompt_tokens", "micro_batches", "graph_builds")},
                **self._split(p["steps"], p["decode"], p["sample"], p["busy"]),
                "decode_call": round(p["launch"] * 1000 / max(p["steps"], 1), 3),
            },
            "decode_only_ms_per_step_by_sequences": {
                str(n): {
                    "steps": int(row[0]),
                    **self._split(*row[:4]),
                    "decode_call": round(row[4] * 1000 / max(row[0], 1), 3),
                }
                for n, row in sorted(self.decode_only.items())
            },
        }


@dataclass
class Launched:
    """A step whose decode is queued (`Engine._launch`), for `Engine._finish`."""

    start: float
    outputs: list[tuple[Slot, int]]  # the rows sampled, by slot
    fed: list[tuple[Slot, list[int]]]  # the tokens each slot's cache gains
    fillers: set[int]
    held: list[int]
    generating: int
    passes: int  # micro-batches llama.cpp cuts the step into
    t0: float  # llama_decode called
    launched: float  # llama_decode returned
    tails: dict[TailKey, TailGroup] | None  # prepared while it decoded (`OVERLAP`), else None


def _admitted(slot: Slot) -> float:
    return slot.gen.t_admit or 0.0 if slot.gen is not None else 0.0


class Engine:
    """The scheduler and its thread; one per loaded model."""

    def __init__(
        self, model: BatchedModel, lane: int | None = None, cond: threading.Condition | None = None
    ) -> None:
        """`lane`: this engine's number among the lanes that share the model (`lanes`). `cond`:
        a condition shared with the thread that drives it (`lanes.Lanes`); with it the engine
        starts no thread of its own."""
        self.model = model
        self.slots = [Slot(seq=i) for i in range(model.n_parallel)]
        self.stats = EngineStats()
        self._pending: deque[Generation] = deque()
        self._cond = cond or threading.Condition()
        self._stopping = False
        self._batch = _Batch(model.n_batch)
        self._pieces = Pieces(model.vocab)
        # Kept unless the config asks for every prompt tokenized afresh (`prefix.text_match`).
        self._spell = None if model.config.entry.retokenize_answers else Spelling(model.vocab, self._pieces)
        # Not with a shared pool, whose admission counts cells (`_make_room`); a lane's share.
        entry = model.config.entry
        share = (entry.host_cache_mib << 20) // (entry.lanes or 1)
        self._saved = HostCache(share) if share and model.pool is None else None
        self._eog: dict[int, bool] = {}
        self._last_step_end: float | None = None
        self.overlap = OVERLAP
        self.fill_gaps = FILL_GAPS_UP_TO if model.config.on_gpu else 0
        self.prompt_chunks = PROMPT_CHUNKS
        # One KV stream per slot: llama.cpp's micro-batches follow `micro_batches.sizes`.
        self._streams = model.pool is None and not model.config.entry.kv_unified
        # Not with the whole chain in the graph (its staged rows are the real ones only); held
        # rows only where each slot has its own cells (a full shared pool would fail the step).
        on_gpu = model.config.on_gpu and not model.config.entry.graph_tail
        self.hold_steps = HOLD_STEPS if on_gpu and self._streams else 0
        self.separate_prompts = SEPARATE_PROMPTS and on_gpu
        self.prompt_burst = PROMPT_BURST
        self.pool_chain_min_rows = POOL_CHAIN_MIN_ROWS
        self.host_tail_min_rows = HOST_TAIL_MIN_ROWS  # read at admission: a benchmark may set it
        self._prompt_run = 0  # prompt-only steps in a row just before this one (`PROMPT_BURST`)
        self._n_ubatch = llama_cpp.llama_n_ubatch(model.ctx)
        self._reused = llama_cpp.llama_perf_context(model.ctx).n_reused  # graphs llama.cpp reused
        # Tokens accepted last step whose text waits for this step's decode (`OVERLAP`).
        self._texts: list[tuple[Slot, Generation, int]] = []
        self._pool_size = model.config.n_threads_sampling
        self._backend_sampling = model.config.backend_sampling
        if self._backend_sampling:
            graph_top_k.available()  # loads its callbacks now, not under the first request
        elif model.config.entry.graph_tail:
            log.warning('%s: "graph_tail" has no effect: backend sampling is off (no GPU layers)', model.name)
        self._pool = (
            ThreadPoolExecutor(self._pool_size, thread_name_prefix="sampler") if self._pool_size > 1 else None
        )
        self._host = HostSampler()
        self._penalty_counts: PenaltyCounts | None = None  # the penalties' windows by slot (`host_tail`)
        if self._backend_sampling and READY_CHAINS:
            self._ready_chains()
        name = f"engine:{model.name}" if lane is None else f"engine:{model.name}:{lane}"
        self._thread: threading.Thread | None = None
        if cond is None:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    # --- the HTTP side -------------------------------------------------------------------

    def submit(self, gen: Generation) -> None:
        if not gen.prompt or len(gen.prompt) + gen.max_tokens > self.model.n_ctx_slot:
            raise ValueError(
                f"prompt of {len(gen.prompt)} tokens + max_tokens {gen.max_tokens} does not fit "
                f"the slot context of {self.model.n_ctx_slot} tokens"
            )
        gen._text = TextStream(self._pieces, gen.stop)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the engine is shutting down")
            self._pending.append(gen)
            self._cond.notify()

    def cancel(self, gen: Generation) -> None:
        """Stop a generation (its client went away); its slot is free at the next step."""
        with self._cond:
            gen.cancelled = True
            self._cond.notify()

    def reusable(self, gen: Generation) -> int:
        """The cached tokens an idle slot here would keep for `gen`, when they make this engine
        the place for it (`prefix.kept_for`, with the matcher admission uses); 0 when its idle
        slots are all spoken for by its queue. Lanes route by it (`lanes.Lanes.choose`)."""
        with self._cond:
            idle = [s for s in self.slots if s.gen is None]
            if len(idle) <= len(self._pending):
                return 0
            return kept_for(idle, gen.prompt, self._matcher(gen.max_tokens))

    def _matcher(self, max_tokens: int) -> Matcher:
        """Token for token, or by text past a re-spelled answer (`prefix.text_match`); a spliced
        prompt must leave room for `max_tokens`."""
        if self._spell is None:
            return token_match
        return text_match(self._spell, self.model.n_ctx_slot - max_tokens)

    @property
    def busy_slots(self) -> int:
        return sum(1 for s in self.slots if s.gen is not None)

    @property
    def queued(self) -> int:
        return len(self._pending)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread (a lane's engine: once its driver stopped); generations still running
        or queued end with an error."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        if self._thread is not None and self._thread.is_alive():
            log.warning("engine thread of %r did not stop within %.0f s", self.model.name, timeout)
            return
        for slot in self.slots:
            if slot.gen is not None:
                self._fail(slot, "the server is shutting down")
        while self._pending:
            gen = self._pending.popleft()
            gen.close_samplers()
            gen.sink([("error", "the server is shutting down")])
        for slot in self.slots:
            self._detach(slot)

    # --- the engine thread ---------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self.wants_step():
                    self._last_step_end = None  # idle: the wait is not engine time
                    self._cond.wait()
                if self._stopping:
                    return
            step = self.launch_step()
            if step is not None:
                self.finish_step(step)

    def wants_step(self) -> bool:
        """Whether a request waits or a slot generates (with the lock held)."""
        return bool(self._pending) or self._has_work()

    def launch_step(self) -> Launched | None:
        """Admit what waits, then launch a step if any slot has work (None if none, or if it
        failed: what was in the batch then ends with an error and the engine keeps serving).
        With `finish_step`, what the engine's thread, or the thread driving its lane, runs."""
        with self._cond:
            self._admit()
        step = None
        try:
            self._drop_cancelled()
            if self._has_work():
                step = self._launch()
        except Exception as exc:
            self._recover(exc)
        if step is None:
            self._last_step_end = None  # idle until the next step: not engine time
        self._publish()
        return step

    def finish_step(self, step: Launched) -> None:
        """Wait for a launched step and take its tokens (on failure, as `launch_step`). Its
        events go out with the next `launch_step`'s, once the next decode runs: here the GPU
        would wait for them. A generation that ends sends its own (`_release`, `_fail`)."""
        try:
            self._finish(step)
        except Exception as exc:
            self._recover(exc)

    def _recover(self, exc: Exception) -> None:
        """After a failed step: fail what was in the batch, keep serving."""
        log.exception("engine step failed")
        self._texts.clear()
        for slot in self.slots:
            if slot.gen is not None:
                self._fail(slot, f"generation failed: {exc}")
            else:  # a throwaway token (`_fillers`) may have stayed behind its cache
                llama_cpp.llama_memory_seq_rm(self.model.memory, slot.seq, len(slot.cache), -1)

    def _has_work(self) -> bool:
        return any(s.gen is not None for s in self.slots)

    def _admit(self) -> None:
        """Move queued requests into idle slots, in arrival order (called with the lock held).
        With a shared KV pool the request at the head waits while the running conversations
        and it would not fit (`_make_room`), so a running one never runs out of cells."""
        while self._pending:
            idle = [s for s in self.slots if s.gen is None]
            if not idle:
                return
            gen = self._pending[0]
            if gen.cancelled:
                self._pending.popleft()
                gen.close_samplers()
                continue
            match = self._matcher(gen.max_tokens)
            slot, found = choose_slot(idle, gen.prompt, match)
            if self._saved is not None:
                found = self._from_host(slot, found, gen.prompt, match)
            if found.prompt is not gen.prompt:  # the same text on the tokens the cache holds
                self.stats.prompts_respelled += 1
                self.stats.tokens_respelled += found.kept - common_prefix(slot.cache, gen.prompt)
                gen.prompt = found.prompt
            keep = min(found.kept, len(gen.prompt) - 1)  # the last prompt token gives the logits
            if self.model.pool is not None and not self._make_room(slot, keep, gen, idle):
                self.stats.pool_waits += 1
                return
            self._pending.popleft()
            if keep < len(slot.cache):
                if keep < len(slot.cache) // 2:  # another conversation takes the slot
                    self._save(slot)
                mem = self.model.memory
                if not llama_cpp.llama_memory_seq_rm(mem, slot.seq, keep, -1):
                    llama_cpp.llama_memory_seq_rm(mem, slot.seq, -1, -1)
                    keep = 0
                del slot.cache[keep:]
            slot.gen, slot.at, slot.next_token, slot.prompt_len = gen, keep, None, len(gen.prompt)
            gen.slot, gen.cache_n, gen.t_admit = slot.seq, keep, time.perf_counter()
            self._attach(slot, gen)

    def _from_host(self, slot: Slot, found: Match, prompt: list[int], match: Matcher) -> Match:
        """Put back into `slot` the saved conversation (`host_cache`) this prompt continues
        furthest, when that beats what the slot keeps by HOST_CACHE_MIN_TOKENS (the slot's own
        cache saved first); the match admission goes on with."""
        assert self._saved is not None
        if found.kept + HOST_CACHE_MIN_TOKENS > len(prompt):  # no saved copy can beat the slot
            return found
        best = self._saved.best(prompt, match)
        if best is None or best[1].kept < found.kept + HOST_CACHE_MIN_TOKENS:
            return found
        self._save(slot)
        tokens = self._saved.restore(self.model.ctx, self.model.memory, best[0], slot.seq)
        slot.cache[:] = tokens or []
        if tokens is None:
            log.warning("llama.cpp refused a saved conversation for slot %d; evaluating it", slot.seq)
            return Match(0, prompt)
        self.stats.host_cache_restores += 1
        self.stats.host_cache_tokens += best[1].kept
        return best[1]

    def _save(self, slot: Slot) -> None:
        """Copy the slot's cache to host memory (`host_cache`) before it is dropped."""
        saved = self._saved
        if (
            saved is not None
            and len(slot.cache) >= HOST_CACHE_MIN_TOKENS
            and saved.save(self.model.ctx, slot.seq, slot.cache)
        ):
            self.stats.host_cache_saves += 1

    def _make_room(self, slot: Slot, keep: int, gen: Generation, idle: list[Slot]) -> bool:
        """Whether `gen` fits the KV pool in `slot` (keeping `keep` cached tokens) beside the
        running conversations at their full length (prompt + max_tokens), after dropping the
        caches of idle slots, least recently used first, as far as needed. Nothing is dropped
        when even that would not be enough: the request waits for a running one to end."""
        assert self.model.pool is not None
        running = sum(max(len(s.cache), len(s.gen.prompt) + s.gen.max_tokens) for s in self.slots if s.gen)
        others = sorted((s for s in idle if s is not slot and s.cache), key=lambda s: s.last_used)
        kept = sum(len(s.cache) for s in others)
        need = running + kept + len(gen.prompt) + gen.max_tokens
        if need - kept > self.model.pool:
            return False
        for other in others:
            if need <= self.model.pool:
                break
            need -= len(other.cache)
            llama_cpp.llama_memory_seq_rm(self.model.memory, other.seq, -1, -1)
            other.cache.clear()
            other.prompt_len = 0
            self.stats.pool_evictions += 1
        self.stats.pool_peak = max(self.stats.pool_peak, need)
        return True

    def _attach(self, slot: Slot, gen: Generation) -> None:
        """Give the slot's sequence the request's graph chain (or its own, reset), or none."""
        graph, gen.graph = gen.graph, None  # the slot owns it from here
        few = self.busy_slots + len(self._pending) < self.host_tail_min_rows
        if gen.tail is not None and not gen.tail.in_graph and few:
            # Few rows: llama.cpp's chain, row by row, costs less than the numpy passes. Both
            # draw the same tokens; a generation keeps one of them for its whole life.
            gen.tail = None
        if (
            gen.tail is not None
            and gen.tail.penalties is not None
            and graph is not None
            and self._backend_sampling
        ):
            if self._penalty_counts is None:  # n_vocab bytes a slot, made at the first use
                self._penalty_counts = PenaltyCounts(len(self.slots), self.model.n_vocab)
            self._penalty_counts.lend(slot.seq, gen.tail)
        if graph is None or not self._backend_sampling:
            if graph is not None:
                graph.close()
            gen.tail = None
            self._detach(slot)
            return
        if slot.attached is not None and slot.attached_key == gen.graph_key:
            llama_cpp.llama_sampler_reset(slot.attached.sampler)  # as new: penalties forget
            graph.close()
            self.stats.chains_reused += 1
            return
        self._detach(slot)
        graph_tail.bind(graph.sampler, slot.seq)
        if llama_cpp.llama_set_sampler(self.model.ctx, slot.seq, graph.sampler):
            slot.attached, slot.attached_key = graph, gen.graph_key
            self.stats.chains_attached += 1
            return
        log.warning("llama.cpp refused backend sampling for slot %d; sampling on the CPU", slot.seq)
        graph.close()
        gen.sampler.close()
        assert gen.params is not None
        gen.sampler = build_sampler(self.model.model, gen.params)
        gen.accept_graph, gen.tail = False, None

    def _ready_chains(self) -> None:
        """Attach the graph chain of a request that sets no sampling field (`READY_CHAINS`) to
        every slot before the first request: llama.cpp re-plans its compute buffers at the next
        decode after any chain is attached, and a conversation's first request into a slot
        would otherwise wait for that."""
        params = request_defaults()
        for slot in self.slots:
            chains = chains_for(self.model, params)
            chains.sampler.close()
            graph = chains.graph
            if graph is None:
                return
            graph_tail.bind(graph.sampler, slot.seq)
            if not llama_cpp.llama_set_sampler(self.model.ctx, slot.seq, graph.sampler):
                graph.close()
                return
            slot.attached, slot.attached_key = graph, chains.graph_key
            self.stats.chains_ready += 1

    def _detach(self, slot: Slot) -> None:
        """Take the slot's graph chain off its sequence and free it (engine thread only)."""
        chain = slot.attached
        if chain is None:
            return
        llama_cpp.llama_set_sampler(self.model.ctx, slot.seq, None)
        slot.attached, slot.attached_key = None, None
        chain.close()

    def _drop_cancelled(self) -> None:
        for slot in self.slots:
            if slot.gen is not None and slot.gen.cancelled:
                self._release(slot, None)

    def _launch(self) -> Launched:
        """A step up to its decode queued on the device (and the host work that overlaps it);
        `_finish` waits for it and takes its tokens. Apart, so that a thread driving several
        lanes (`lanes.Lanes`) can finish one lane's step while another's decodes."""
        start = time.perf_counter()
        model, batch = self.model, self._batch
        batch.clear()
        outputs: list[tuple[Slot, int]] = []
        fed: list[tuple[Slot, list[int]]] = []
        rows: list[Slot] = []  # the generating slots, in sequence order
        waiting: list[Slot] = []  # the slots whose prompt is being evaluated
        in_graph = False  # whether some generation's whole chain runs in the graph (`graph_tail`)
        for slot in self.slots:  # one pass: this runs while the GPU waits, every step
            gen = slot.gen
            if gen is None:
                continue
            (waiting if slot.next_token is None else rows).append(slot)
            in_graph = in_graph or (gen.tail is not None and gen.tail.in_graph)
        generating = len(rows)
        waiting.sort(key=_admitted)
        # With SEPARATE_PROMPTS, waiting prompts and generating rows take turns (`PROMPT_BURST`).
        prompt_only = self.separate_prompts and bool(waiting)
        prompt_only = prompt_only and (not generating or self._prompt_run < self.prompt_burst)
        if self.separate_prompts and generating and not prompt_only:
            waiting = []
        self._prompt_run = self._prompt_run + 1 if prompt_only else 0
        if prompt_only:
            generating = 0
        # Prompt chunks share what is left of n_batch (`prompt_chunks`)...
        chunks = self._chunks(waiting, batch.capacity - generating)
        # Not in a step with prompt tokens (it changes shape anyway), nor beside rows whose whole
        # chain runs in the graph (`graph_tail` stages the real rows only).
        held = [] if chunks or in_graph else self._held()
        # ...and go into the batch in sequence order: with a KV stream per sequence llama.cpp
        # splits a batch into micro-batches of consecutive sequence ids (`_fillers`). The
        # fillers need room too: the last chunks give it up.
        fillers = self._fillers(chunks, held, prompt_only)
        over = generating + len(held) + sum(chunks.values()) + len(fillers) - batch.capacity
        while over > 0 and chunks:
            last = next(reversed(chunks))
            chunks[last] -= min(over, chunks[last])
            if chunks[last] == 0:
                del chunks[last]
                fillers = self._fillers(chunks, held, prompt_only)
            over = generating + len(held) + sum(chunks.values()) + len(fillers) - batch.capacity
        self.stats.gap_fillers += len(fillers)
        self.stats.held_rows += len(held)
        alone = not (fillers or held or chunks or prompt_only)
        if alone:  # the generating rows alone (most steps): into the batch at once
            tokens = [token for slot in rows if (token := slot.next_token) is not None]  # all of them
            first = batch.add_rows(rows, tokens)
            outputs = [(slot, first + i) for i, slot in enumerate(rows)]
            fed = [(slot, [token]) for slot, token in zip(rows, tokens, strict=True)]
        for slot in () if alone else self.slots:
            gen = slot.gen
            if slot.seq in fillers:
                batch.add_run([slot.cache[-1] if slot.cache else 0], len(slot.cache), slot.seq, False)
                continue
            if slot.seq in held:
                slot.hold -= 1
                batch.add(slot.cache[-1], len(slot.cache), slot.seq)  # an output row, never sampled
                continue
            if gen is None:
                continue
            if slot.next_token is not None and not prompt_only:
                outputs.append((slot, batch.add(slot.next_token, len(slot.cache), slot.seq)))
                fed.append((slot, [slot.next_token]))
            elif slot.seq in chunks:
                chunk = gen.prompt[slot.at : slot.at + chunks[slot.seq]]
                done = slot.at + len(chunk) == len(gen.prompt)
                last = batch.add_run(chunk, len(slot.cache), slot.seq, output_last=done)
                slot.at += len(chunk)
                fed.append((slot, chunk))
                if done:
                    outputs.append((slot, last))
                self.stats.tokens_prompt += len(chunk)
        self._stage(outputs, held, in_graph)
        t0 = time.perf_counter()
        rc = batch.decode(model.ctx)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} for a batch of {batch.n} tokens")
        launched = time.perf_counter()
        seqs, counts = np.unique(batch.seq[: batch.n], return_counts=True)  # in batch order
        runs = list(zip(seqs.tolist(), counts.tolist(), strict=True))
        passes = micro_batches.passes(runs, self._n_ubatch, self._streams)
        tails = self._overlapped(outputs) if self.overlap else None  # while the GPU decodes
        return Launched(start, outputs, fed, fillers, held, generating, passes, t0, launched, tails)

    def _finish(self, step: Launched) -> None:
        """Wait for a `_launch`ed step and take its tokens."""
        model, batch = self.model, self._batch
        outputs, fed, fillers, held, t0 = step.outputs, step.fed, step.fillers, step.held, step.t0
        llama_cpp.llama_synchronize(model.ctx)
        t1 = time.perf_counter()
        reused = llama_cpp.llama_perf_context(model.ctx).n_reused
        built, self._reused = step.passes - (reused - self._reused), reused
        for seq in (*fillers, *held):  # the throwaway tokens out of the idle slots' caches
            llama_cpp.llama_memory_seq_rm(model.memory, seq, len(self.slots[seq].cache), -1)
        tails = step.tails if step.tails is not None else self._prepare_tails(outputs)
        for slot, tokens in fed:
            slot.cache.extend(tokens)
        now = time.perf_counter()
        for (slot, _), token in zip(outputs, self._sample(outputs, tails), strict=True):
            gen = slot.gen
            assert gen is not None
            if gen.t_first is None:
                gen.t_first = now
            self._accept(slot, gen, token)
        t2 = time.perf_counter()
        # Back to back with the previous step: the gap (events, admission) counts as busy.
        busy_from = step.start if self._last_step_end is None else self._last_step_end
        prompt_tokens = batch.n - step.generating - len(fillers) - len(held)
        self.stats.add(
            step.generating, prompt_tokens, t1 - t0, t2 - t1, t2 - busy_from, step.launched - t0,
            step.passes, built,
        )  # fmt: skip
        self._last_step_end = t2

    def _chunks(self, waiting: list[Slot], room: int) -> dict[int, int]:
        """The prompt tokens each waiting slot (in arrival order) evaluates this step, within
        `room` (`PROMPT_CHUNKS`): "even" gives them all the largest equal share that fits,
        or what a prompt has left if less; "fifo", or "even" when not every waiting prompt can
        have a token, fills the room in arrival order."""
        left = [len(s.gen.prompt) - s.at for s in waiting if s.gen is not None]
        share = 0
        if self.prompt_chunks == "even" and left:
            lo, hi = 0, min(max(left), room)
            while lo < hi:  # the largest share whose capped sum fits the room
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if sum(min(n, mid) for n in left) <= room else (lo, mid - 1)
            share = lo
        chunks: dict[int, int] = {}
        for slot, n in zip(waiting, left, strict=True):
            if room <= 0:
                break
            chunks[slot.seq] = take = min(n, share) if share else min(n, room)
            room -= take
        return chunks

    def _held(self) -> list[int]:
        """The idle slots that keep a throwaway output row this step (`HOLD_STEPS`): their
        answer ended at most `hold_steps` steps ago, no new request has them yet, and their
        context has a cell to spare."""
        return [
            s.seq
            for s in self.slots
            if s.hold > 0 and s.gen is None and s.cache and len(s.cache) < self.model.n_ctx_slot
        ]

    def _fillers(self, chunks: dict[int, int], held: list[int], prompt_only: bool) -> set[int]:
        """The slots that get a throwaway token this step: those in a gap of at most
        `fill_gaps` slots between two slots that decode (generating, or in `chunks`), so that
        llama.cpp, which cuts a batch into micro-batches of consecutive sequences, puts the
        step's one-token rows into one micro-batch, not one per run of slots. Only with a KV
        stream per slot (a shared pool is one stream, cut freely), and only where the slot's
        context has a cell to spare."""
        if not self.fill_gaps or not self._streams:
            return set()
        fed = [
            s.seq
            for s in self.slots
            if (s.next_token is not None and not prompt_only) or s.seq in chunks or s.seq in held
        ]
        fillers: set[int] = set()
        for before, after in zip(fed, fed[1:], strict=False):
            gap = range(before + 1, after)
            if 0 < len(gap) <= self.fill_gaps:
                fillers.update(g for g in gap if len(self.slots[g].cache) < self.model.n_ctx_slot)
        if not fillers:
            return fillers
        # Only where they save a pass: beside prompt chunks a one-token filler cuts them instead.
        runs = [(seq, chunks.get(seq, 1)) for seq in fed]
        return fillers if micro_batches.worth_filling(runs, fillers, self._n_ubatch) else set()

    def _stage(self, outputs: list[tuple[Slot, int]], held: list[int], in_graph: bool) -> None:
        """Before the decode: each output row's sequence, and for the rows whose chain runs
        whole in the graph (`graph_tail`), this step's draw and settings (`in_graph` False: no
        generation has such a chain). Held rows (`_held`) are staged like generating ones, so a
        graph built now is the one their step reuses."""
        if not self._backend_sampling:
            return
        seqs = [s.seq for s, _ in outputs]
        plans = (
            [(s.gen.tail if s.gen is not None and s.attached is not None else None) for s, _ in outputs]
            if in_graph
            else []
        )
        if not any(p is not None and p.in_graph for p in plans):
            # which sequences are in the step: the others' samplers idle
            graph_tail.stage(sorted(seqs + held) if held else seqs)
            return
        uniforms: list[float] = []
        rows: list[tuple[float, ...]] = []
        for plan in plans:
            if plan is None or not plan.in_graph:
                uniforms.append(0.0)
                rows.append(tail_ops.OFF)
                continue
            plan.uniform = plan.rng.next()
            uniforms.append(plan.uniform)
            rows.append(plan.graph_settings)
        penalized = any(p is not None and p.in_graph and p.penalties is not None for p in plans)
        histories = [p.history if p is not None else NO_HISTORY for p in plans] if penalized else None
        graph_tail.stage(seqs, uniforms, rows, histories)

    def _overlapped(self, outputs: list[tuple[Slot, int]]) -> dict[TailKey, TailGroup]:
        """The host work that does not wait for the decode: the text of the tokens this step
        feeds (`_work_out_texts`), and the settings and draws of its rows the CPU will finish."""
        start = time.perf_counter()
        if self._texts:
            self._work_out_texts()
        tails = self._prepare_tails(outputs)
        self.stats.overlapped_s += time.perf_counter() - start
        return tails

    def _prepare_tails(self, outputs: list[tuple[Slot, int]]) -> dict[TailKey, TailGroup]:
        """The rows whose graph leaves candidates for the CPU to finish over the step's matrix
        (`host_tail`), by kind (candidates, penalized), with their settings and draws. Rows
        whose whole chain runs in the graph (`graph_tail`) are not here: whether the CPU
        finishes them is only known once the graph ran."""
        if not self._backend_sampling:
            return {}
        groups: dict[TailKey, tuple[list[int], list[TailPlan]]] = {}
        for n, (slot, _) in enumerate(outputs):
            plan = slot.gen.tail if slot.gen is not None and slot.attached is not None else None
            if plan is not None and not plan.in_graph:
                rows, plans = groups.setdefault((plan.candidates, plan.penalties is not None), ([], []))
                rows.append(n)
                plans.append(plan)
        return {key: (rows, prepare(plans)) for key, (rows, plans) in groups.items()}

    def _sample(self, outputs: list[tuple[Slot, int]], tails: dict[TailKey, TailGroup]) -> list[int]:
        """One token per output row. Rows with a host plan are sampled together over the step's
        matrix of logits (`host_sampling`: numpy's top-k or greedy, then each request's chain
        after it). The others go through their request's llama.cpp chain: a slot whose graph
        chain ran in the decode only reads back its pick or finishes its top-k candidates
        (cheap, done here); full rows of logits go to the pool, when there is one, to run in
        parallel (ctypes releases the GIL; each chain has its own buffers, and the context's
        output rows are only read once `llama_get_logits` has put them in order)."""
        ctx = self.model.ctx
        tokens = [-1] * len(outputs)
        gens = [slot.gen for slot, _ in outputs]
        # One pass over the rows (this runs while the GPU waits): those sampled over the step's
        # logits on the host, those whose whole chain ran in the graph, and those whose picks
        # go into a penalties' history afterwards.
        rows: list[tuple[int, HostPlan, Any]] = []
        in_graph: list[tuple[int, TailPlan]] = []
        accepted: list[tuple[int, Any]] = []  # the graph chain's own penalties keep the history
        remembered: list[tuple[int, TailPlan]] = []  # `host_tail`'s and `graph_tail`'s penalties keep it
        for n, (slot, _) in enumerate(outputs):
            g = slot.gen
            if g is None:
                continue
            if g.host is not None:
                rows.append((n, g.host, g.sampler))
            plan = g.tail
            if slot.attached is not None and plan is not None and plan.in_graph:
                in_graph.append((n, plan))
            if slot.attached is not None and g.accept_graph:
                accepted.append((n, slot.attached.sampler))
            elif plan is not None and plan.penalties is not None:
                remembered.append((n, plan))
        if rows:
            host = [n for n, _, _ in rows]
            shape = (len(outputs), self.model.n_vocab)
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=shape)
            map_ = self._pool.map if self._pool is not None and len(host) > 1 else map
            for n, token in zip(host, self._host.sample(logits, rows, map_, self._pool_size), strict=True):
                tokens[n] = token
        left: dict[TailKey, list[int]] = {}  # `graph_tail` rows the graph left to the CPU, by kind
        for n, plan in in_graph:
            penalized = plan.penalties is not None
            token = graph_tail.packed_token(ctx, outputs[n][1], n, plan.top_k, penalized)
            if token < 0:  # not packed (`graph_tail.PACKED`), or left to the CPU
                token = llama_cpp.llama_get_sampled_token_ith(ctx, outputs[n][1])
            if token >= 0:
                tokens[n] = token
                self.stats.graph_tail_rows += 1
                self.stats.backend_sampled += 1
                continue
            self.stats.graph_tail_cpu_rows += 1
            left.setdefault((plan.candidates, penalized), []).append(n)
        finishing: list[tuple[TailKey, list[int], TailRows | None]]
        finishing = [(key, rows, prepared) for key, (rows, prepared) in tails.items()]
        finishing += [(key, rows, None) for key, rows in left.items()]
        for (k, penalized), finished, prepared in finishing:
            picked = self._finish_tails(outputs, gens, finished, k, penalized, prepared)
            for n, token in zip(finished, picked, strict=True):
                tokens[n] = token
        rest = [n for n, token in enumerate(tokens) if token == -1]
        on_cpu = [n for n in rest if outputs[n][0].attached is None]
        self.stats.backend_sampled += len(rest) - len(on_cpu)
        # Rows of k candidates (each costs little, handing it over about as much) go to the
        # threads, with the rest, only from `pool_chain_min_rows` on, when set; full rows of
        # logits from two on, one a thread at least.
        pooled: list[int] = []
        per, least = 1, self.pool_chain_min_rows
        if self._pool is not None and least is not None and len(rest) - len(on_cpu) >= least:
            pooled, per = rest, POOL_ROWS_PER_THREAD
        elif self._pool is not None and len(on_cpu) >= 2:
            pooled = on_cpu
        if pooled:
            chains = {n: (g.sampler.sampler, outputs[n][1]) for n in rest if (g := gens[n]) is not None}
            shared = set(pooled)
            for n in rest:
                if n not in shared:
                    tokens[n] = llama_cpp.llama_sampler_sample(chains[n][0], ctx, chains[n][1])
            self._sample_pooled(pooled, chains, tokens, per)
        else:
            sample = llama_cpp.llama_sampler_sample
            for n in rest:
                if (g := gens[n]) is not None:
                    tokens[n] = sample(g.sampler.sampler, ctx, outputs[n][1])
        for n, chain in accepted:
            llama_cpp.llama_sampler_accept(chain, tokens[n])
        for n, plan in remembered:
            plan.remember(tokens[n])
        return tokens

    def _sample_pooled(
        self, rows: list[int], chains: dict[int, tuple[Any, int]], tokens: list[int], per: int
    ) -> None:
        """`rows` through their chains on the sampling threads, at least `per` rows to a thread,
        the engine's thread doing the first share itself. Safe in parallel: each chain has its
        own buffers and state, and once `llama_get_logits` has waited for the step and put the
        context's output rows in order, `llama_sampler_sample` only reads them."""
        ctx = self.model.ctx
        self.stats.pooled_rows += len(rows)
        llama_cpp.llama_get_logits(ctx)
        k = max(1, min(self._pool_size, len(rows) // per))
        groups = [rows[j::k] for j in range(k)]

        def sample(group: list[int]) -> list[int]:
            return [llama_cpp.llama_sampler_sample(chains[n][0], ctx, chains[n][1]) for n in group]

        assert self._pool is not None
        futures = [self._pool.submit(sample, group) for group in groups[1:]]
        for group, picked in zip(groups, [sample(groups[0]), *(f.result() for f in futures)], strict=True):
            for n, token in zip(group, picked, strict=True):
                tokens[n] = token

    def _finish_tails(
        self,
        outputs: list[tuple[Slot, int]],
        gens: list[Generation | None],
        rows: list[int],
        k: int,
        penalized: bool,
        prepared: TailRows | None,
    ) -> list[int]:
        """Finish the rows whose graph kept k candidates, all at once (`host_tail`), after their
        penalties when `penalized` (`graph_tail` applies them in the graph otherwise), with their
        settings and draws `prepared` before the decode (drawn here if None); -1 for every row
        (llama.cpp's chain then) when llama.cpp's buffers are not laid out as expected."""
        plans = [g.tail for n in rows if (g := gens[n]) is not None and g.tail is not None]
        read = read_rows(self.model.ctx, [outputs[n][1] for n in rows], rows, self.model.n_vocab, k)
        if read is None or len(plans) != len(rows):
            self.stats.tail_fallbacks += 1
            return [-1] * len(rows)
        self.stats.backend_sampled += len(rows)
        self.stats.tail_rows += len(rows)
        ids, logits = read
        if penalized:
            ids, logits = penalize(ids, logits, plans)
        if prepared is None:  # a row the graph was to finish already took its draw before the decode
            prepared = prepare(plans, [p.uniform if p.in_graph else p.rng.next() for p in plans])
        return finish_prepared(ids, logits, prepared)

    def _is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = self.model.is_eog(token)
        return eog

    def _accept(self, slot: Slot, gen: Generation, token: int) -> None:
        if gen.stopped or self._is_eog(token):  # stopped: `token` follows the stop string, dropped
            self._release(slot, "stop")
            return
        gen.predicted_n += 1
        gen.tokens.append(token)
        self.stats.tokens_generated += 1
        if self.overlap and gen.predicted_n < gen.max_tokens:
            slot.next_token = token
            self._texts.append((slot, gen, token))
            return
        if self._push_text(gen, token):
            self._release(slot, "stop")
        elif gen.predicted_n >= gen.max_tokens:
            self._release(slot, "length")
        else:
            slot.next_token = token

    def _push_text(self, gen: Generation, token: int) -> bool:
        """The token's text into the generation's events; whether a stop string was reached."""
        assert gen._text is not None
        text, stopped = gen._text.push(token)
        if text:
            gen._out.append(("text", text))
        return stopped

    def _work_out_texts(self) -> None:
        """The text of the tokens accepted last step, while this step decodes them, and its
        events handed over. A stop string marks the generation `stopped`: it ends when this
        step's sample comes back, and that sample is dropped. Timed as part of `_overlapped`."""
        for slot, gen, token in self._texts:
            if slot.gen is gen and not gen.stopped and self._push_text(gen, token):
                gen.stopped = True
                self.stats.stops_overlapped += 1
        self._texts.clear()
        self._publish()

    def _release(self, slot: Slot, reason: str | None) -> None:
        """End the slot's generation (reason None: cancelled); its cache stays for reuse."""
        gen = slot.gen
        assert gen is not None
        slot.gen, slot.next_token, slot.last_used = None, None, time.perf_counter()
        slot.hold = self.hold_steps  # its step keeps its shape until the next turn (`HOLD_STEPS`)
        gen.t_end = time.perf_counter()
        gen.close_samplers()
        if reason is None:
            return
        assert gen._text is not None
        tail = gen._text.finish()
        if tail:
            gen._out.append(("text", tail))
        gen.finish_reason = reason
        gen._out.append(("done", reason))
        gen.sink(gen._out)
        gen._out = []

    def _fail(self, slot: Slot, message: str) -> None:
        gen = slot.gen
        assert gen is not None
        llama_cpp.llama_memory_seq_rm(self.model.memory, slot.seq, -1, -1)
        slot.cache.clear()
        slot.prompt_len = 0
        gen.close_samplers()
        slot.gen, slot.next_token = None, None
        self._detach(slot)
        gen.t_end = time.perf_counter()
        gen._out.append(("error", message))
        gen.sink(gen._out)
        gen._out = []

    def _publish(self) -> None:
        for slot in self.slots:
            gen = slot.gen
            if gen is not None and gen._out:
                out, gen._out = gen._out, []
                gen.sink(out)
