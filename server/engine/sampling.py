"""One llama.cpp sampler chain per sequence, built as llama-cpp-python builds its own.

The order is llama-cpp-python's (`Llama._init_sampler`): logit bias, repetition penalties over
the last 64 generated tokens, grammar, then greedy (temperature 0), a seeded draw from the raw
distribution (temperature < 0), mirostat, or top-k, typical, top-p, min-p, temperature and a
seeded draw (typical sampling only when `typical_p` < 1: at 1 llama.cpp's sampler does nothing,
and leaving it out keeps the chain one that llama.cpp can run on the GPU). Everything runs inside
llama.cpp: `llama_sampler_sample` applies the chain to one output row of the last decode and
accepts the token it picks, or, for a chain attached to its sequence with `llama_set_sampler`
(backend sampling), takes the token the decode graph already picked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import llama_cpp
from llama_cpp import _internals as internals
from llama_cpp.llama_grammar import LlamaGrammar

from server.engine import graph_tail, graph_top_k
from server.engine.host_sampling import HostPlan, make_plan, tail_chain
from server.engine.host_tail import PENALTY_HISTORY, TailPlan
from server.engine.tail_ops import lowers_only, settings

if TYPE_CHECKING:
    from server.engine.model import BatchedModel

# llama-cpp-python's `last_n_tokens_size`: the window of the repetition penalties.
PENALTY_LAST_N = PENALTY_HISTORY


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    mirostat_mode: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int = llama_cpp.LLAMA_DEFAULT_SEED
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: LlamaGrammar | None = None


@dataclass
class Chains:
    """A request's sampler chains. `sampler` is what `llama_sampler_sample` applies on the CPU;
    with backend sampling `graph` is attached to the slot's sequence and runs inside the decode
    graph first, so `sampler` only sees what `graph` left: its pick, or its top-k candidates."""

    sampler: internals.LlamaSampler
    graph: internals.LlamaSampler | None = None
    # What makes two graph chains interchangeable once reset: a slot keeps its attached chain
    # for the next request with the same key (attaching another re-plans llama.cpp's graph).
    graph_key: tuple[object, ...] | None = None
    # The graph chain keeps a history (repetition penalties): each picked token goes into it.
    accept_graph: bool = False
    # Top-k or greedy done by the engine over the step's rows (`host_sampling`); `sampler` is
    # then llama.cpp's chain after top-k.
    host: HostPlan | None = None
    # With the batched graph top-k: the chain after it, done by the engine over all the step's
    # rows at once (`host_tail`); `sampler` stays as the fallback.
    tail: TailPlan | None = None

    def close(self) -> None:
        self.sampler.close()
        if self.graph is not None:
            self.graph.close()


def request_defaults() -> SamplingParams:
    """What a chat request that sets no sampling field asks for: llama-cpp-python's request
    defaults (`CreateChatCompletionRequest`), e.g. repeat_penalty 1.1 and top_k 40."""
    from llama_cpp.server.types import CreateChatCompletionRequest

    fields = CreateChatCompletionRequest.model_fields

    def default(name: str) -> Any:
        value = fields[name].default
        return 0.0 if value is None else value

    return SamplingParams(
        temperature=default("temperature"),
        top_k=default("top_k"),
        top_p=default("top_p"),
        min_p=default("min_p"),
        repeat_penalty=default("repeat_penalty"),
        presence_penalty=default("presence_penalty"),
        frequency_penalty=default("frequency_penalty"),
    )


def in_graph(p: SamplingParams) -> bool:
    """Whether llama.cpp can run this request's sampling in the decode graph: every sampler it
    needs has a backend implementation (not grammar, typical or mirostat)."""
    return p.grammar is None and p.typical_p >= 1.0 and not (p.mirostat_mode and p.temperature > 0.0)


def host_plan(p: SamplingParams) -> HostPlan | None:
    """The engine's own top-k (or greedy) for a request, or None when llama.cpp must run the
    whole chain: repetition penalties, a grammar, typical, mirostat or a plain seeded draw."""
    penalties = (p.repeat_penalty, p.frequency_penalty, p.presence_penalty)
    if p.grammar is not None or penalties != (1.0, 0.0, 0.0):
        return None
    if p.temperature == 0.0:
        return make_plan(0, p.logit_bias)  # greedy, whatever else is set (as build_sampler orders it)
    if p.temperature > 0.0 and p.top_k > 0 and p.typical_p >= 1.0 and not p.mirostat_mode:
        return make_plan(p.top_k, p.logit_bias)
    return None


def build_chains(
    model: internals.LlamaModel,
    p: SamplingParams,
    backend: bool,
    host: bool = False,
    batched_top_k: bool = True,
    host_tail: bool = True,
    in_graph_tail: bool = False,
) -> Chains:
    """The chains for one request (the caller closes them).

    Without backend sampling: the engine's own top-k or greedy over the step's rows and
    llama.cpp's chain after it (`host_sampling`), when the request allows (`host_plan`) and
    `host` is on; otherwise one CPU chain (`build_sampler`). With backend sampling, when the
    graph cannot run the chain, one CPU chain (a step never mixes graph-picked rows with the
    host's matrix of rows).
    Otherwise the graph applies the logit bias and penalties over the whole vocabulary and then
    either picks the token itself (greedy, a plain seeded draw, or no top-k) or keeps the top-k
    candidates, and the CPU finishes top-p, min-p, temperature and the seeded draw on those k
    values. The split matters on a GPU: every sampler in the graph adds a dozen small kernels
    per sequence, which at 16 sequences cost more than the CPU needs for k = 40 candidates.
    With `batched_top_k` the top-k is the engine's own graph sampler (`graph_top_k`), one
    pass over all the step's rows instead of a sort per sequence, and with `host_tail` the
    rest of the chain runs over all the step's rows at once too (`host_tail`), or, with
    `in_graph_tail`, in the decode graph after the batched top-k (`graph_tail`). Repetition
    penalties that only lower logits then come after a top-k of k + PENALTY_LAST_N (which holds
    the k largest after them), on the CPU or, with `in_graph_tail`, in the graph.
    """
    if not (backend and in_graph(p)):
        plan = host_plan(p) if host and not backend else None
        if plan is not None:
            return Chains(tail_chain(p.top_p, p.min_p, p.temperature, p.seed), host=plan)
        return Chains(build_sampler(model, p))
    n_vocab = llama_cpp.llama_vocab_n_tokens(model.vocab)
    seed = p.seed & 0xFFFFFFFF
    penalties = (p.repeat_penalty, p.frequency_penalty, p.presence_penalty)
    graph, tail = internals.LlamaSampler(), internals.LlamaSampler()
    tail_plan: TailPlan | None = None
    penalized = penalties != (1.0, 0.0, 0.0)
    try:
        # Penalties that only lower logits can come after a batched top-k of k + PENALTY_LAST_N
        # candidates, which hold the k largest after them (`tail_ops.lowers_only`): in the graph
        # with `graph_tail`, else on the CPU. Otherwise llama.cpp's penalties over the whole row.
        late = (
            batched_top_k
            and penalized
            and lowers_only(penalties)
            and not p.logit_bias
            and p.temperature > 0.0
            and 0 < p.top_k <= graph_top_k.MAX_K - PENALTY_LAST_N
        )
        if p.logit_bias:
            graph.add_logit_bias(n_vocab, p.logit_bias)
        if penalized and not late:
            graph.add_penalties(n_vocab, PENALTY_LAST_N, *penalties)
        head: tuple[object, ...] = (tuple(sorted(p.logit_bias.items())), penalties)
        if p.temperature == 0.0:
            graph.add_greedy()
            key = (*head, "greedy")
        elif p.temperature < 0.0:
            graph.add_dist(seed)
            key = (*head, "dist", seed)
        elif p.top_k > 0:
            # One top-k over all the step's rows (`graph_top_k`), unless a logit bias or penalties
            # change this row first: it is then no longer a row of the step's matrix.
            batched = batched_top_k and (late or head == ((), (1.0, 0.0, 0.0)))
            whole = batched and in_graph_tail and graph_tail.add_to(graph.sampler, p.top_k, penalized=late)
            kept = p.top_k + (PENALTY_LAST_N if late else 0)
            if not (whole or (batched and graph_top_k.add_to(graph.sampler, kept))):
                if late:  # nothing is in the graph chain yet: llama.cpp's penalties go first
                    graph.add_penalties(n_vocab, PENALTY_LAST_N, *penalties)
                batched = late = False
                graph.add_top_k(p.top_k)
            if late:  # the graph leaves k + PENALTY_LAST_N candidates, before the penalties
                tail.add_penalties(n_vocab, PENALTY_LAST_N, *penalties)
                tail.add_top_k(p.top_k)
            tail.add_top_p(p.top_p, 1)
            tail.add_min_p(p.min_p, 1)
            tail.add_temp(p.temperature)
            tail.add_dist(seed)
            key = (*head, "top_k", p.top_k, batched, whole)
            if batched and (host_tail or whole):
                k = min(p.top_k, n_vocab)
                tail_plan = TailPlan(k, p.top_p, p.min_p, p.temperature, seed, in_graph=whole)
                if late:
                    tail_plan.penalties = penalties
                if whole:
                    tail_plan.graph_settings = settings(p.top_p, p.min_p, p.temperature, penalties)
        else:
            graph.add_top_p(p.top_p, 1)
            graph.add_min_p(p.min_p, 1)
            graph.add_temp(p.temperature)
            graph.add_dist(seed)
            key = (*head, "all", p.top_p, p.min_p, p.temperature, seed)
    except BaseException:
        graph.close()
        tail.close()
        raise
    accept = penalized and not late  # llama.cpp's penalties in the graph keep their history
    return Chains(tail, graph, key, accept_graph=accept, tail=tail_plan)


def chains_for(model: BatchedModel, p: SamplingParams) -> Chains:
    """The chains a request with these settings gets on this model: `build_chains` with the
    model's config (backend sampling, `host_top_k`, `graph_tail`), as the API builds them."""
    entry = model.config.entry
    return build_chains(
        model.model, p, model.config.backend_sampling, entry.host_top_k, in_graph_tail=entry.graph_tail
    )


def build_sampler(model: internals.LlamaModel, p: SamplingParams) -> internals.LlamaSampler:
    """A new chain for one request (the caller closes it)."""
    n_vocab = llama_cpp.llama_vocab_n_tokens(model.vocab)
    chain = internals.LlamaSampler()
    seed = p.seed & 0xFFFFFFFF
    try:
        if p.logit_bias:
            chain.add_logit_bias(n_vocab, p.logit_bias)
        if (p.repeat_penalty, p.frequency_penalty, p.presence_penalty) != (1.0, 0.0, 0.0):
            chain.add_penalties(
                n_vocab, PENALTY_LAST_N, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
            )
        if p.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(
                model.vocab, p.grammar._grammar.encode("utf-8"), p.grammar._root.encode("utf-8")
            )
            if not grammar:  # llama.cpp logs the parse error
                raise ValueError("the grammar could not be parsed")
            llama_cpp.llama_sampler_chain_add(chain.sampler, grammar)
        if p.temperature < 0.0:
            chain.add_dist(seed)
        elif p.temperature == 0.0:
            chain.add_greedy()
        elif p.mirostat_mode == 1:
            chain.add_mirostat(n_vocab, seed, p.mirostat_tau, p.mirostat_eta, 100)
        elif p.mirostat_mode == 2:
            chain.add_mirostat_v2(seed, p.mirostat_tau, p.mirostat_eta)
        else:
            chain.add_top_k(p.top_k)
            if p.typical_p < 1.0:
                chain.add_typical(p.typical_p, 1)
            chain.add_top_p(p.top_p, 1)
            chain.add_min_p(p.min_p, 1)
            chain.add_temp(p.temperature)
            chain.add_dist(seed)
    except BaseException:
        chain.close()
        raise
    return chain
