"""The evaluator's configuration: the models to evaluate and the prompt sequences to play.

`load_models` reads `config/models.yaml`, `load_prompts` reads `config/prompts.json`. Both
validate everything on load: any problem is a `ConfigError` whose message names the file, the
entry, the field, what is valid and how to fix it, and never echoes a secret. Pydantic models sit
at the boundary; evaluator/config_messages.py turns their errors into those messages (the same
translator as the rubric's). docs/configuration.md documents both files.

Over 400 lines because every field of both files sits here with the rule that validates it
(replicas, reasoning models, budgets, unique names): one read shows what a valid file is.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from evaluator import cost
from evaluator.config_messages import (
    CONFIG,
    ConfigError,
    did_you_mean,
    parse_json,
    parse_yaml,
    read_text,
    validate,
)

__all__ = [
    "DEFAULT_MODELS_PATH",
    "DEFAULT_PROMPTS_PATH",
    "ConfigError",
    "EvalSettings",
    "ModelEntry",
    "PromptTurn",
    "Sequence",
    "load_models",
    "load_prompts",
    "select",
]

DEFAULT_MODELS_PATH = Path("config/models.yaml")
DEFAULT_PROMPTS_PATH = Path("config/prompts.json")
_DOCS = "docs/configuration.md"
_NAME_RE = r"^[A-Za-z0-9._-]+$"
_ENV_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"

Name = Annotated[str, Field(pattern=_NAME_RE)]

# How hard a reasoning model thinks before it answers (OpenAI's `reasoning_effort`).
ReasoningEffort = Literal["minimal", "low", "medium", "high"]
# Sampling parameters a reasoning model refuses (OpenAI o-series and gpt-5 answer 400).
_NOT_FOR_REASONING = ("temperature", "top_p")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelEntry(_Strict):
    """One model to evaluate: an OpenAI-compatible endpoint, a model id and its parameters."""

    name: Name = Field(description="unique key for this entry, used in results and --models")
    base_url: str = Field(description="the endpoint's OpenAI-compatible URL, e.g. .../v1")
    model: str = Field(min_length=1, description="the model id the endpoint expects")
    api_key_env: str | None = Field(default=None, pattern=_ENV_RE)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int = Field(default=512, gt=0)
    seed: int | None = None
    stop: list[str] | None = None
    extra_body: dict[str, Any] = Field(default_factory=dict)
    context_window: int | None = Field(default=None, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    # Rate limits of the provider's plan (evaluator/flow_control.py); not part of the fingerprint.
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    price_input_per_mtok: float | None = Field(default=None, ge=0)
    price_output_per_mtok: float | None = Field(default=None, ge=0)
    request_timeout_s: float = Field(default=600.0, gt=0)
    min_output_tokens: int = Field(default=64, ge=1)
    reasoning: bool = False
    reasoning_effort: ReasoningEffort | None = None
    # Replicas: several servers of the same model (evaluator/replicas.py). `base_url` is then
    # the first of them, so the fingerprint (and the stored results) follow the first URL.
    base_urls: list[str] | None = Field(default=None, min_length=1)
    _source: str = PrivateAttr(default=str(DEFAULT_MODELS_PATH))

    @model_validator(mode="before")
    @classmethod
    def _first_replica(cls, data: Any) -> Any:
        # `base_urls` alone names the replicas; `base_url` becomes the first of them (a dumped
        # entry carries both, equal, and validates again).
        if isinstance(data, dict) and "base_urls" in data and "base_url" not in data:
            urls = data["base_urls"]
            if isinstance(urls, list) and urls and isinstance(urls[0], str):
                return data | {"base_url": urls[0]}
        return data

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return _valid_url(value)

    @field_validator("base_urls")
    @classmethod
    def _check_urls(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        urls = [_valid_url(url) for url in value]
        for url in dict.fromkeys(urls):
            places = [str(i + 1) for i, other in enumerate(urls) if other == url]
            if len(places) > 1:
                raise ValueError(f"URLs {' and '.join(places)} are the same server; list each replica once")
        return urls

    @model_validator(mode="after")
    def _check_replicas(self) -> ModelEntry:
        if self.base_urls is not None and self.base_url != self.base_urls[0]:
            raise ValueError(
                "base_url and base_urls are both set and differ: list every replica in base_urls "
                "and remove base_url"
            )
        return self

    @property
    def replica_urls(self) -> list[str]:
        """Every server of this entry: its `base_urls`, or its one `base_url`."""
        return list(self.base_urls) if self.base_urls else [self.base_url]

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("extra_body", mode="before")
    @classmethod
    def _no_extra_body(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _check_reasoning(self) -> ModelEntry:
        # An error, not a warning: a dropped temperature would silently make the results differ
        # from what the file says, and a sent one makes the provider refuse every request.
        if self.reasoning:
            for name in _NOT_FOR_REASONING:
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name}: a reasoning model (reasoning: true) takes no {name}; remove "
                        f"{name}, or set reasoning: false if this model samples"
                    )
        elif self.reasoning_effort is not None:
            raise ValueError(
                "reasoning_effort is only sent to reasoning models; add reasoning: true or remove "
                "reasoning_effort"
            )
        return self

    @model_validator(mode="after")
    def _check_budget(self) -> ModelEntry:
        if self.min_output_tokens > self.max_tokens:
            raise ValueError(
                f"min_output_tokens ({self.min_output_tokens}) is larger than max_tokens "
                f"({self.max_tokens}): every turn would stop as context_exhausted; "
                "lower min_output_tokens or raise max_tokens"
            )
        if self.context_window is not None and self.min_output_tokens >= self.context_window:
            raise ValueError(
                f"min_output_tokens ({self.min_output_tokens}) must be below context_window "
                f"({self.context_window})"
            )
        return self

    def __hash__(self) -> int:
        return hash((self.name, self.base_url, self.model))

    def api_key(self) -> str | None:
        """The key from the environment variable named by `api_key_env`; None when there is none.

        Callers must pass a placeholder to the OpenAI client when this is None: the client
        otherwise falls back to OPENAI_API_KEY and would send it to this endpoint.
        """
        if self.api_key_env is None:
            return None
        value = os.environ.get(self.api_key_env, "").strip()
        if not value:
            state = "is empty" if self.api_key_env in os.environ else "is not set"
            raise ConfigError(
                f"{self._source}: model '{self.name}': environment variable "
                f"{self.api_key_env} (api_key_env) {state}. Set it, e.g. "
                f"`export {self.api_key_env}=...`, or remove api_key_env for an endpoint "
                "without authentication."
            )
        return value

    def seed_for_run(self, run_index: int) -> int | None:
        """Run k uses seed + k, so runs differ from each other but repeat exactly."""
        return None if self.seed is None else self.seed + run_index

    def fingerprint(self) -> dict[str, Any]:
        """What determines an answer; prices, limits, timeouts and the key's name do not.

        The reasoning fields join only for a reasoning entry, so every entry written before
        they existed keeps its configuration hash (and its stored results).
        """
        found = self.model_dump(include=_FINGERPRINT)
        if self.reasoning:
            found.update(reasoning=True, reasoning_effort=self.reasoning_effort)
        return found

    def generation_params(self, run_index: int = 0) -> dict[str, Any]:
        """Keyword arguments for `chat.completions.create`, recorded with each turn.

        Unset parameters are left out (the endpoint's default applies); `extra_body` is
        included only when non-empty. The runner may lower `max_tokens` to fit the context.
        A reasoning entry's limit is `max_completion_tokens` (it counts the hidden reasoning
        too) with its `reasoning_effort`; the client sends the budget's cap under that name
        (`evaluator.client.wire_params`).
        """
        limit = "max_completion_tokens" if self.reasoning else "max_tokens"
        params = {
            limit: self.max_tokens,
            "reasoning_effort": self.reasoning_effort,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed_for_run(run_index),
            "stop": list(self.stop) if self.stop else None,
            "extra_body": json.loads(json.dumps(self.extra_body)) if self.extra_body else None,
        }
        return {key: value for key, value in params.items() if value is not None}

    def cost_usd(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        """Cost by the one rule (evaluator/cost.py): None unless both prices are set; 0 counts."""
        prices = (self.price_input_per_mtok, self.price_output_per_mtok)
        return cost.cost_usd(*prices, prompt_tokens, completion_tokens)

    @property
    def missing_prices(self) -> str | None:
        """Shown instead of a cost ("no prices set", "price_output_per_mtok not set")."""
        return cost.missing_prices(self.price_input_per_mtok, self.price_output_per_mtok)


_FINGERPRINT = {
    "model",
    "base_url",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop",
    "extra_body",
}


def _valid_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8080/v1")
    if parts.path.rstrip("/").endswith("/chat/completions"):
        raise ValueError("must stop before /chat/completions (the client appends it)")
    return value.rstrip("/")


class EvalSettings(_Strict):
    """The `settings:` block of models.yaml: retries and run defaults."""

    retry_max_attempts: int = Field(default=6, ge=1)
    retry_max_wait_s: float = Field(default=300.0, ge=0)
    retry_initial_s: float = Field(default=1.0, ge=0)
    retry_max_backoff_s: float = Field(default=60.0, ge=0)
    default_runs: int = Field(default=3, ge=1)
    concurrency: int = Field(default=8, ge=1)

    @model_validator(mode="after")
    def _check_backoff(self) -> EvalSettings:
        if self.retry_initial_s > self.retry_max_backoff_s:
            raise ValueError(
                f"retry_initial_s ({self.retry_initial_s:g}) is larger than "
                f"retry_max_backoff_s ({self.retry_max_backoff_s:g}); lower one or raise the other"
            )
        return self


class PromptTurn(_Strict):
    """One user message of a sequence."""

    name: Name = Field(description="unique within its sequence, e.g. 'premise'")
    text: str = Field(description="what the user says this turn")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class Sequence(_Strict):
    """A named conversation: an optional system prompt and turns played in order."""

    name: Name = Field(description="unique key for this sequence, used in results and --sequences")
    description: str | None = None
    system: str | None = None
    turns: list[PromptTurn] = Field(min_length=1, description="the user turns, in order")

    @field_validator("system")
    @classmethod
    def _system_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty; leave the field out for no system prompt")
        return value

    @model_validator(mode="after")
    def _unique_turns(self) -> Sequence:
        _check_unique([turn.name for turn in self.turns], "turn name", "turns", "in a sequence")
        return self

    def __hash__(self) -> int:
        return hash((self.name, self.content_hash))

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of the system prompt and the turns (names and text)."""
        payload = {
            "system": self.system,
            "turns": [{"name": turn.name, "text": turn.text} for turn in self.turns],
        }
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class _ModelsFile(_Strict):
    models: list[ModelEntry] = Field(min_length=1, description="the models to evaluate")
    settings: EvalSettings = EvalSettings()

    @field_validator("settings", mode="before")
    @classmethod
    def _empty_settings(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _unique_models(self) -> _ModelsFile:
        _check_unique([entry.name for entry in self.models], "model name", "entries", "")
        return self


class _PromptsFile(_Strict):
    description: str | None = None
    sequences: list[Sequence] = Field(min_length=1, description="the prompt sequences")

    @model_validator(mode="after")
    def _unique_sequences(self) -> _PromptsFile:
        _check_unique([seq.name for seq in self.sequences], "sequence name", "entries", "")
        return self


def _check_unique(names: list[str], what: str, unit: str, scope: str) -> None:
    for name in dict.fromkeys(names):
        places = [str(i + 1) for i, other in enumerate(names) if other == name]
        if len(places) > 1:
            raise ValueError(
                f"{what} '{name}' is used by {unit} {' and '.join(places)}; names must be "
                f"unique{' ' + scope if scope else ''} - rename one"
            )


# Loading


def load_models(path: Path) -> tuple[list[ModelEntry], EvalSettings]:
    """Read and validate a models file (YAML; JSON is valid YAML too)."""
    path = Path(path)
    data = parse_yaml(path, read_text(path, "models", docs=_DOCS, default=DEFAULT_MODELS_PATH))
    if data is None:
        raise ConfigError(f"{path}: the file is empty; it needs a 'models:' list - see {_DOCS}")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping with a 'models:' list (and an optional "
            f"'settings:' block), got {CONFIG.words.kind(data)} - see {_DOCS}"
        )
    parsed = validate(_ModelsFile, data, path, CONFIG)
    for entry in parsed.models:
        entry._source = str(path)
    return list(parsed.models), parsed.settings


def load_prompts(path: Path) -> list[Sequence]:
    """Read and validate a prompts file (JSON)."""
    path = Path(path)
    text = read_text(path, "prompts", docs=_DOCS, default=DEFAULT_PROMPTS_PATH)
    if not text.strip():
        raise ConfigError(f'{path}: the file is empty; it needs {{"sequences": [...]}} - see {_DOCS}')
    data = parse_json(path, text)
    if not isinstance(data, dict):
        raise ConfigError(
            f'{path}: the top level must be an object with a "sequences" list, got {CONFIG.words.kind(data)}'
            f" - see {_DOCS}"
        )
    return list(validate(_PromptsFile, data, path, CONFIG).sequences)


class _Named(Protocol):
    @property
    def name(self) -> str: ...


N = TypeVar("N", bound=_Named)


def select(items: list[N], names_csv: str | None, kind: str, path: Path | str) -> list[N]:
    """The items named in a comma-separated list, in that order; all of them for None.

    `kind` is the singular noun for messages ("model", "sequence"); `path` the file that
    defines the items.
    """
    if names_csv is None:
        return list(items)
    wanted = list(dict.fromkeys(n.strip() for n in names_csv.split(",") if n.strip()))
    valid = [item.name for item in items]
    if not wanted:
        raise ConfigError(
            f"no {kind} names given; pass a comma-separated list of names from {path}: " + ", ".join(valid)
        )
    unknown = [name for name in wanted if name not in valid]
    if unknown:
        lines = [f"unknown {kind} '{name}'{did_you_mean(name, valid)}" for name in unknown]
        lines.append(f"{kind}s defined in {path}: {', '.join(valid)}")
        raise ConfigError("\n".join(lines))
    by_name = {item.name: item for item in items}
    return [by_name[name] for name in wanted]
