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

import llama_cpp
from llama_cpp import _internals as internals
from llama_cpp.llama_grammar import LlamaGrammar

# llama-cpp-python's `last_n_tokens_size`: the window of the repetition penalties.
PENALTY_LAST_N = 64


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


def backend_key(p: SamplingParams) -> tuple[object, ...] | None:
    """A hashable summary of the chain if llama.cpp can run all of it in the decode graph
    (every sampler in it has a backend implementation), else None. Two requests with the same
    key get chains that behave alike once reset, so a slot can keep its attached chain."""
    if p.grammar is not None or p.typical_p < 1.0 or (p.mirostat_mode and p.temperature > 0.0):
        return None
    return (
        p.temperature, p.top_k, p.top_p, p.min_p,
        p.repeat_penalty, p.frequency_penalty, p.presence_penalty, p.seed & 0xFFFFFFFF,
        tuple(sorted(p.logit_bias.items())),
    )  # fmt: skip


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
