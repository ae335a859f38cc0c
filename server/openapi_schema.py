"""The OpenAPI schema each engine publishes at `/openapi.json`, made to say what the server does.

FastAPI derives the schema from the routes and llama-cpp-python's request models, which know
nothing of the layers around them: the key check (401, `StoryBenchApp`), the loading gate (503,
500), the body checks (`server/request_checks.py`: 400, 404, 422 in OpenAI's error shape) and
each engine's own refusals. Client generators and API gateways read the schema, and
schemathesis holds the server to it (tests/reliability/test_local_server.py), so `truthful`
rewrites it:

- every error status an operation can answer is documented, with the OpenAI error body;
- request bodies require what the server requires (`prompt`, `messages`, `input`, `tokens`) and
  forbid what it refuses (`n` > 1, logprobs, forced tool choices, the batched engine's
  unsupported parameters, token ids outside the vocabulary, unknown model names), and allow
  null where null means the default (the server drops such nulls);
- routes an engine does not serve (`/v1/embeddings`: models are loaded for generation only)
  are left out; the bearer scheme is declared only when a key is configured.

What a schema cannot say stays a documented 400: whether a prompt fits the context
(`context_length_exceeded`), whether a grammar parses (`format: gbnf`), whether a chat
template accepts the messages.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from server.request_checks import GENERATION_PATHS, null_means_default

ERROR_SCHEMA = "OpenAIError"
# Served by neither engine: the route answers 400 `unsupported_endpoint`, for clients that try.
NOT_SERVED = ("/v1/embeddings",)
BEARER = "HTTPBearer"
NULL: dict[str, Any] = {"type": "null"}

# One event of a `"stream": true` answer (the stream's own schema, as schemathesis and OpenAPI
# 3.2 read it, is that of each event).
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "description": "A chunk as JSON (with `timings` and `usage` in the last one when "
            "stream_options.include_usage), an error object, or [DONE].",
        }
    },
}
_ERRORS: dict[str, str] = {
    "400": (
        "Bad request (OpenAI error body): not a JSON object, an empty prompt or no messages, an "
        "unsupported parameter, a prompt that does not fit the context (code "
        "`context_length_exceeded`, with `prompt_tokens`, `max_tokens`, `n_ctx`), a grammar "
        "that does not parse, messages the chat template refuses, token ids outside the "
        "vocabulary."
    ),
    "401": "Missing or wrong bearer key (code `invalid_api_key`).",
    "404": "A model this server does not serve (code `model_not_found`, with `known_models`).",
    "422": "A field of the wrong type or out of range (code `invalid_request`, `param` names it).",
    "500": "The model failed to load, or a generation failed.",
    "503": "The model is still loading (code `model_loading`; `GET /health` turns 200 when ready).",
}


@dataclass(frozen=True)
class Served:
    """What the schema describes: the engine, its models, whether a key is needed, and the
    default model's vocabulary size (the bound on token ids; None when unknown)."""

    engine: str  # "llama-cpp-python" | "batched"
    model_names: list[str]
    auth: bool
    n_vocab: int | None = None


def install(app: FastAPI, served: Served) -> None:
    """Serve `truthful(...)` of the app's generated schema at /openapi.json (and /docs)."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    cache: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not cache:
            cache.append(truthful(generate(), served))
        return cache[0]

    app.openapi = openapi  # type: ignore[method-assign]


def truthful(generated: dict[str, Any], served: Served) -> dict[str, Any]:
    doc = copy.deepcopy(generated)
    for path in NOT_SERVED:
        doc["paths"].pop(path, None)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas[ERROR_SCHEMA] = error_schema()
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    if served.auth:
        components["securitySchemes"] = {BEARER: {"type": "http", "scheme": "bearer"}}
    else:
        components.pop("securitySchemes", None)
    for path, operations in doc["paths"].items():
        for operation in operations.values():
            _document_operation(operation, served.auth, streams=path in GENERATION_PATHS)
    _constrain_requests(schemas, served)
    _drop_unreferenced(doc)
    return doc


def error_schema() -> dict[str, Any]:
    """OpenAI's error body; extra fields (`known_models`, `prompt_tokens`, ...) are allowed."""
    nullable_string = {"anyOf": [{"type": "string"}, NULL]}
    return {
        "title": ERROR_SCHEMA,
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": nullable_string,
                    "code": nullable_string,
                },
            }
        },
    }


def _document_operation(operation: dict[str, Any], auth: bool, streams: bool) -> None:
    body = operation.get("requestBody")
    statuses = ["500", "503"]
    if auth:
        statuses.append("401")
    if body is not None:
        body["required"] = True
        statuses += ["400", "404", "422"]
    responses = operation.setdefault("responses", {})
    for status in sorted(statuses):
        responses[status] = {
            "description": _ERRORS[status],
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}},
        }
    if auth:
        operation["security"] = [{BEARER: []}]
    else:
        operation.pop("security", None)
    if streams:  # "stream": true answers server-sent events
        ok = responses.setdefault("200", {"description": "OK"}).setdefault("content", {})
        ok["text/event-stream"] = {"schema": SSE_EVENT}


# --- request bodies ------------------------------------------------------------------------------


def _constrain_requests(schemas: dict[str, Any], served: Served) -> None:
    model = {
        "anyOf": [{"type": "string", "enum": list(served.model_names)}, NULL],
        "description": "A model this server serves (null or absent: the default, the first).",
    }
    for name in ("CreateCompletionRequest", "CreateChatCompletionRequest", "TokenizeInputRequest",
                 "DetokenizeInputRequest"):  # fmt: skip
        if name in schemas:
            schemas[name]["properties"]["model"] = model
    token_id: dict[str, Any] = {"type": "integer", "minimum": 0}
    if served.n_vocab is not None:
        token_id["maximum"] = served.n_vocab - 1
    if "DetokenizeInputRequest" in schemas:
        schemas["DetokenizeInputRequest"]["properties"]["tokens"]["items"] = token_id
    for kind, name in (("completion", "CreateCompletionRequest"), ("chat", "CreateChatCompletionRequest")):
        if name in schemas:
            _generation(schemas[name], kind, served)
    _messages(schemas)


def _messages(schemas: dict[str, Any]) -> None:
    """Message content as the middleware takes it (`request_checks.message_problem`): text, or
    a list of text parts from the user; an assistant's may be null; no images."""
    text = {"type": "string"}
    for role in ("System", "Tool", "Function"):
        name = f"ChatCompletionRequest{role}Message"
        if name in schemas:
            schemas[name]["properties"]["content"] = text
    user = schemas.get("ChatCompletionRequestUserMessage")
    if user is not None:
        part = {"$ref": "#/components/schemas/ChatCompletionRequestMessageContentPartText"}
        user["properties"]["content"] = {
            "anyOf": [text, {"type": "array", "items": part}],
            "description": "Text, or text parts (joined with newlines); images are not supported.",
        }
    assistant = schemas.get("ChatCompletionRequestAssistantMessage")
    if assistant is not None:
        assistant["properties"]["content"] = {"anyOf": [text, NULL]}


def _generation(schema: dict[str, Any], kind: str, served: Served) -> None:
    props = schema["properties"]
    for field in null_means_default(kind):
        if field in props:
            props[field] = _or_null(props[field])
    if kind == "completion":
        text = {"type": "string", "minLength": 1}
        props["prompt"] = {
            "anyOf": [text, {"type": "array", "items": text, "minItems": 1, "maxItems": 1}],
            "description": "One non-empty prompt (a list holds exactly one).",
        }
        props["logprobs"] = {**NULL, "description": "Not supported: logits are kept for the last token only."}
        _require(schema, "prompt")
    else:
        props["messages"] = {**props["messages"], "minItems": 1}
        props["messages"].pop("default", None)
        props["logprobs"] = {
            "anyOf": [{"type": "boolean", "enum": [False]}, NULL],
            "description": "Not supported: logits are kept for the last token only.",
        }
        props["top_logprobs"] = {**NULL, "description": "Not supported."}
        forced = "A forced choice (an object) is not supported: use response_format or grammar."
        for param, strings in (
            ("tool_choice", ["none", "auto", "required"]),
            ("function_call", ["none", "auto"]),
        ):
            props[param] = {"anyOf": [{"type": "string", "enum": strings}, NULL], "description": forced}
        _require(schema, "messages")
    props["n"] = {"anyOf": [{"type": "integer", "maximum": 1}, NULL], "description": "One choice a request."}
    props["grammar"] = {
        "anyOf": [{"type": "string", "format": "gbnf"}, NULL],
        "description": "A GBNF grammar (llama.cpp's); one that does not parse is a 400 `invalid_grammar`.",
    }
    max_tokens = props.get("max_tokens", {})
    props["max_completion_tokens"] = {**max_tokens, "description": "Newer clients' name for max_tokens."}
    props["max_completion_tokens"].pop("default", None)
    props["stream_options"] = {
        "anyOf": [{"type": "object", "properties": {"include_usage": {"type": "boolean"}}}, NULL],
        "description": "include_usage: a last chunk with usage and timings before [DONE].",
    }
    _logit_bias(schema, served.n_vocab)
    if served.engine == "batched":
        _batched(props, kind)


def _batched(props: dict[str, Any], kind: str) -> None:
    """What the batched engine refuses with a 400 `unsupported_parameter` (server/engine/api.py)."""
    unsupported = "Not supported by the batched engine."
    props["min_tokens"] = {"anyOf": [{"type": "integer", "enum": [0]}, NULL], "description": unsupported}
    if kind == "completion":
        props["suffix"] = {**NULL, "description": unsupported}
        props["echo"] = {"anyOf": [{"type": "boolean", "enum": [False]}, NULL], "description": unsupported}
        props["best_of"] = {"anyOf": [{"type": "integer", "maximum": 1}, NULL], "description": unsupported}


def _logit_bias(schema: dict[str, Any], n_vocab: int | None) -> None:
    """Keys are token ids below the vocabulary size, unless `logit_bias_type` is "tokens" (text
    whose tokens are biased)."""
    by_text = {"anyOf": [{"type": "object", "additionalProperties": {"type": "number"}}, NULL]}
    by_id = {
        "anyOf": [
            {
                "type": "object",
                "propertyNames": {"pattern": token_id_pattern(n_vocab)},
                "additionalProperties": {"type": "number"},
            },
            NULL,
        ]
    }
    schema["properties"]["logit_bias"] = {
        **by_text,
        "description": 'Token id (a decimal string) -> bias; with logit_bias_type "tokens", text -> bias.',
    }
    schema["if"] = {"properties": {"logit_bias_type": {"const": "tokens"}}, "required": ["logit_bias_type"]}
    schema["else"] = {"properties": {"logit_bias": by_id}}


def token_id_pattern(n_vocab: int | None) -> str:
    """A regular expression for the decimal integers 0..n_vocab-1 (any when None), without
    sign, space or leading zero: the logit_bias keys the server takes as token ids."""
    if n_vocab is None:
        return "^(0|[1-9][0-9]*)$"
    top = str(n_vocab - 1)
    width = len(top)
    if width == 1:
        return f"^[0-{top}]$"
    options = ["0", "[1-9]" if width == 2 else f"[1-9][0-9]{{0,{width - 2}}}"]  # fewer digits
    for i, digit in enumerate(top):  # same width: below `top` at position i, equal before
        low = 1 if i == 0 else 0
        if int(digit) > low:
            rest = width - i - 1
            tail = f"[0-9]{{{rest}}}" if rest else ""
            options.append(f"{top[:i]}[{low}-{int(digit) - 1}]{tail}")
    options.append(top)
    return "^(" + "|".join(options) + ")$"


# --- helpers -------------------------------------------------------------------------------------


def _or_null(prop: dict[str, Any]) -> dict[str, Any]:
    if prop.get("type") == "null" or NULL in prop.get("anyOf", []):
        return prop
    meta = {k: v for k, v in prop.items() if k in ("title", "description", "default")}
    inner = {k: v for k, v in prop.items() if k not in meta}
    return {"anyOf": [inner, NULL], **meta}


def _require(schema: dict[str, Any], field: str) -> None:
    required = schema.setdefault("required", [])
    if field not in required:
        required.append(field)


def _drop_unreferenced(doc: dict[str, Any]) -> None:
    """Component schemas no operation reaches any more (the embedding request's)."""
    schemas = doc["components"]["schemas"]
    reached: set[str] = set()
    todo: list[Any] = [doc["paths"]]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in reached and name in schemas:
                    reached.add(name)
                    todo.append(schemas[name])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    for name in list(schemas):
        if name not in reached:
            del schemas[name]
