"""The LLM judge: `storybench-eval judge` scores stored answers against config/rubric.json.

    rubric.py    the rubric file (criteria, scales, templates, output format) and its version
    targets.py   a run's stored turns -> judgement targets (each ok turn; each complete sequence run)
    prompts.py   the judge's prompt, fitted to its context; the JSON schema it must answer with
    verdict.py   reading the judge's answer (first JSON object, every criterion in range)
    judging.py   the requests (evaluator/client.py) and the stored judgements
    progress.py  the progress bars and tables
    cli.py       the click command, registered by evaluator/cli.py

docs/judging.md is the user's guide.
"""

from __future__ import annotations

from evaluator.judge.rubric import Rubric, load_rubric

__all__ = ["Rubric", "load_rubric"]
