"""Tables for BENCHMARKS.md from one `benchmarks/device_steps.sh` call (issue 16): our engine's
throughput in-process against llama.cpp's batched limit, the per-step profile, and a roofline line.

    python -m benchmarks.steps_report DIR [DIR ...]

Each DIR holds `batched-bench-<shape>.txt` and `steps-<shape>.json` as the device call left them
(a copy is kept under benchmarks/results/), and `turns-<shape>.json` when the call ran the
in-process long stories (`engine_turns`); a variant the call's deadline stopped shows as "-"
(both benchmarks write their file after every variant). Two shares of batched-bench: the generation phase
(ours over its decode-only steps, all sequences generating, decode + sampling + Python: what S_TG
times, batched-bench's generation steps with nothing sampled) and the whole run (ours from the
first submission to the last token, prompts included, against batched-bench's generated tokens
over its prompt and generation time, T_PP + T_TG). The roofline line divides the bytes a decode step
must read at least once, the whole model file plus the K and V of every sequence's context
(prompt + half the answer on average), by the step time, against the memory bandwidth of the GPU
that `device.log` names (H200 4.8 TB/s, H100 SXM 3.35 TB/s; the H200's when it names none).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

# Memory bandwidth by the name nvidia-smi gives (the first match in `device.log`), bytes/s.
GPU_BYTES_PER_S = {"H200": 4.8e12, "H100 80GB HBM3": 3.35e12}
# K and V bytes per token of context, f16 cache: 2 x layers x KV heads x head size x 2 bytes.
KV_BYTES_PER_TOKEN = {"llama-1b": 2 * 16 * 8 * 64 * 2, "llama-8b": 2 * 32 * 8 * 128 * 2}
MODEL_BYTES = {"llama-1b": 807_690_240, "llama-8b": 4_920_734_176}  # the Q4_K_M files of the calls


def batched_bench(path: Path) -> dict[int, float]:
    """S_TG (generated tokens/s) by number of sequences, from llama-batched-bench's table."""
    return {n: row["S_TG"] for n, row in batched_bench_rows(path).items()}


def batched_bench_rows(path: Path) -> dict[int, dict[str, float]]:
    """Every column of llama-batched-bench's table (PP, TG, B, N_KV, T_PP s, S_PP t/s, ...) by
    number of sequences (the last row of each), named without their units; none when the run
    had no batched-bench (the CPU)."""
    return {int(row["B"]): row for row in batched_bench_table(path)}


def batched_bench_table(path: Path) -> list[dict[str, float]]:
    """llama-batched-bench's table, row by row (several prompt lengths give several rows of one
    number of sequences); empty when there is no file."""
    rows: list[dict[str, float]] = []
    names: list[str] = []
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0] == "PP":
            names = [c.split(" ")[0] for c in cells]
        elif names and len(cells) == 10 and re.fullmatch(r"\d+", cells[2]):
            rows.append(dict(zip(names, map(float, cells), strict=True)))
    return rows


def phase_shares(row: dict[str, object], bench: dict[str, float]) -> tuple[float, float] | None:
    """(generation-phase share, whole-run share) of batched-bench for one engine variant's row
    (see the module's docstring); None for a row without decode-only steps."""
    d = row.get("decode_only_step_ms")
    if not isinstance(d, dict) or not d.get("steps"):
        return None
    n, generated = bench["B"], bench["B"] * bench["TG"]
    steady = n / ((d["decode"] + d["sample"] + d["other"]) / 1000)
    whole = float(row["tok_per_s"])  # type: ignore[arg-type]
    return steady / bench["S_TG"], whole / (generated / (bench["T_PP"] + bench["T_TG"]))


def gpu(folder: Path) -> tuple[str, float]:
    """The GPU a call ran on, from its `device.log` (nvidia-smi's line), and its bandwidth; the
    H200 when the log is missing or names another."""
    log = folder / "device.log"
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    for name, rate in GPU_BYTES_PER_S.items():
        if f"NVIDIA {name}" in text:
            return name.split()[0], rate
    return "H200", GPU_BYTES_PER_S["H200"]


def roofline_share(shape: str, n: int, step_s: float, prompt: int, gen: int, bandwidth: float) -> float:
    """NaN for a model whose bytes are not recorded here (a CPU run's)."""
    if shape not in MODEL_BYTES:
        return float("nan")
    context = prompt + gen / 2
    moved = MODEL_BYTES[shape] + n * context * KV_BYTES_PER_TOKEN[shape]
    return moved / step_s / bandwidth


def report(folder: Path) -> str:
    lines = []
    name, bandwidth = gpu(folder)
    for steps_path in sorted(folder.glob("steps-*.json")):
        shape = steps_path.stem.removeprefix("steps-")
        steps = json.loads(steps_path.read_text(encoding="utf-8"))
        bb = batched_bench(folder / f"batched-bench-{shape}.txt")
        prompt, gen = steps["settings"]["prompt"], steps["settings"]["gen"]
        levels = steps["levels"]
        variants = list(next(iter(levels.values())).keys())
        lines.append(f"\n{steps['model']} ({folder.name}): tok/s, share of llama-batched-bench S_TG\n")
        lines.append("| sequences | batched-bench | " + " | ".join(variants) + " |")
        lines.append("|---" * (2 + len(variants)) + "|")
        for n, row in levels.items():
            ref = bb.get(int(n))
            cells = []
            for v in variants:
                if v not in row:  # the call's deadline came first
                    cells.append("-")
                    continue
                rate = row[v]["tok_per_s"]
                cells.append(f"{rate:,.0f} ({100 * rate / ref:.0f}%)" if ref else f"{rate:,.0f}")
            lines.append(f"| {n} | {ref:,.0f} | " + " | ".join(cells) + " |" if ref else f"| {n} | - | ...")
        rows = batched_bench_rows(folder / f"batched-bench-{shape}.txt")
        engines = [v for v in variants if not v.startswith("raw")]
        lines.append("\nShare of batched-bench: generation phase / whole run (prompts included)\n")
        lines.append("| sequences | " + " | ".join(engines) + " |")
        lines.append("|---" * (1 + len(engines)) + "|")
        for n, row in levels.items():
            bench = rows.get(int(n))
            found = [phase_shares(row[v], bench) if bench and v in row else None for v in engines]
            cells = [f"{100 * f[0]:.0f}% / {100 * f[1]:.0f}%" if f else "-" for f in found]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append(
            "\nPer decode-only step, ms: decode / sampling / other; "
            f"roofline share of the {name}'s bandwidth\n"
        )
        lines.append("| sequences | " + " | ".join(variants) + " | batched-bench roofline |")
        lines.append("|---" * (2 + len(variants)) + "|")
        for n, row in levels.items():
            cells = []
            for v in variants:
                r = row.get(v)
                if r is None:
                    cells.append("-")
                elif "decode_only_step_ms" in r:
                    d = r["decode_only_step_ms"]
                    step = (d["decode"] + d["sample"] + d["other"]) / 1000
                    share = roofline_share(shape, int(n), step, prompt, gen, bandwidth)
                    cells.append(
                        f"{d['decode']:.2f} / {d['sample']:.2f} / {d['other']:.2f} ({100 * share:.1f}%)"
                    )
                else:
                    step = r["ms_per_step"] / 1000
                    share = roofline_share(shape, int(n), step, prompt, gen, bandwidth)
                    launch = r.get("decode_call_ms_per_step")  # `raw_lanes` does not time it
                    head = f"launch {launch:.2f}; " if launch is not None else ""
                    cells.append(f"{r['ms_per_step']:.2f} ({head}{100 * share:.1f}%)")
            ref = bb.get(int(n))
            ref_share = roofline_share(shape, int(n), int(n) / ref, prompt, gen, bandwidth) if ref else 0.0
            ref_cell = f"{100 * ref_share:.1f}%" if ref else "-"
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {ref_cell} |")
    for turns_path in sorted(folder.glob("turns-*.json")):
        lines.extend(turns_table(json.loads(turns_path.read_text(encoding="utf-8")), folder.name))
    return "\n".join(lines)


def turns_table(turns: dict[str, Any], where: str) -> list[str]:
    """`engine_turns`' long stories: one row per variant, in the order they ran."""
    st = turns["settings"]
    lines = [
        f"\n{turns['model']} ({where}): {st['conversations']} conversations x {st['turns']} turns in-process "
        f"(`engine_turns`, answers up to {st['gen']} tokens)\n",
        "| variant | tok/s | turn latency, first / last (ms) | first token, first / last (ms) "
        "| graphs built | micro-batches / steps | held rows | gap fillers |",
        "|---" * 8 + "|",
    ]
    for name, row in turns["variants"].items():
        lat, first = row["turn_latency_ms_median"], row["turn_first_token_ms_median"]
        lines.append(
            f"| {name} | {row['tok_per_s']:,.0f} | {lat[0]:,.0f} / {lat[-1]:,.0f} ({lat[-1] / lat[0]:.2f}x) "
            f"| {first[0]:,.0f} / {first[-1]:,.0f} | {row['graph_builds']} "
            f"| {row['micro_batches']} / {row['steps']} | {row['held_rows']} | {row['gap_fillers']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    folders = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    if not folders:
        print(__doc__)
        return 2
    for folder in folders:
        print(report(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
