"""Checks and rewrites of a request body before either engine sees it: unknown models (404,
naming the known ones), unsupported `n`, logprobs, prompt lists and forced tool choices,
malformed `logit_bias` and `stream_options`, messages without text, bodies of the tokenizer
routes, `max_completion_tokens` mapped to `max_tokens`, text parts joined, nulls dropped where a
default applies, then the fields' types and ranges (strict, 422). The published OpenAPI schema
says the same (server/openapi_schema.py; tests/server/test_openapi_schema.py holds them together).

Each check returns None or the (status, body) to answer with; nothing here sends.
"""

from __future__ import annotations

import re
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
GENERATION_MODELS: dict[str, type[BaseModel]] = {
    "chat": CreateChatCompletionRequest,
    "completion": CreateCompletionRequest,
}
# A logit_bias key by token id: a decimal integer, no sign, space or leading zero (the OpenAPI
# schema says the same, with the vocabulary's bound: server/openapi_schema.py).
TOKEN_ID_KEY = re.compile(r"0|[1-9][0-9]*")
# Upstream's other POST routes and their bodies. Upstream answers any invalid body with a 500
# (its RouteErrorHandler wraps every exception, validation errors included): bodies are checked
# here first.
OTHER_POST_PATHS: dict[str, type[BaseModel]] = {
    "/extras/tokenize": TokenizeInputRequest,
    "/extras/tokenize/count": TokenizeInputRequest,
    "/extras/detokenize": DetokenizeInputRequest,
    "/v1/embeddings": CreateEmbeddingRequest,
}

Rejection = tuple[int, bytes]  # the (status, JSON body) answered instead of the route's


def check_other(path: str, body: dict[str, Any], model_names: list[str]) -> Rejection | None:
    """Tokenizer and embedding routes: a valid body, text that llama.cpp can take, and no
    embeddings."""
    try:
        request: Any = OTHER_POST_PATHS[path].model_validate(as_json_schema_reads(body), strict=True)
    except ValidationError as exc:
        return invalid_request(exc)
    unknown = unknown_model(body, model_names)
    if unknown is not None:
        return unknown
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
    else:
        for param in ("tool_choice", "function_call"):
            if isinstance(body.get(param), dict):
                return 400, error_body(
                    f"a forced {param} is not supported; use response_format (json_object with a "
                    "schema) or grammar instead.",
                    code="unsupported_parameter",
                    param=param,
                )
    options = body.get("stream_options")
    if options is not None and not (
        isinstance(options, dict) and isinstance(options.get("include_usage", False), bool)
    ):
        return 400, error_body(
            'stream_options must be an object such as {"include_usage": true}.',
            code="invalid_request",
            param="stream_options",
        )
    bias = body.get("logit_bias")
    by_id = body.get("logit_bias_type") in (None, "input_ids")
    if isinstance(bias, dict) and by_id and not all(TOKEN_ID_KEY.fullmatch(k) for k in bias):
        return 400, error_body(
            'logit_bias keys must be token ids (integers as strings), e.g. {"50256": -100}.',
            code="invalid_logit_bias",
            param="logit_bias",
        )
    n = body.get("n")
    if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 1:
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
    if kind == "chat":
        messages = body.get("messages")
        if messages is None or messages == []:
            return 400, error_body(
                "`messages` must hold at least one message.", code="invalid_request", param="messages"
            )
        problem = message_problem(messages)
        if problem is not None:
            return 400, error_body(problem, code="invalid_request", param="messages")
    return None


def message_problem(messages: Any) -> str | None:
    """Why chat templates could not render these messages, or None. Templates concatenate
    `content` as text: it must be a string (a list of text parts is joined by `normalize`),
    except for an assistant's, which may be absent or null (it becomes ""). Images are refused:
    the models are text-only. Malformed messages are left to the 422."""
    if not isinstance(messages, list):
        return None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") == "assistant":
            continue
        content = message.get("content")
        if isinstance(content, list):
            if any(isinstance(part, dict) and part.get("type") == "image_url" for part in content):
                return f"messages[{i}]: images are not supported (the models are text-only)."
        elif not isinstance(content, str):
            return f"messages[{i}]: a {message.get('role')} message needs `content` (text)."
    return None


def _message_text(messages: list[Any]) -> bool:
    """Lists of text parts joined into one string, an assistant's missing content made "";
    True if any message changed."""
    edited = False
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if (
            message.get("role") == "user"
            and isinstance(content, list)
            and all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                for p in content
            )
        ):
            message["content"] = "\n".join(p["text"] for p in content)
            edited = True
        elif content is None and message.get("role") == "assistant":
            message["content"] = ""
            edited = True
    return edited


def validate_generation(kind: str, body: dict[str, Any]) -> Rejection | None:
    """422 for a field of the wrong type or out of range, in OpenAI's shape (FastAPI's own
    answer would be `{"detail": [...]}`); run on the normalized body. Strict: JSON types as
    the OpenAPI schema states them (lax pydantic would take `false` or "5" for an integer)."""
    model = GENERATION_MODELS[kind]
    read = as_json_schema_reads(body)
    try:
        model.model_validate(read, strict=True)
        if read.get("max_completion_tokens") is not None:  # checked even when max_tokens wins
            model.model_validate({**read, "max_tokens": read["max_completion_tokens"]}, strict=True)
    except ValidationError as exc:
        return invalid_request(exc)
    return None


def as_json_schema_reads(value: Any) -> Any:
    """A copy with integral floats as ints: JSON Schema's `integer` includes 2.0, which
    pydantic's strict mode refuses (its lax mode would also take `true` or "2")."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: as_json_schema_reads(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json_schema_reads(v) for v in value]
    return value


def null_means_default(kind: str) -> list[str]:
    """The fields of a generation request for which null means their default (the OpenAPI
    schema marks them nullable)."""
    return [
        name
        for name, field in GENERATION_MODELS[kind].model_fields.items()
        if field.default is not None and name not in ("prompt", "messages")
    ]


def drop_nulls(kind: str, body: dict[str, Any]) -> bool:
    """A null for a field with a default means that default. Upstream would pass None on to
    llama.cpp (`"presence_penalty": null` fails in ctypes with a 500). True if any was dropped."""
    nulls = [name for name in null_means_default(kind) if name in body and body[name] is None]
    for name in nulls:
        del body[name]
    return bool(nulls)


def normalize(kind: str, body: dict[str, Any]) -> bool:
    """Rewrite `body` in place into what upstream reads; True if anything changed."""
    edited = drop_nulls(kind, body)
    if kind == "chat" and isinstance(body.get("messages"), list):
        edited = _message_text(body["messages"]) or edited
    if "max_completion_tokens" in body and body.get("max_tokens") is None:
        body["max_tokens"] = body["max_completion_tokens"]
        edited = True
    return edited
