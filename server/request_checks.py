"""Checks and rewrites of a request body before either engine sees it: unknown models (404,
naming the known ones), unsupported `n`, logprobs and prompt lists, malformed `logit_bias`,
bodies of the tokenizer routes, `max_completion_tokens` mapped to `max_tokens`, and nulls
dropped where a default applies.

Each check returns None or the (status, body) to answer with; nothing here sends.
"""

from __future__ import annotations

from typing import Any

from llama_cpp.server.types import (
    CreateChatCompletionRequest,
    CreateCompletionRequest,
    CreateEmbeddingRequest,
    DetokenizeInputRequest,
    TokenizeInputRequest,
)
from pydantic import BaseModel, ValidationError

from server.openai_errors import error_body, invalid_request, unknown_model_message

GENERATION_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
# Upstream's other POST routes and their bodies. Upstream answers any invalid body with a 500
# (its RouteErrorHandler wraps every exception, validation errors included): bodies are checked
# here first.
OTHER_POST_PATHS: dict[str, type[BaseModel]] = {
    "/extras/tokenize": TokenizeInputRequest,
    "/extras/tokenize/count": TokenizeInputRequest,
    "/extras/detokenize": DetokenizeInputRequest,
    "/v1/embeddings": CreateEmbeddingRequest,
}

Rejection = tuple[int, bytes]


def check_other(path: str, body: dict[str, Any], model_names: list[str]) -> Rejection | None:
    """Tokenizer and embedding routes: a valid body, text that llama.cpp can take, and no
    embeddings."""
    try:
        request: Any = OTHER_POST_PATHS[path].model_validate(body)
    except ValidationError as exc:
        return invalid_request(exc)
    if unknown_model(body, model_names) is not None:
        return None  # upstream answers 404 naming the models
    if path == "/v1/embeddings":
        return 400, error_body(
            "Embeddings are not served: StoryBench loads models for text generation only.",
            code="unsupported_endpoint",
        )
    if path != "/extras/detokenize":
        try:
            request.input.encode("utf-8")
        except UnicodeEncodeError:
            return 400, error_body("`input` is not valid Unicode text.", code="invalid_text", param="input")
    return None  # token ids are the engine's to check (server/llama_middleware.py, engine/api.py)


def unknown_model(body: dict[str, Any], model_names: list[str]) -> Rejection | None:
    model = body.get("model")
    if model is not None and model not in model_names:
        return 404, error_body(
            unknown_model_message(str(model), model_names),
            code="model_not_found",
            param="model",
            known_models=model_names,
        )
    return None


def check_generation(kind: str, body: dict[str, Any], model_names: list[str]) -> Rejection | None:
    unknown = unknown_model(body, model_names)
    if unknown is not None:
        return unknown
    if kind == "completion":
        prompt = body.get("prompt")  # absent or null: upstream's default, ""
        if isinstance(prompt, list) and len(prompt) > 1:
            return 400, error_body(
                f"{len(prompt)} prompts in one request are not supported; send one request per prompt.",
                code="unsupported_parameter",
                param="prompt",
            )
        if prompt in (None, "", [], [""]):
            return 400, error_body("The prompt is empty.", code="empty_prompt", param="prompt")
    bias = body.get("logit_bias")
    by_id = body.get("logit_bias_type") in (None, "input_ids")
    if isinstance(bias, dict) and by_id and not all(k.strip().lstrip("-").isdigit() for k in bias):
        return 400, error_body(
            'logit_bias keys must be token ids (integers as strings), e.g. {"50256": -100}.',
            code="invalid_logit_bias",
            param="logit_bias",
        )
    n = body.get("n")
    if isinstance(n, int) and n > 1:
        return 400, error_body(
            f"n={n} is not supported: this server returns one choice per request; send n separate requests.",
            code="unsupported_parameter",
            param="n",
        )
    wants_logprobs = (
        body.get("logprobs") is True or body.get("top_logprobs") is not None
        if kind == "chat"
        else body.get("logprobs") is not None
    )
    if wants_logprobs:
        return 400, error_body(
            "logprobs are not supported: the server runs llama.cpp with logits_all off, "
            "which keeps only the last token's logits (keeping all of them costs "
            "n_ctx x n_vocab floats and slows decoding).",
            code="unsupported_parameter",
            param="logprobs",
        )
    return None


def drop_nulls(kind: str, body: dict[str, Any]) -> bool:
    """A null for a field with a default means that default. Upstream would pass None on to
    llama.cpp (`"presence_penalty": null` fails in ctypes with a 500). True if any was dropped."""
    model = CreateChatCompletionRequest if kind == "chat" else CreateCompletionRequest
    nulls = [
        name
        for name, field in model.model_fields.items()
        if name in body and body[name] is None and field.default is not None
    ]
    for name in nulls:
        del body[name]
    return bool(nulls)


def normalize(kind: str, body: dict[str, Any]) -> bool:
    """Rewrite `body` in place into what upstream reads; True if anything changed."""
    edited = drop_nulls(kind, body)
    if "max_completion_tokens" in body and body.get("max_tokens") is None:
        body["max_tokens"] = body["max_completion_tokens"]
        edited = True
    return edited
