"""The options `judge` and `compare` share, defined once: the judge entry, the rubric, the models
file, requests in flight and repeats. Each command passes only its own wording of the help."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from evaluator.config import DEFAULT_MODELS_PATH
from evaluator.judge.judging import DEFAULT_REPEAT_TEMPERATURE
from evaluator.judge.rubric import DEFAULT_RUBRIC_PATH

__all__ = ["judge_options"]

F = TypeVar("F", bound=Callable[..., Any])


def judge_options(*, rubric_help: str, repeat_unit: str) -> Callable[[F], F]:
    """--judge, --rubric, --config, --concurrency, --repeat, --repeat-temperature."""
    options = [
        click.option(
            "--judge",
            "judge_name",
            default=None,
            help="The judge: a model entry name of --config. Default: the rubric's `judge`, else the "
            "first model of --config.",
        ),
        click.option(
            "--rubric",
            "rubric_path",
            type=click.Path(path_type=Path),
            default=DEFAULT_RUBRIC_PATH,
            show_default=True,
            help=rubric_help,
        ),
        click.option(
            "--config",
            "models_path",
            type=click.Path(path_type=Path),
            default=DEFAULT_MODELS_PATH,
            show_default=True,
            help="Models file the judge entry and the retry settings come from (YAML).",
        ),
        click.option(
            "--concurrency",
            type=click.IntRange(min=1),
            default=None,
            help="Judge requests in flight (default, the same rule as `run`: the judge entry's "
            "max_concurrency, else our server's slot count, else 4 for a hosted API).",
        ),
        click.option(
            "--repeat",
            "repeats",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help=f"Judgements per {repeat_unit}: repeat 0 at temperature 0 with the rubric's seed, "
            "repeats 1..K-1 with seed + 1000*k at --repeat-temperature (the judge's spread).",
        ),
        click.option(
            "--repeat-temperature",
            type=click.FloatRange(min=0.0),
            default=DEFAULT_REPEAT_TEMPERATURE,
            show_default=True,
            help="Temperature of repeats 1..K-1 (at 0 another seed changes nothing).",
        ),
    ]

    def apply(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return apply
