"""Text clean-up applied to answers before they are judged or sent back as history."""

from __future__ import annotations

import re

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_UNCLOSED_THINK = re.compile(r"<think>.*\Z", re.DOTALL | re.IGNORECASE)


def strip_think(text: str) -> str:
    """Drop reasoning blocks; an unclosed `<think>` (answer cut off while thinking) drops the rest.

    The raw text is always kept alongside, so nothing the model wrote is lost.
    """
    cleaned = _THINK_BLOCK.sub("", text)
    cleaned = _UNCLOSED_THINK.sub("", cleaned)
    return cleaned.strip()


def is_blank(text: str) -> bool:
    return not text.strip()
