"""Which model is resident: one at a time, as with llama-cpp-python's server.

A request for another model waits until the resident model's requests have finished, then
the model is swapped (logged and counted). Waiters are served in arrival order: while an
older request waits for another model, newer requests for the resident one wait too, so a
swap is never starved.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import sys
import time
from typing import Any

import anyio
import llama_cpp

from server.config import ModelConfig, ServerConfig
from server.engine.lanes import Lanes, start_engine
from server.engine.model import BatchedModel
from server.engine.scheduler import Engine
from server.openai_errors import UnknownModelError

log = logging.getLogger("storybench.server")


class EngineHost:
    def __init__(self, cfg: ServerConfig, verbose: bool = False) -> None:
        self.cfg = cfg
        self.verbose = verbose
        self.models: dict[str, ModelConfig] = {m.name: m for m in cfg.models}
        self.engine: Engine | Lanes | None = None
        self.swap_count = 0
        self.last_swap_s: float | None = None
        self.load_seconds: dict[str, float] = {}
        self._users = 0
        self._waiters: dict[int, str] = {}
        self._tickets = itertools.count()
        self._cond: asyncio.Condition | None = None

    @property
    def current_model_name(self) -> str | None:
        return None if self.engine is None else self.engine.model.name

    @property
    def model_names(self) -> list[str]:
        return list(self.models)

    def resolve(self, name: str | None) -> str:
        name = self.cfg.models[0].name if name is None else name
        if name not in self.models:
            raise UnknownModelError(name, self.model_names)
        return name

    # --- residency ------------------------------------------------------------------------

    def load(self, name: str) -> Engine | Lanes:
        """Make `name` the resident model (blocking; no request may be using the current one)."""
        if self.engine is not None and self.engine.model.name == name:
            return self.engine
        previous = self.current_model_name
        start = time.perf_counter()
        self.free()
        config = self.models[name]
        model = BatchedModel(config, verbose=self.verbose)
        self.load_seconds[name] = model.load_seconds
        log.info(
            "loaded model %r from %s in %.2f s (batched engine: %d slots of %d tokens, %d lanes)",
            name, config.path, model.load_seconds, config.n_parallel, model.n_ctx_slot, config.lanes,
        )  # fmt: skip
        self.engine = start_engine(model)
        self.swap_count += 1
        self.last_swap_s = time.perf_counter() - start
        log.info(
            "model swap #%d: unloaded %r, loaded %r in %.2f s",
            self.swap_count, previous, name, self.last_swap_s,
        )  # fmt: skip
        return self.engine

    def free(self) -> None:
        if self.engine is not None:
            log.info(
                "engine stats for %r: %s", self.engine.model.name, json.dumps(self.engine.stats.summary())
            )
            self.engine.close()
            if isinstance(self.engine, Lanes):
                self.engine.close_models()
            else:
                self.engine.model.close()
            self.engine = None

    async def acquire(self, name: str | None) -> Engine | Lanes:
        """The engine of `name`, swapping models if needed; pair with `release()`."""
        name = self.resolve(name)
        if self._cond is None:
            self._cond = asyncio.Condition()
        ticket = next(self._tickets)
        self._waiters[ticket] = name
        async with self._cond:
            try:
                while True:
                    older_other = any(n != name for t, n in self._waiters.items() if t < ticket)
                    if self.current_model_name == name and not older_other:
                        break
                    if self._users == 0 and next(iter(self._waiters)) == ticket:
                        await anyio.to_thread.run_sync(self.load, name)
                        continue
                    await self._cond.wait()
            finally:
                del self._waiters[ticket]
                self._cond.notify_all()
            self._users += 1
        assert self.engine is not None
        return self.engine

    async def release(self) -> None:
        assert self._cond is not None
        async with self._cond:
            self._users -= 1
            self._cond.notify_all()

    # --- what /storybench/models reports ---------------------------------------------------

    def loaded_settings(self) -> dict[str, Any]:
        engine = self.engine
        if engine is None:
            return {"interrupt_requests": False, "logits_all": False, "n_ctx": None}
        ctx = engine.model.ctx
        models = engine.models if isinstance(engine, Lanes) else [engine.model]
        return {
            # Requests never interrupt each other, and only sampled rows get logits.
            "interrupt_requests": False,
            "logits_all": False,
            "engine": "batched",
            "n_parallel": engine.model.config.n_parallel,
            "lanes": engine.model.config.lanes,
            "n_ctx": engine.model.n_ctx_slot,
            "n_ctx_seq": llama_cpp.llama_n_ctx_seq(ctx),
            "n_ctx_total": sum(llama_cpp.llama_n_ctx(m.ctx) for m in models),
            "kv_pool": None if engine.model.pool is None else sum(m.pool or 0 for m in models),
            "n_batch": llama_cpp.llama_n_batch(ctx),
            "n_ubatch": llama_cpp.llama_n_ubatch(ctx),
            "n_threads": llama_cpp.llama_n_threads(ctx),
            "n_threads_batch": llama_cpp.llama_n_threads_batch(ctx),
            "slots": [
                {"id": n, "busy": s.gen is not None, "cached_tokens": len(s.cache)}
                for n, s in enumerate(engine.slots)
            ],
            "queued": engine.queued,
            "backend_sampling": engine.model.config.backend_sampling,
            "host_top_k": engine.model.config.entry.host_top_k,
            "graph_tail": engine.model.config.entry.graph_tail,
            "retokenize_answers": engine.model.config.entry.retokenize_answers,
            "host_cache_mib": engine.model.config.entry.host_cache_mib,
            "warm_up_ms": engine.model.warm_up_ms,
            "switch_interval_ms": round(sys.getswitchinterval() * 1000.0, 3),
            "stats": engine.stats.summary(),
        }
