"""What the server benchmarks share: the servers under test, prompts, and answer-length checks."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from benchmarks.native import NativeTools
from benchmarks.servers import ModelSpec, ServerProcess

_TEXT = (
    "the old lighthouse keeper watched storm clouds gather over a grey harbour while fishing boats "
    "raced home and children ran along the wet stone pier carrying lanterns letters and bread for "
    "their families a stranger in a long coat stepped off the last ferry asking about a map that "
    "had vanished forty years ago from the town museum nobody answered but the baker remembered "
    "a song her grandmother used to sing about a ship made of glass that sailed only at midnight "
    "and returned with voices of people who had been lost at sea"
)
_WORDS = tuple(_TEXT.split())


def prose(n_tokens: int, seed: int) -> str:
    """Deterministic English-like text of roughly `n_tokens` tokens (about one token a word)."""
    rng = random.Random(seed)
    words: list[str] = []
    sentence = 0
    while len(words) < int(n_tokens * 0.85):
        w = rng.choice(_WORDS)
        words.append(w.capitalize() if sentence == 0 else w)
        sentence += 1
        if sentence > rng.randint(8, 16):
            words[-1] += "."
            sentence = 0
    return " ".join(words).rstrip(".") + "."


def writing_request(n_tokens: int, seed: int) -> str:
    return (
        "Continue the story below in the same voice, with vivid detail and dialogue. "
        "Do not summarise; write the next scene.\n\n" + prose(n_tokens, seed)
    )


@dataclass
class Setup:
    """One model served by ours and by native llama-server, and the benchmark knobs."""

    label: str  # model label in the tables
    spec: ModelSpec
    tools: NativeTools
    ours: ServerProcess
    native: ServerProcess  # -np 1: single stream and prefix reuse
    native_parallel: ServerProcess | None  # -np max(concurrency): concurrency, multiturn_concurrency
    # -np max(concurrency) with --backend-sampling: concurrency's third server (--native-backend-sampling)
    native_backend: ServerProcess | None = None
    max_tokens: int = 256
    concurrency_max_tokens: int = 256
    prefix_max_tokens: int = 256
    multiturn_max_tokens: int = 256
    repeats: int = 2
    requests: int = 2  # per repeat, for single stream
    prompt_tokens: int = 256  # single-stream prompt
    pp_tokens: int = 512  # prompt-evaluation request and llama-bench -p
    turn_tokens: int = 300  # new user tokens per turn (prefix reuse, multiturn concurrency)
    turns: int = 5
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16])
    logit_bias: dict[str, float] | None = None  # EOS ban, when the weights do not ban it
    bias_check: bool = False  # also time single stream with the EOS ban sent as logit_bias
    bias_ids: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def check_length(self, who: str, got: int, want: int, finish: str | None) -> None:
        if got != want:
            self.warn(f"{self.label} {who}: answer of {got} tokens (wanted {want}, finish_reason {finish})")

    def warn(self, msg: str) -> None:
        if msg not in self.warnings:
            self.warnings.append(msg)
