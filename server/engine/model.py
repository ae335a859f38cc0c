"""One model file and one llama.cpp context holding `n_parallel` sequences, plus what turns a
request into prompt tokens: llama-cpp-python's own chat handlers and tokenizer rules.

The context has `n_parallel` sequences of `n_ctx` tokens each (`n_ctx` in the config is the
context of one slot, i.e. of one conversation). Without `kv_unified` llama.cpp gives every
sequence its own KV stream, so attention at each step reads only that sequence's cells. With
it, the slots draw on one pool of `kv_pool` cells, and a conversation holds only its own tokens.
"""

from __future__ import annotations

import copy
import ctypes
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
from llama_cpp import _internals as internals
from llama_cpp import llama_chat_format
from llama_cpp._logger import set_verbose
from llama_cpp.llama_grammar import LlamaGrammar

from server.config import KV_CACHE_TYPE_IDS, SPLIT_MODE_IDS, ModelConfig

log = logging.getLogger("storybench.server")


class _Rendered(Exception):
    """Raised by `_PromptShim.create_completion`: a chat handler's arguments, captured."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("rendered")
        self.kwargs = kwargs


class _PromptShim:
    """The part of `Llama` a llama-cpp-python chat handler uses: it renders the messages with
    the template, tokenizes them, adds the template's stop strings and builds the grammar for
    `response_format` / forced tools, then calls `create_completion`, which stops it there."""

    verbose = False

    def __init__(self, model: BatchedModel) -> None:
        self._model = model

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._model.tokenize(text, add_bos=add_bos, special=special)

    def create_completion(self, **kwargs: Any) -> Any:
        raise _Rendered(kwargs)


@dataclass
class Prompt:
    tokens: list[int]
    stop: list[str] = field(default_factory=list)
    grammar: LlamaGrammar | None = None


class BatchedModel:
    """A loaded model, its multi-sequence context and its tokenizer."""

    def __init__(self, config: ModelConfig, verbose: bool = False) -> None:
        e = config.entry
        self.config = config
        self.name = e.name
        # The slots of this model's context: all of them, or the first lane's (`lanes`).
        self.n_parallel = config.lane_slots[0]
        self.n_ctx_slot = config.n_ctx
        # With a unified KV cache, the cells all slots share (the engine admits requests so that
        # running ones never run out); None when each slot has its own n_ctx cells.
        self.pool: int | None = config.lane_cells(self.n_parallel) if e.kv_unified else None
        self._owns_weights = True
        set_verbose(verbose)
        start = time.perf_counter()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0x7FFFFFFF if e.n_gpu_layers == -1 else e.n_gpu_layers
        mparams.split_mode = SPLIT_MODE_IDS[e.split_mode]
        mparams.main_gpu = e.main_gpu
        self._tensor_split = None
        if e.tensor_split is not None:
            split = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)(*e.tensor_split)
            self._tensor_split = split  # must outlive the load
            mparams.tensor_split = split
        mparams.use_mmap = e.use_mmap
        mparams.use_mlock = e.use_mlock
        mparams.use_extra_bufts = e.use_extra_bufts
        self.model = internals.LlamaModel(path_model=str(config.path), params=mparams, verbose=verbose)
        try:
            cparams = self._context_params(self.n_parallel, config.lane_cells(self.n_parallel))
            self.context = internals.LlamaContext(model=self.model, params=cparams, verbose=verbose)
        except BaseException:
            self.model.close()
            raise
        self.ctx = self.context.ctx
        self.memory = self.context.memory
        self.vocab = self.model.vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)
        self.warm_up_ms: float | None = None
        if config.warm_up:
            self.warm_up()
        self.load_seconds = time.perf_counter() - start
        self._chat_handler = self._make_chat_handler()

    def _context_params(self, n_seq: int, n_cells: int) -> Any:
        """The config's context settings for `n_seq` sequences over `n_cells` KV cells."""
        e, config = self.config.entry, self.config
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_cells
        cparams.n_batch = e.n_batch
        cparams.n_ubatch = min(e.n_ubatch, e.n_batch)
        cparams.n_seq_max = n_seq
        cparams.n_threads = config.n_threads
        cparams.n_threads_batch = config.n_threads_batch
        cparams.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if e.flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        cparams.offload_kqv = e.offload_kqv
        if e.type_k is not None:
            cparams.type_k = KV_CACHE_TYPE_IDS[e.type_k]
        if e.type_v is not None:
            cparams.type_v = KV_CACHE_TYPE_IDS[e.type_v]
        cparams.kv_unified = e.kv_unified
        cparams.no_perf = True
        return cparams

    def lane(self, n_seq: int) -> BatchedModel:
        """The same weights, tokenizer and chat template with a context of its own for `n_seq`
        slots and their share of the KV cells (`server/engine/lanes.py`): its own KV cache,
        output buffers and (on a GPU) stream and CUDA graph, so its decode can run while the
        host works on another context's step. Closing it closes only that context."""
        other = copy.copy(self)
        cells = self.config.lane_cells(n_seq)
        params = self._context_params(n_seq, cells)
        other.context = internals.LlamaContext(model=self.model, params=params, verbose=False)
        other.ctx, other.memory = other.context.ctx, other.context.memory
        other.n_parallel, other._owns_weights = n_seq, False
        other.pool = cells if self.pool is not None else None
        other.warm_up_ms = None
        if self.config.warm_up:
            other.warm_up()
        return other

    def warm_up(self) -> None:
        """Two throwaway decodes, then an empty cache: a prompt chunk of one sequence (up to
        `n_ubatch` tokens) and one token in every slot's sequence, the engine's two shapes of
        step. llama-server does the like at start (one short decode). On a GPU the first use
        of each shape pays for loading its kernels and setting up its graphs: in session 19's
        H200 runs the first 16-conversation prompt step in a process took 87 ms against 19
        for the same step later. Best effort: a decode that fails is logged, never raised."""
        start = time.perf_counter()
        rows = self.n_parallel
        room = self.n_ctx_slot - 1 if self.pool is None else min(self.n_ctx_slot, self.pool - rows) - 1
        chunk = max(0, min(llama_cpp.llama_n_ubatch(self.ctx), self.n_batch, room))
        token = self.bos if self.bos != -1 else 0
        batch = llama_cpp.llama_batch_init(max(chunk, rows, 1), 0, 1)
        try:
            # (position, sequence, output row): the chunk outputs its last token, as a prompt
            # does; every slot's token is an output row, as in a decode step.
            prompt = [(pos, 0, pos == chunk - 1) for pos in range(chunk)]
            step_rows = [(chunk if seq == 0 else 0, seq, True) for seq in range(rows)]
            for step in (s for s in (prompt, step_rows) if s):
                for i, (pos, seq, out) in enumerate(step):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                    batch.seq_id[i][0], batch.logits[i] = seq, int(out)
                batch.n_tokens = len(step)
                rc = llama_cpp.llama_decode(self.ctx, batch)
                if rc != 0:
                    log.warning("%s: warm-up decode of %d tokens returned %d", self.name, len(step), rc)
                    break
            llama_cpp.llama_synchronize(self.ctx)
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_memory_clear(self.memory, True)
        self.warm_up_ms = 1000 * (time.perf_counter() - start)
        log.info(
            "%s: warmed up in %.0f ms (a %d-token prompt chunk, %d rows)",
            self.name,
            self.warm_up_ms,
            chunk,
            rows,
        )

    def close(self) -> None:
        self.context.close()
        if self._owns_weights:
            self.model.close()

    # --- tokens ----------------------------------------------------------------------------

    def tokenize(self, text: bytes, *, add_bos: bool, special: bool) -> list[int]:
        if not text:
            return [self.bos] if add_bos and self.bos != -1 else []
        return list(self.model.tokenize(text, add_bos, special))

    def detokenize(self, tokens: list[int]) -> bytes:
        return bytes(self.model.detokenize(tokens))

    @property
    def bos(self) -> int:
        return int(llama_cpp.llama_vocab_bos(self.vocab))

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    # --- prompts ---------------------------------------------------------------------------

    def completion_prompt(self, prompt: str) -> list[int]:
        """`Llama.create_completion`'s tokens for a text prompt (without suffix/infill): BOS
        and EOS as the model's metadata asks, the text with special tokens parsed."""
        model = self.model
        cls, sep = model.token_cls(), model.token_sep()
        bos = cls if cls != -1 else model.token_bos()
        eos = sep if sep != -1 else model.token_eos()
        head = [bos] if model.add_bos_token() and bos != -1 else []
        tail = [eos] if (model.add_eos_token() or sep != -1) and eos != -1 else []
        body = self.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []
        return head + body + tail

    def chat_prompt(self, request: dict[str, Any]) -> Prompt:
        """Render a chat request with llama-cpp-python's handler for this model's format."""
        try:
            self._chat_handler(llama=_PromptShim(self), **request)
        except _Rendered as rendered:
            kw = rendered.kwargs
            stop = kw.get("stop") or []
            return Prompt(
                tokens=list(kw["prompt"]),
                stop=[stop] if isinstance(stop, str) else list(stop),
                grammar=kw.get("grammar"),
            )
        raise RuntimeError(f"chat format of {self.name!r} did not produce a prompt")

    def _make_chat_handler(self) -> Any:
        """What `Llama.__init__` picks: a named format, a template from the GGUF (recognised
        ones mapped to llama-cpp-python's built-in formatter), or "llama-2" without one."""
        info = self.config.info
        fmt = self.config.entry.chat_format
        if fmt is None:
            if info.chat_template is None:
                fmt = "llama-2"
            else:
                guessed = llama_chat_format.guess_chat_format_from_gguf_metadata(
                    {"tokenizer.chat_template": info.chat_template}
                )
                fmt = guessed or "chat_template.default"
        template = info.template(fmt) if fmt.startswith("chat_template.") else None
        if template is None:
            return llama_chat_format.get_chat_completion_handler(fmt)
        eos_id, bos_id = self.model.token_eos(), self.model.token_bos()
        return llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=self.model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=self.model.token_get_text(bos_id) if bos_id != -1 else "",
            stop_token_ids=[eos_id],
        ).to_chat_handler()
