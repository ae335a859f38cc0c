"""Per-request measurements inside llama-cpp-python, and a model proxy that never guesses.

`InstrumentedLlama` is llama-cpp-python's `Llama` with two overrides:

- `generate` records what llama.cpp's native server reports as `timings`: prompt tokens,
  tokens reused from the KV cache, prompt-eval time (until the first generated token),
  generation time and generated tokens. They go into the `RequestMetrics` found in the
  `CURRENT_METRICS` context variable, which `LlamaMiddleware` sets per request (starlette's
  thread pool and the SSE sender task run with a copy of the request's context, so the same
  object is reached from every thread that steps the generator).
- In a *preflight* (`PREFLIGHT` set), `generate` raises `PromptMeasured` with the exact prompt
  token count before evaluating anything: the preflight renders and tokenizes a request the
  same way the real call will, and rejects it before a (streaming) response has started.

`StoryBenchProxy` is llama-cpp-python's `LlamaProxy` (one resident model; a request for another
model unloads it and loads the other) that refuses unknown model names instead of silently
answering with the default model, and logs and counts every swap.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_bindings
from llama_cpp.server.model import LlamaProxy
from llama_cpp.server.settings import ModelSettings

from server.openai_errors import UnknownModelError
from server.timings import timings_object, usage_object

log = logging.getLogger("storybench.server")


@dataclass
class RequestMetrics:
    """What one completion cost. Times in milliseconds."""

    prompt_tokens: int = 0
    prompt_evaluated: int | None = None  # tokens actually decoded for the prompt
    prompt_ms: float = 0.0
    predicted_n: int = 0  # generated tokens, the end-of-generation token excluded
    predicted_ms: float = 0.0
    generations: int = 0  # how many times generate() ran for this request

    @property
    def cache_n(self) -> int:
        """Prompt tokens reused from the KV cache of the previous request."""
        if self.prompt_evaluated is None:
            return 0
        return self.prompt_tokens - self.prompt_evaluated

    def timings(self) -> dict[str, Any]:
        return timings_object(
            prompt_tokens=self.prompt_tokens,
            cache_n=self.cache_n,
            prompt_ms=self.prompt_ms,
            predicted_n=self.predicted_n,
            predicted_ms=self.predicted_ms,
        )

    def usage(self) -> dict[str, Any]:
        return usage_object(
            prompt_tokens=self.prompt_tokens, completion_tokens=self.predicted_n, cached_tokens=self.cache_n
        )


CURRENT_METRICS: contextvars.ContextVar[RequestMetrics | None] = contextvars.ContextVar(
    "storybench_request_metrics", default=None
)
PREFLIGHT: contextvars.ContextVar[bool] = contextvars.ContextVar("storybench_preflight", default=False)


class PromptMeasured(Exception):
    """Raised by a preflight instead of generating: carries the prompt's token count."""

    def __init__(self, prompt_tokens: int) -> None:
        super().__init__(prompt_tokens)
        self.prompt_tokens = prompt_tokens


class InvalidGrammar(ValueError):
    """A grammar llama.cpp cannot parse (a request's `grammar`, or one derived from its
    `response_format` or tools). llama-cpp-python would add the NULL sampler llama.cpp returns
    for it to the sampler chain, and the process would die with SIGSEGV."""


def check_grammar(llama: llama_cpp.Llama, grammar: Any) -> None:
    """Raise InvalidGrammar unless llama.cpp can build a sampler from `grammar` (LlamaGrammar)."""
    sampler = llama_bindings.llama_sampler_init_grammar(
        llama._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
    )
    if not sampler:
        raise InvalidGrammar(
            "the grammar is not valid GBNF (llama.cpp could not parse it; its log says where)"
        )
    llama_bindings.llama_sampler_free(sampler)


class InstrumentedLlama(llama_cpp.Llama):
    """`Llama` that measures each generation (never constructed: instances are re-classed)."""

    _sb_first_eval: int | None = None
    _sb_in_prompt: bool = False

    def eval(self, tokens: Sequence[int]) -> None:
        if self._sb_in_prompt:
            # generate() evaluates the prompt suffix it could not reuse first, then one token
            # per step: the first call's length is the number of prompt tokens decoded.
            self._sb_in_prompt = False
            self._sb_first_eval = len(tokens)
        super().eval(tokens)

    def generate(  # type: ignore[override]
        self, tokens: Sequence[int], *args: Any, **kwargs: Any
    ) -> Generator[int, Sequence[int] | None, None]:
        if kwargs.get("grammar") is not None:
            check_grammar(self, kwargs["grammar"])
        if PREFLIGHT.get():
            raise PromptMeasured(len(tokens))
        metrics = CURRENT_METRICS.get()
        if metrics is None:  # not called through the server (e.g. a direct Llama call)
            metrics = RequestMetrics()
        metrics.generations += 1
        metrics.prompt_tokens = len(tokens)
        self._sb_first_eval = None
        self._sb_in_prompt = True
        start = time.perf_counter()
        first: float | None = None
        last_token: int | None = None
        count = 0
        inner = super().generate(tokens, *args, **kwargs)
        try:
            sent: Sequence[int] | None = None
            while True:
                try:
                    token = inner.send(sent)  # type: ignore[arg-type]
                except StopIteration:
                    return
                if first is None:
                    first = time.perf_counter()
                    metrics.prompt_ms = (first - start) * 1000.0
                    metrics.prompt_evaluated = self._sb_first_eval
                count += 1
                last_token = token
                sent = yield token
        finally:
            inner.close()
            self._sb_in_prompt = False
            end = time.perf_counter()
            if first is None:
                metrics.prompt_ms = (end - start) * 1000.0
                metrics.prompt_evaluated = self._sb_first_eval
            else:
                metrics.predicted_ms = (end - first) * 1000.0
            if last_token is not None and llama_cpp.llama_vocab_is_eog(self._model.vocab, last_token):
                count -= 1
            metrics.predicted_n = count


_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def model_params_override(**fields: Any) -> Iterator[None]:
    """Set llama_model_params fields that `Llama()` does not expose, for the loads inside.

    `Llama.__init__` starts from `llama_model_default_params()`; this wraps that function.
    """
    if not fields:
        yield
        return
    with _PARAMS_LOCK:
        original = llama_bindings.llama_model_default_params

        def patched() -> Any:
            params = original()
            for key, value in fields.items():
                setattr(params, key, value)
            return params

        llama_bindings.llama_model_default_params = patched  # type: ignore[assignment]
        try:
            yield
        finally:
            llama_bindings.llama_model_default_params = original  # type: ignore[assignment]


class StoryBenchProxy(LlamaProxy):
    """One resident model; unknown names are refused, swaps are logged and counted."""

    def __init__(
        self, models: list[ModelSettings], model_params: dict[str, dict[str, Any]] | None = None
    ) -> None:
        # Extra llama_model_params per model alias (e.g. {"use_extra_bufts": False}).
        self.model_params = model_params or {}
        self.swap_count = 0
        self.last_swap_s: float | None = None
        self.load_seconds: dict[str, float] = {}
        super().__init__(models=models)

    @property
    def current_model_name(self) -> str | None:
        return self._current_model_alias

    @property
    def current_model(self) -> llama_cpp.Llama | None:
        return self._current_model

    @property
    def model_names(self) -> list[str]:
        return list(self._model_settings_dict)

    def __call__(self, model: str | None = None) -> llama_cpp.Llama:
        name = self._default_model_alias if model is None else model
        if name not in self._model_settings_dict:
            raise UnknownModelError(name, self.model_names)
        if name == self._current_model_alias and self._current_model is not None:
            return self._current_model
        previous = self._current_model_alias
        start = time.perf_counter()
        if self._current_model is not None:
            self._current_model.close()
        self._current_model = None
        self._current_model_alias = None
        self._current_model = self.load_llama_from_model_settings(self._model_settings_dict[name])
        self._current_model_alias = name
        self.swap_count += 1
        self.last_swap_s = time.perf_counter() - start
        log.info(
            "model swap #%d: unloaded %r, loaded %r in %.2f s",
            self.swap_count,
            previous,
            name,
            self.last_swap_s,
        )
        return self._current_model

    def load_llama_from_model_settings(  # type: ignore[override]
        self, settings: ModelSettings
    ) -> llama_cpp.Llama:
        start = time.perf_counter()
        with model_params_override(**self.model_params.get(str(settings.model_alias), {})):
            model = LlamaProxy.load_llama_from_model_settings(settings)
        model.__class__ = InstrumentedLlama
        seconds = time.perf_counter() - start
        self.load_seconds[str(settings.model_alias)] = seconds
        log.info("loaded model %r from %s in %.2f s", settings.model_alias, settings.model, seconds)
        return model

    def free(self) -> None:
        if self._current_model is not None:
            self._current_model.close()
        self._current_model = None
        self._current_model_alias = None
