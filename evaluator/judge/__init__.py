"""The LLM judge: `storybench-eval judge` scores stored answers against config/rubric.json.

    rubric.py    the rubric file (criteria, scales, templates, output format) and its version
    targets.py   a run's stored turns -> judgement targets (each ok turn; each complete sequence run)
    prompts.py   the judge's prompt, fitted to its context; the JSON schema it must answer with
    verdict.py   reading the judge's answer (first JSON object, every criterion in range)
    judging.py   the requests (evaluator/client.py) and the stored judgements
    progress.py  the progress bars and tables
    cli.py       the click command; `register(group)` adds it to `storybench-eval`

docs/judging.md is the user's guide.
"""

from __future__ import annotations

import click

from evaluator.judge.cli import judge_command
from evaluator.judge.rubric import Rubric, load_rubric


def register(group: click.Group) -> None:
    """Add `judge` to the command group (called by evaluator/cli.py, like a plugin hook)."""
    group.add_command(judge_command)


__all__ = ["Rubric", "load_rubric", "register"]
