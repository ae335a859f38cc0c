"""What admitting one request costs the engine thread: choosing its slot among many idle slots
holding long conversations (`server/engine/prefix.py`), token for token and with the text match
that keeps a cache past a re-tokenized answer. Synthetic tokens, no model: the engine thread
decodes nothing while it chooses, so this is a stall for every running conversation.

    python -m benchmarks.slot_choice --slots 64 --tokens 7000
"""

from __future__ import annotations

import argparse
import json
import random
import time

from server.engine.prefix import Match, Matcher, choose_slot, text_match, token_match
from server.engine.scheduler import Slot

AS_GENERATED, AS_TOKENIZED = [10, 11], [12, 13]  # " a" + "day", " ad" + "ay"
PIECES = {10: b" a", 11: b"day", 12: b" ad", 13: b"ay"}


def spell(token: int) -> bytes | None:
    return PIECES.get(token) or f" w{token}".encode()


def stories(slots: int, tokens: int, seed: int) -> tuple[list[Slot], list[int]]:
    """Idle slots each holding a story whose first answer has " a" + "day" 300 tokens in, and the
    next turn of one of them: the whole story re-tokenized (" ad" + "ay") plus a new turn."""
    rng = random.Random(seed)
    idle = []
    for s in range(slots):
        body = [rng.randrange(100, 30_000) for _ in range(tokens)]
        cache = [1, *body[:300], *AS_GENERATED, *body[300:]]
        idle.append(Slot(seq=s, cache=cache, prompt_len=tokens - 400, last_used=rng.random()))
    mine = idle[slots // 3].cache
    prompt = [1, *mine[1:301], *AS_TOKENIZED, *mine[303:], *(rng.randrange(100, 30_000) for _ in range(300))]
    return idle, prompt


def per_admission_ms(
    idle: list[Slot], prompt: list[int], match: Matcher, repeats: int
) -> tuple[float, Match]:
    found = choose_slot(idle, prompt, match)[1]
    start = time.perf_counter()
    for _ in range(repeats):
        choose_slot(idle, prompt, match)
    return (time.perf_counter() - start) * 1000 / repeats, found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=7000, help="tokens each idle slot holds")
    ap.add_argument("--repeats", type=int, default=50)
    a = ap.parse_args(argv)
    idle, prompt = stories(a.slots, a.tokens, seed=0)
    out = {}
    for name, match in (("token", token_match), ("text", text_match(spell, limit=10 * a.tokens))):
        ms, found = per_admission_ms(idle, prompt, match, a.repeats)
        out[name] = {"ms_per_admission": round(ms, 3), "kept": found.kept}
    print(json.dumps({"benchmark": "slot_choice", "settings": vars(a), **out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
