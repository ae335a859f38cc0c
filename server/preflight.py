"""The preflight: does a request's prompt fit the context? Measured before any response starts.

Under the server's model lock, the prompt is rendered and tokenized exactly as the real call
will do it (llama-cpp-python's own code path, stopped by `PromptMeasured` just before
generating). If the prompt reaches n_ctx, or prompt + max_tokens exceeds it, the answer is HTTP
400 `context_length_exceeded` with the numbers (upstream silently clips max_tokens instead;
the answer itself, shared with the batched engine, is `openai_errors.context_overflow`).
Only the llama-cpp-python engine needs this: the batched engine tokenizes the prompt itself
before submitting it (server/engine/api.py).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import anyio
from llama_cpp.llama_grammar import LlamaGrammar
from llama_cpp.server import app as llama_app
from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from pydantic import ValidationError

from server.instrumented import PREFLIGHT, InvalidGrammar, PromptMeasured
from server.openai_errors import context_overflow, error_body, invalid_request

log = logging.getLogger("storybench.server")

# The keys upstream's routes drop before calling llama-cpp-python (llama_cpp/server/app.py).
_CHAT_EXCLUDE = {"n", "logit_bias_type", "user", "min_tokens"}
_COMPLETION_EXCLUDE = {"n", "best_of", "logit_bias_type", "user", "min_tokens"}
# Lifts upstream's "prompt >= n_ctx" check during a preflight so every prompt gets measured.
_UNLIMITED_CTX = 2**31 - 1


class RequestUnservable(Exception):
    """llama-cpp-python failed while rendering or tokenizing a request's prompt (a chat template
    that refuses the messages, an unknown tool_choice, ...): a property of the request."""


async def preflight(kind: str, body: dict[str, Any]) -> tuple[int, bytes] | None:
    try:
        if kind == "chat":
            request: Any = CreateChatCompletionRequest.model_validate(body)
            kwargs = request.model_dump(exclude=_CHAT_EXCLUDE)
        else:
            request = CreateCompletionRequest.model_validate(body)
            kwargs = request.model_dump(exclude=_COMPLETION_EXCLUDE)
            prompt = kwargs["prompt"]
            if isinstance(prompt, list):
                if len(prompt) > 1:
                    return None  # upstream refuses lists of prompts itself
                kwargs["prompt"] = prompt[0] if prompt else ""
    except ValidationError as exc:
        return invalid_request(exc)  # upstream would answer 500
    # Sampling extras only shape generation, never the prompt. A grammar (given, or derived from
    # response_format or tools) is checked on the way: an invalid one would crash llama.cpp.
    grammar = kwargs.get("grammar")
    kwargs.update(stream=False, logit_bias=None)
    kwargs["grammar"] = None if grammar is None else LlamaGrammar.from_string(grammar)
    async with contextlib.asynccontextmanager(llama_app.get_llama_proxy)() as proxy:
        try:
            measured = await anyio.to_thread.run_sync(measure_prompt, proxy, kind, kwargs)
        except InvalidGrammar as exc:
            return 400, error_body(str(exc), code="invalid_grammar", param="grammar")
        except RequestUnservable as exc:
            return 400, error_body(str(exc), code="invalid_request")
    if measured is None:
        return None
    prompt_tokens, n_ctx = measured
    max_tokens = request.max_tokens if request.max_tokens and request.max_tokens > 0 else None
    return context_overflow(kind, prompt_tokens, max_tokens, n_ctx)


def measure_prompt(proxy: Any, kind: str, kwargs: dict[str, Any]) -> tuple[int, int] | None:
    """(prompt tokens, n_ctx) of a request, found by running it up to generation."""
    try:
        llama = proxy(kwargs.get("model"))
    except Exception:  # unknown model / load failure: the real call reports it
        log.exception("preflight: could not get the model")
        return None
    n_ctx = llama.n_ctx()
    saved_seed, saved_n_ctx = llama._seed, llama._n_ctx
    # Upstream raises before generate() when the prompt reaches n_ctx: lift that limit for the
    # preflight so every prompt reaches generate(), which raises PromptMeasured at once.
    llama._n_ctx = _UNLIMITED_CTX
    flag = PREFLIGHT.set(True)
    try:
        if kind == "chat":
            llama.create_chat_completion(**kwargs)
        else:
            llama.create_completion(**kwargs)
    except PromptMeasured as measured:
        return measured.prompt_tokens, n_ctx
    except InvalidGrammar:
        raise
    except Exception as exc:  # the real call would fail alike, and upstream answer 500
        log.debug("preflight: request fails before generation", exc_info=True)
        raise RequestUnservable(
            f"The request cannot be served: {str(exc) or type(exc).__name__} "
            "(raised while preparing the prompt)"
        ) from exc
    finally:
        PREFLIGHT.reset(flag)
        llama._n_ctx = saved_n_ctx
        llama._seed = saved_seed  # _create_completion advances the seed chain
    return None
