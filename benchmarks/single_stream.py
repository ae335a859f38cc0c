"""Single-stream decode: 256-token answers, one request at a time; tok/s and time to first token.

Ours and native llama-server (-np 1) alternate within each repeat (the order flips every repeat).
Every prompt starts with a unique line, so no request reuses the previous one's KV cache: TTFT is
a full prompt evaluation. `llama-bench` gives the raw decode (tg) and prompt (pp, 512 tokens by
default) rates of the same GGUF with the same settings.
"""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from itertools import count

from benchmarks.client import chat_body, new_client, stream_chat
from benchmarks.common import Record, make_record, median
from benchmarks.harness import Setup, writing_request

NAME = "single_stream"
_unique = count(1)


def llama_bench_command(setup: Setup, reps: int) -> list[str]:
    s = setup.spec
    return [
        str(setup.tools.bench), "-m", str(s.path),
        "-p", str(setup.pp_tokens), "-n", str(setup.max_tokens), "-r", str(reps),
        "-ngl", str(999 if s.n_gpu_layers < 0 else s.n_gpu_layers),
        "-fa", "1" if s.flash_attn else "0",
        "-t", str(s.threads), "-b", str(s.n_batch), "-ub", str(s.n_ubatch),
        "-o", "json",
    ]  # fmt: skip


def llama_bench(setup: Setup, reps: int) -> dict[str, list[float]]:
    """{'pp': [t/s per repetition], 'tg': [...]} from one llama-bench call."""
    out = subprocess.run(llama_bench_command(setup, reps), capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({out.returncode}): {out.stderr[-2000:]}")
    rows = json.loads(out.stdout)
    result: dict[str, list[float]] = {"pp": [], "tg": []}
    for row in rows:
        key = "pp" if row.get("n_gen", 0) == 0 else "tg"
        samples = row.get("samples_ts") or [row["avg_ts"]]
        result[key] = [float(x) for x in samples]
    return result


def gap_summary(gaps: list[float]) -> str:
    """Inter-token gaps of one answer: median / p90 / max ms."""
    if not gaps:
        return "-"
    s = sorted(gaps)
    return f"{s[len(s) // 2]:.1f}/{s[int(len(s) * 0.9)]:.1f}/{s[-1]:.0f}"


async def run(setup: Setup) -> list[Record]:
    vals: dict[str, dict[str, list[float]]] = {"ours": defaultdict(list), "native": defaultdict(list)}
    gaps: dict[str, list[str]] = {"ours": [], "native": []}
    servers = {"ours": setup.ours, "native": setup.native}
    async with new_client() as client:
        for rep in range(setup.repeats):
            order = ["ours", "native"] if rep % 2 == 0 else ["native", "ours"]
            for who in order:
                srv = servers[who]
                per: dict[str, list[float]] = defaultdict(list)
                for i in range(setup.requests):
                    messages = [
                        {"role": "system", "content": f"Request {next(_unique)}. You are a novelist."},
                        {"role": "user", "content": writing_request(setup.prompt_tokens, seed=100 + i)},
                    ]
                    body = chat_body(srv.model.name, messages, setup.max_tokens, setup.logit_bias)
                    r = await stream_chat(client, srv.base_url, body)
                    setup.check_length(who, r.completion_tokens, setup.max_tokens, r.finish_reason)
                    per["e2e"].append(r.e2e_tps)
                    per["decode"].append(r.decode_tps)
                    per["ttft"].append(r.ttft_s * 1000)
                    if r.server_decode_tps:
                        per["server_decode"].append(r.server_decode_tps)
                    per["prompt_len"].append(float(r.prompt_tokens or 0))
                    gaps[who].append(gap_summary(r.gaps_ms()))
                # Prompt evaluation: one fresh prompt of ~pp_tokens tokens, one token out.
                messages = [
                    {"role": "system", "content": f"Request {next(_unique)}."},
                    {"role": "user", "content": writing_request(setup.pp_tokens - 32, seed=7)},
                ]
                r = await stream_chat(client, srv.base_url, chat_body(srv.model.name, messages, 1))
                if r.server_prompt_tps:
                    per["prompt_tps"].append(r.server_prompt_tps)
                if setup.bias_check and setup.bias_ids:
                    bias = {str(t): -100.0 for t in setup.bias_ids}
                    messages = [
                        {"role": "system", "content": f"Request {next(_unique)}. You are a novelist."},
                        {"role": "user", "content": writing_request(setup.prompt_tokens, seed=100)},
                    ]
                    r = await stream_chat(
                        client, srv.base_url, chat_body(srv.model.name, messages, setup.max_tokens, bias)
                    )
                    per["bias_decode"].append(r.decode_tps)
                for k, v in per.items():
                    vals[who][k].append(median(v))
    bench = llama_bench(setup, max(2, setup.repeats))

    m, o, n = setup.label, vals["ours"], vals["native"]
    prompt_len = int(median(o["prompt_len"] or [0]))
    mt, pp = setup.max_tokens, setup.pp_tokens
    recs = [
        make_record(NAME, m, 1, f"end-to-end tok/s ({mt}-token answers)", "tok/s", o["e2e"], n["e2e"]),
        make_record(NAME, m, 1, "decode tok/s (client-side, after the first token)", "tok/s",
                    o["decode"], n["decode"],
                    note="inter-token gaps per answer, median/p90/max ms: ours " + ", ".join(gaps["ours"])
                    + "; native " + ", ".join(gaps["native"])),
        make_record(NAME, m, 1, f"time to first token ({prompt_len}-token fresh prompt)", "ms",
                    o["ttft"], n["ttft"], better="lower"),
        make_record(NAME, m, 1, f"prompt eval tok/s (~{pp}-token fresh prompt, server timings)", "tok/s",
                    o["prompt_tps"], n["prompt_tps"]),
        make_record(NAME, m, 1, f"decode tok/s (server timings) vs llama-bench tg{mt}", "tok/s",
                    o["server_decode"], bench["tg"], reference_name=f"llama-bench tg{mt}",
                    note="native llama-server's own decode (server timings): "
                    + " / ".join(f"{x:.1f}" for x in n["server_decode"]) + " tok/s"),
        make_record(NAME, m, 1, f"prompt eval tok/s vs llama-bench pp{setup.pp_tokens}", "tok/s",
                    o["prompt_tps"], bench["pp"], reference_name=f"llama-bench pp{setup.pp_tokens}"),
    ]  # fmt: skip
    if o.get("bias_decode"):
        recs.append(
            make_record(NAME, m, 1, "decode tok/s with the EOS ban sent as logit_bias", "tok/s",
                        o["bias_decode"], n["bias_decode"],
                        note="ours applies logit_bias through a Python logits processor every token")
        )  # fmt: skip
    return recs
