"""Multi-turn prefix reuse: a 5-turn conversation sent with its full history every turn.

Per turn: time to first token, the prompt's length, and how many prompt tokens the server actually
evaluated (`timings.prompt_n`; the rest, `cache_n`, came from its KV cache). Ideally each turn
evaluates only what is new since the previous request: the re-rendered previous answer's template
tokens and the new user message, and the first-token time stays flat as the history grows. The
history holds each server's own answers, so the two prompts can differ by a few tokens.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import count

from benchmarks.client import chat_body, new_client, stream_chat
from benchmarks.common import Record, make_record, median
from benchmarks.harness import Setup, writing_request

NAME = "prefix_reuse"
_conversation = count(1)


async def conversation(setup: Setup, who: str) -> list[dict[str, float]]:
    srv = setup.ours if who == "ours" else setup.native
    messages = [{"role": "system", "content": f"Conversation {next(_conversation)}. You are a novelist."}]
    turns: list[dict[str, float]] = []
    previous_total = 0  # prompt + answer tokens of the previous turn: what the KV cache holds
    async with new_client() as client:
        for t in range(setup.turns):
            messages.append({"role": "user", "content": writing_request(setup.turn_tokens, seed=1000 + t)})
            body = chat_body(srv.model.name, messages, setup.prefix_max_tokens, setup.logit_bias)
            r = await stream_chat(client, srv.base_url, body)
            setup.check_length(who, r.completion_tokens, setup.prefix_max_tokens, r.finish_reason)
            length = r.prompt_tokens or 0
            turns.append({
                "ttft": r.ttft_s * 1000,
                "length": float(length),
                "evaluated": float(r.prompt_evaluated if r.prompt_evaluated is not None else length),
                "new": float(length - previous_total) if t else float(length),
            })  # fmt: skip
            previous_total = length + r.completion_tokens
            messages.append({"role": "assistant", "content": r.text})
    return turns


async def run(setup: Setup) -> list[Record]:
    runs: dict[str, list[list[dict[str, float]]]] = defaultdict(list)
    for rep in range(setup.repeats):
        for who in ["ours", "native"] if rep % 2 == 0 else ["native", "ours"]:
            runs[who].append(await conversation(setup, who))
    recs: list[Record] = []
    m = setup.label
    for t in range(setup.turns):

        def col(who: str, key: str, t: int = t) -> list[float]:
            return [conv[t][key] for conv in runs[who]]

        note = (
            f"prompt {median(col('ours', 'length')):.0f} / {median(col('native', 'length')):.0f} tokens "
            f"(ours / native); new since the previous request's prompt + answer: "
            f"{median(col('ours', 'new')):.0f} / {median(col('native', 'new')):.0f}"
        )
        recs += [
            make_record(NAME, m, 1, f"turn {t + 1} time to first token", "ms",
                        col("ours", "ttft"), col("native", "ttft"), better="lower"),
            make_record(NAME, m, 1, f"turn {t + 1} prompt tokens evaluated", "tokens",
                        col("ours", "evaluated"), col("native", "evaluated"), better="lower", note=note),
            make_record(NAME, m, 1, f"turn {t + 1} prompt length", "tokens",
                        col("ours", "length"), col("native", "length"), better="equal"),
        ]  # fmt: skip
    return recs
