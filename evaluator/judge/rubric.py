"""The judging rubric (`config/rubric.json`): criteria, scales, prompt templates, output format.

Validated completely on load, like the other config files: any problem is a `ConfigError` whose
lines name the file, the field (with the criterion's name) and the fix; evaluator/config_messages.py
words them, as it does for models.yaml and prompts.json. `Rubric.version_id` is what every stored
judgement carries as `rubric_version`: the file's `version` plus a short hash of everything that
changes a judgement, so an edited rubric judges afresh instead of mixing its scores with the old
ones. docs/judging.md documents the file.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from evaluator.config_messages import RUBRIC, ConfigError, parse_json, read_text, validate
from evaluator.records import TargetKind, stable_hash

__all__ = [
    "DEFAULT_RUBRIC_PATH",
    "KINDS",
    "CriterionSpec",
    "PairwiseRubric",
    "Rubric",
    "TargetKind",
    "load_rubric",
]

DEFAULT_RUBRIC_PATH = Path("config/rubric.json")
_DOCS = "docs/judging.md"
# Bump when the code-side rendering of judge prompts (context layout, format instruction, JSON
# schema) changes in a way that changes judgements: it is part of the rubric hash.
RENDER_REVISION = 1

KINDS: tuple[TargetKind, ...] = get_args(TargetKind)
ResponseFormat = Literal["json_schema", "openai_json_schema", "json_object", "none"]

# Placeholders each kind's template may use, and the ones it must use.
PLACEHOLDERS: dict[str, frozenset[str]] = {
    "response": frozenset({"criteria", "system", "context", "prompt", "answer", "turn", "turns", "format"}),
    "sequence": frozenset({"criteria", "system", "conversation", "turns", "format"}),
    "pairwise": frozenset(
        {"criteria", "system", "turns", "conversation_a", "conversation_b", "scale", "format"}
    ),
}
REQUIRED_PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "response": ("answer", "format"),
    "sequence": ("conversation", "format"),
    "pairwise": ("conversation_a", "conversation_b", "format"),
}
PLACEHOLDER_RE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Scale(_Strict):
    """Integer scores from `min` to `max`, both included."""

    min: int
    max: int

    @model_validator(mode="after")
    def _ordered(self) -> Scale:
        if self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max}), e.g. 1 and 10")
        return self


class Criterion(_Strict):
    name: Name = Field(description="the key of this score, e.g. 'continuity'")
    description: str = Field(description="what the judge scores, in words")
    scale: Scale | None = None  # the rubric's `scale` when left out

    @field_validator("description")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty: say what the judge should score")
        return value


class TargetRubric(_Strict):
    """How one kind of target is judged: its criteria and its prompt template."""

    criteria: list[Criterion] = Field(min_length=1, description="what is scored")
    template: str = Field(description="the judge's prompt, with {{placeholders}}")

    @field_validator("template", mode="before")
    @classmethod
    def _join_lines(cls, value: Any) -> Any:
        # JSON has no multi-line strings: a list of lines reads better in the file.
        if isinstance(value, list) and all(isinstance(line, str) for line in value):
            return "\n".join(value)
        return value

    @model_validator(mode="after")
    def _unique(self) -> TargetRubric:
        names = [c.name for c in self.criteria]
        for name in dict.fromkeys(names):
            places = [str(i + 1) for i, other in enumerate(names) if other == name]
            if len(places) > 1:
                raise ValueError(
                    f"criteria: the name '{name}' is used by criteria {' and '.join(places)}; "
                    "names must be unique - rename one"
                )
        return self


class PairwiseRubric(_Strict):
    """How two whole conversations are compared side by side (`storybench-eval compare`).

    `scale` lists the verdicts from "the first conversation (A) is much better" to "the second
    (B) is much better", an odd number of them with the tie in the middle; verdict k of n gives
    A the share 1 - k/(n-1) (1, 0.75, 0.5, 0.25, 0 on five points).
    """

    criteria: list[Criterion] = Field(min_length=1, description="what the judge weighs")
    scale: list[Annotated[str, Field(min_length=1)]] = Field(
        default=["A much better", "A better", "tie", "B better", "B much better"],
        description="verdict labels, A much better ... tie ... B much better",
    )
    template: str = Field(description="the judge's prompt, with {{placeholders}}")

    @field_validator("template", mode="before")
    @classmethod
    def _join_lines(cls, value: Any) -> Any:
        if isinstance(value, list) and all(isinstance(line, str) for line in value):
            return "\n".join(value)
        return value

    @field_validator("scale")
    @classmethod
    def _valid_scale(cls, labels: list[str]) -> list[str]:
        if len(labels) < 3 or len(labels) % 2 == 0:
            raise ValueError(
                f"needs an odd number of labels (3 or more) with the tie in the middle, got {len(labels)}"
            )
        if len({label.strip().lower() for label in labels}) != len(labels):
            raise ValueError("the labels must differ from each other (ignoring case)")
        return labels

    @model_validator(mode="after")
    def _valid_template(self) -> PairwiseRubric:
        _check_placeholders("pairwise", self.template)
        return self

    def share(self, label: str) -> float:
        """The first conversation's share for a verdict label: 1 ... 0.5 (tie) ... 0."""
        k = self.scale.index(label)
        return 1.0 - k / (len(self.scale) - 1)


@dataclass(frozen=True)
class CriterionSpec:
    """A criterion with its scale resolved."""

    name: str
    description: str
    min: int
    max: int


class Rubric(_Strict):
    description: str | None = None
    version: Name = Field(description="your version label, e.g. '1' or '2026-03'")
    judge: Name | None = None  # default judge: a model entry name of config/models.yaml
    scale: Scale = Scale(min=1, max=10)
    response_format: ResponseFormat = "json_schema"
    max_tokens: int = Field(default=512, gt=0)
    seed: int = 1234
    rationale_max_chars: int = Field(default=800, ge=20)
    system: str | None = None
    response: TargetRubric | None = None
    sequence: TargetRubric | None = None
    pairwise: PairwiseRubric | None = None

    @field_validator("system", mode="before")
    @classmethod
    def _join_system(cls, value: Any) -> Any:
        if isinstance(value, list) and all(isinstance(line, str) for line in value):
            return "\n".join(value)
        return value

    @model_validator(mode="after")
    def _check_targets(self) -> Rubric:
        if self.response is None and self.sequence is None and self.pairwise is None:
            raise ValueError(
                "the rubric judges nothing: add a 'response' block (each turn), a 'sequence' "
                "block (each whole conversation) and/or a 'pairwise' block (two conversations side by side)"
            )
        for kind in KINDS:
            part = self.target(kind)
            if part is not None:
                _check_placeholders(kind, part.template)
        return self

    def target(self, kind: str) -> TargetRubric | None:
        return self.response if kind == "response" else self.sequence if kind == "sequence" else None

    @property
    def kinds(self) -> list[TargetKind]:
        """The target kinds this rubric judges, in order."""
        return [kind for kind in KINDS if self.target(kind) is not None]

    def criteria(self, kind: str) -> list[CriterionSpec]:
        part = self.target(kind)
        if part is None:
            return []
        return [
            CriterionSpec(c.name, c.description, (c.scale or self.scale).min, (c.scale or self.scale).max)
            for c in part.criteria
        ]

    def template(self, kind: str) -> str:
        part = self.target(kind)
        if part is None:
            raise KeyError(kind)
        return part.template

    @property
    def content_hash(self) -> str:
        """Hash of everything that changes a judgement: not `description`, not `judge` (the judge
        is part of each judgement's id already). Defaults are filled in first, so spelling out a
        default does not change it."""
        content = self.model_dump(mode="json", exclude={"description", "judge"})
        return stable_hash({"rubric": content, "render_revision": RENDER_REVISION})

    @property
    def version_id(self) -> str:
        """`rubric_version` of the judgements made with this rubric: `<version>-<8 hex>`."""
        return f"{self.version}-{self.content_hash[:8]}"


def _check_placeholders(kind: str, template: str) -> None:
    if not template.strip():
        raise ValueError(f"{kind}.template: must not be empty")
    valid = sorted(PLACEHOLDERS[kind])
    used = PLACEHOLDER_RE.findall(template)
    for name in used:
        if name not in PLACEHOLDERS[kind]:
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
            hint = f" - did you mean {{{{{close[0]}}}}}?" if close else ""
            raise ValueError(
                f"{kind}.template: unknown placeholder {{{{{name}}}}}{hint} "
                f"(valid for {kind}: {', '.join('{{' + v + '}}' for v in valid)})"
            )
    for name in REQUIRED_PLACEHOLDERS[kind]:
        if name not in used:
            raise ValueError(
                f"{kind}.template: must contain {{{{{name}}}}} "
                f"(required: {', '.join('{{' + r + '}}' for r in REQUIRED_PLACEHOLDERS[kind])})"
            )


# Loading


def load_rubric(path: Path) -> Rubric:
    """Read and validate a rubric file (JSON); ConfigError naming the file and field otherwise."""
    path = Path(path)
    text = read_text(
        path, "rubric", docs=_DOCS, default=DEFAULT_RUBRIC_PATH, alternative=" - or point --rubric at one"
    )
    if not text.strip():
        raise ConfigError(f"{path}: the file is empty; it needs a version and criteria - see {_DOCS}")
    data = parse_json(path, text)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be an object (see {_DOCS}), got {RUBRIC.words.kind(data)}"
        )
    return validate(Rubric, data, path, RUBRIC)
