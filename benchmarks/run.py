"""`make bench`: our server and evaluator side by side with native llama.cpp, on this machine.

    python -m benchmarks.run                      # CPU here, the bundled SmolLM2-135M, every benchmark
    python -m benchmarks.run --smoke              # seconds: checks the harness end to end, asserts nothing
    python -m benchmarks.run --gpu --model M.gguf::LABEL ...   # on a GPU machine (benchmarks/device_run.sh)
    python -m benchmarks.run --ingest gpu.json    # record a run made elsewhere (the GPU machine's output)

Each benchmark prints a table of ours / reference / ratio. A full run writes
`benchmarks/results/<date>.json` and merges into `benchmarks/results/latest.json`, and appends the
figures, the machine, versions and exact commands to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from benchmarks import native as native_mod
from benchmarks.common import (
    BENCHMARKS,
    MARKDOWN,
    RESULTS_DIR,
    ROOT,
    Environment,
    Record,
    append_markdown,
    print_table,
    run_section,
    write_results,
)
from benchmarks.harness import Setup
from benchmarks.servers import ModelSpec, ServerProcess, eog_token_ids
from benchmarks.servers import native as native_server
from benchmarks.servers import ours as ours_server

SERVER_BENCHMARKS = ("single_stream", "prefix_reuse", "concurrency", "multiturn_concurrency")
_PARALLEL = ("concurrency", "multiturn_concurrency")  # the benchmarks that need native -np N


def bundled_model(name: str = "smollm2-135m") -> Path:
    from server import bundled

    return bundled.locate(f"bundled:{name}")


def model_label(path: Path) -> str:
    """'SmolLM2-135M-Instruct.Q4_1' style: the file name, which names the model and its quantisation."""
    return path.name.removesuffix(".gguf")


def is_synthetic(path: Path) -> bool:
    import gguf

    field = gguf.GGUFReader(str(path)).fields.get("general.description")
    return field is not None and "StoryBench synthetic" in str(field.contents())


def parse_model(text: str) -> tuple[Path, str | None]:
    path, _, label = text.partition("::")
    if path.startswith("bundled:"):
        return bundled_model(path.split(":", 1)[1]), label or None
    return Path(path).expanduser().resolve(), label or None


def _threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.records: list[Record] = []
        self.commands: list[str] = [
            "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        ]
        self.notes: list[str] = []
        self.env: Environment | None = None

    def save_partial(self) -> None:
        if self.args.out_json and self.env is not None:
            doc = {
                "records": [r.to_json() for r in self.env.stamp(self.records)],
                "commands": self.commands,
                "notes": self.notes,
                "env": self.env.__dict__,
            }
            Path(self.args.out_json).write_text(json.dumps(doc, indent=1), encoding="utf-8")

    def add(self, records: list[Record], title: str) -> None:
        assert self.env is not None
        self.env.stamp(records)
        self.records += records
        print_table(records, title)
        self.save_partial()

    def servers_for(self, path: Path, label: str, tools: native_mod.NativeTools) -> Setup:
        a = self.args
        workdir = Path(a.workdir)
        spec = ModelSpec(
            name="bench-model",
            path=path,
            n_ctx=a.ctx,
            n_gpu_layers=-1 if a.gpu else 0,
            flash_attn=a.gpu if a.flash_attn is None else a.flash_attn == "on",
            threads=a.threads or _threads(),
            n_batch=a.batch,
            n_ubatch=a.ubatch,
        )
        parallel = max(a.concurrency)
        lib_dir = tools.lib_dir if a.ours_libs == "native" else None
        engine = None if a.ours_engine == "default" else a.ours_engine
        backend = {"auto": None, "on": True, "off": False}[a.ours_backend_sampling]
        ours = ours_server(spec, workdir, lib_dir, engine, parallel, backend_sampling=backend,
                           threads_sampling=a.ours_threads_sampling or None,
                           graph_tail=a.ours_graph_tail, lanes=a.ours_lanes or None)  # fmt: skip
        nat = native_server(tools, spec, workdir, 1)
        wanted = set(self.selected)
        nat_par = native_server(tools, spec, workdir, parallel) if wanted & set(_PARALLEL) else None
        nat_bs = None
        if a.native_backend_sampling and "concurrency" in wanted:
            nat_bs = native_server(tools, spec, workdir, parallel, backend_sampling=True)
        bias_ids = eog_token_ids(path)
        ban = a.ban_eos
        if ban == "auto":
            ban = "none" if is_synthetic(path) else "bias"
        setup = Setup(
            label=label, spec=spec, tools=tools, ours=ours, native=nat, native_parallel=nat_par,
            native_backend=nat_bs,
            max_tokens=a.max_tokens, prefix_max_tokens=a.prefix_max_tokens or a.max_tokens,
            concurrency_max_tokens=a.concurrency_max_tokens or a.max_tokens,
            multiturn_max_tokens=a.multiturn_max_tokens or a.concurrency_max_tokens or a.max_tokens,
            repeats=a.repeats, requests=a.requests, prompt_tokens=a.prompt_tokens, pp_tokens=a.pp_tokens,
            turn_tokens=a.turn_tokens, turns=a.turns, concurrency=a.concurrency,
            logit_bias={str(t): -100.0 for t in bias_ids} if ban == "bias" else None,
            bias_check=a.bias_check, bias_ids=bias_ids,
        )  # fmt: skip
        how = {
            "bias": f"logit_bias -100 on the end-of-generation tokens {bias_ids} in every request "
            "(both servers)",
            "none": "synthetic weights: the end-of-generation tokens' output rows are zero, so no request "
            "carries a logit_bias; every answer's length is checked",
        }[ban]
        self.notes.append(f"{label}: end of sequence banned by {how}")
        return setup

    @property
    def selected(self) -> list[str]:
        return [b.strip() for b in self.args.benchmarks.split(",") if b.strip()]

    def run_model(self, path: Path, label: str, tools: native_mod.NativeTools) -> None:
        setup = self.servers_for(path, label, tools)
        servers: list[ServerProcess] = [s for s in (setup.ours, setup.native, setup.native_parallel) if s]
        optional = setup.native_backend  # experimental: its failure drops only its own figures
        try:
            t0 = time.perf_counter()
            for s in servers + ([optional] if optional else []):
                s.start()
            for s in servers:
                s.wait_ready(self.args.ready_timeout)
            if optional is not None:
                try:
                    optional.wait_ready(min(self.args.ready_timeout, 180.0))
                    servers.append(optional)
                except Exception as exc:
                    optional.stop()
                    setup.native_backend = None
                    self.notes.append(
                        f"{label}: {optional.label} did not start, left out: {str(exc)[-1500:]}"
                    )
            print(f"[{label}] servers ready in {time.perf_counter() - t0:.1f}s", flush=True)
            for s in servers:
                self.commands.append(f"{s.label}: {s.shown_command()}")
            cfg = Path(setup.ours.command[setup.ours.command.index("--config") + 1])
            self.commands.append(
                f"ours config ({cfg.name}): {json.dumps(json.loads(cfg.read_text())['models'][0])}"
            )
            from benchmarks import concurrency, multiturn_concurrency, prefix_reuse, single_stream

            steps: dict[str, Callable[[Setup], Coroutine[Any, Any, list[Record]]]] = {
                "single_stream": single_stream.run,
                "prefix_reuse": prefix_reuse.run,
                "concurrency": concurrency.run,
                "multiturn_concurrency": multiturn_concurrency.run,
            }
            for name in [b for b in self.selected if b in SERVER_BENCHMARKS]:
                t1 = time.perf_counter()
                try:
                    recs = asyncio.run(steps[name](setup))
                except Exception as exc:  # keep what the other benchmarks measured
                    self.notes.append(f"{label} {name} FAILED: {type(exc).__name__}: {exc}")
                    print(f"[{label}] {name} failed: {exc}", file=sys.stderr, flush=True)
                    continue
                if name == "single_stream":
                    from benchmarks.single_stream import llama_bench_command

                    self.commands.append(
                        "llama-bench: " + shlex.join(llama_bench_command(setup, max(2, setup.repeats)))
                    )
                self.add(recs, f"{name}: {label} ({time.perf_counter() - t1:.0f}s)")
        finally:
            self.notes += setup.warnings
            for s in servers + ([optional] if optional else []):
                s.stop()

    def main(self) -> int:
        a = self.args
        tools = native_mod.ensure() if any(b in self.selected for b in SERVER_BENCHMARKS) else None
        self.env = Environment.detect(tools.version() if tools else "")
        if tools:
            self.notes.append(f"native tools: {tools.source} ({tools.server.parent})")
        self.notes.append(
            f"settings: n_ctx {a.ctx} per conversation, n_batch {a.batch}, n_ubatch {a.ubatch}, "
            f"{'full GPU offload, flash attention on' if a.gpu else 'CPU only, flash attention off'}, "
            f"threads {a.threads or _threads()}; sampler temperature 0.7, top_p 0.95, top_k 40, min_p 0.05, "
            f"repeat_penalty 1.0, seed 1234 (both servers); {a.repeats} repeats, ours and native "
            f"alternating; ours: engine {a.ours_engine}, backend_sampling {a.ours_backend_sampling}, "
            f"n_threads_sampling {a.ours_threads_sampling or 'auto'}, graph_tail {a.ours_graph_tail}, "
            f"lanes {a.ours_lanes or 'default'}"
        )
        if tools:
            for spec in a.model or ["bundled:smollm2-135m"]:
                path, label = parse_model(spec)
                label = label or model_label(path)
                try:
                    self.run_model(path, label, tools)
                except Exception as exc:  # e.g. a server that did not start: the next model still runs
                    self.notes.append(f"{label} FAILED: {type(exc).__name__}: {str(exc)[:2000]}")
                    print(f"[{label}] failed: {exc}", file=sys.stderr, flush=True)
                    self.save_partial()
        if "evaluator_overhead" in self.selected:
            from benchmarks import evaluator_overhead

            recs = evaluator_overhead.run(a.eval_concurrency, a.repeats, tokens=a.max_tokens,
                                          turns=a.turns, conversations=a.eval_conversations)  # fmt: skip
            self.add(recs, "evaluator_overhead")
        self.finish()
        return 0

    def finish(self) -> None:
        assert self.env is not None
        print_table(self.records, f"all results: {self.env.machine}")
        for note in self.notes:
            print(f"note: {note}")
        self.save_partial()
        self.persist(self.env, self.records, self.commands, self.notes)

    def persist(self, env: Environment, records: list[Record], commands: list[str], notes: list[str]) -> None:
        a = self.args
        if a.results_dir != "none" and records:
            dated = write_results(records, Path(a.results_dir), a.tag)
            print(f"results: {dated} and {Path(a.results_dir) / 'latest.json'}")
        if a.markdown != "none" and records:
            append_markdown(run_section(env, records, commands, notes), Path(a.markdown))
            print(f"appended to {a.markdown}")


def ingest(args: argparse.Namespace) -> int:
    """Record a run made on another machine (its --out-json) here: results files and BENCHMARKS.md."""
    run = Run(args)
    for file in args.ingest:
        doc = json.loads(Path(file).read_text(encoding="utf-8"))
        records = [Record(**r) for r in doc["records"]]
        env = Environment(**doc["env"])
        print_table(records, f"ingested: {env.machine}")
        run.persist(env, records, doc["commands"], doc["notes"])
    return 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--benchmarks", default=",".join(BENCHMARKS), help="comma-separated subset of %(default)s"
    )
    ap.add_argument(
        "--model",
        action="append",
        help="GGUF path or bundled:NAME, optionally ::LABEL (repeatable); default bundled:smollm2-135m",
    )
    ap.add_argument("--gpu", action="store_true", help="full offload and flash attention (default: CPU only)")
    ap.add_argument("--flash-attn", choices=["on", "off"], default=None, help="override the --gpu default")
    ap.add_argument(
        "--ctx", type=int, default=None, help="context per conversation (default 8192 GPU, 4096 CPU)"
    )
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--ubatch", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0, help="default: all cores here, half of them with --gpu")
    ap.add_argument(
        "--max-tokens", type=int, default=256, help="answer length, single stream and concurrency"
    )
    ap.add_argument("--prefix-max-tokens", type=int, default=0, help="answer length per prefix-reuse turn "
                    "(default: --max-tokens)")  # fmt: skip
    ap.add_argument(
        "--concurrency-max-tokens",
        type=int,
        default=0,
        help="answer length for concurrency (default: --max-tokens)",
    )
    ap.add_argument(
        "--multiturn-max-tokens",
        type=int,
        default=0,
        help="answer length per multiturn_concurrency turn (default: the concurrency answer length)",
    )
    ap.add_argument("--prompt-tokens", type=int, default=256, help="single-stream prompt size (approx.)")
    ap.add_argument("--pp-tokens", type=int, default=512, help="prompt-evaluation prompt and llama-bench -p")
    ap.add_argument(
        "--turn-tokens",
        type=int,
        default=300,
        help="new user tokens per turn of prefix_reuse and multiturn_concurrency (approx.)",
    )
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--concurrency", type=_ints, default=[1, 4, 16])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--requests", type=int, default=2, help="single-stream requests per repeat and server")
    ap.add_argument(
        "--ban-eos",
        choices=["auto", "bias", "none"],
        default="auto",
        help="auto: none for StoryBench synthetic models (zeroed EOG rows), else logit_bias",
    )
    ap.add_argument(
        "--ours-engine",
        choices=["default", "llama-cpp-python", "batched"],
        default="default",
        help="our server's engine (config field `engine`); batched gets n_parallel = max concurrency",
    )
    ap.add_argument(
        "--ours-libs",
        choices=["native", "package"],
        default="native",
        help="native (default): our server loads the very libllama/libggml the native tools use "
        "(LLAMA_CPP_LIB_PATH), so only the server layers differ; package: llama-cpp-python's own build",
    )
    ap.add_argument(
        "--ours-backend-sampling",
        choices=["auto", "on", "off"],
        default="auto",
        help="our config's `backend_sampling` (batched engine: sampling in the decode graph); "
        "auto leaves it out (the server's default: on with a GPU)",
    )
    ap.add_argument(
        "--ours-graph-tail",
        action="store_true",
        help='our config\'s `"graph_tail": true` (batched engine with backend sampling: top-p, min-p, '
        "temperature and the draw in the decode graph too, one token per row back)",
    )
    ap.add_argument(
        "--ours-lanes",
        type=int,
        default=0,
        help="our config's `lanes` (batched engine: slots over that many contexts, a thread each); "
        "0 leaves it out (the server's default)",
    )
    ap.add_argument(
        "--ours-threads-sampling",
        "--threads-sampling",
        type=int,
        default=0,
        help="our config's `n_threads_sampling` (batched engine); 0 leaves it out (the server's default)",
    )
    ap.add_argument(
        "--native-backend-sampling",
        action="store_true",
        help="concurrency also runs native llama-server -np N with its experimental --backend-sampling",
    )
    ap.add_argument(
        "--bias-check", action="store_true", help="also time single stream with a logit_bias EOS ban"
    )
    ap.add_argument("--eval-concurrency", type=_ints, default=[1, 8])
    ap.add_argument("--eval-conversations", type=int, default=16)
    ap.add_argument("--ready-timeout", type=float, default=600.0)
    ap.add_argument("--smoke", action="store_true", help="tiny settings; writes nothing unless asked")
    ap.add_argument("--workdir", default=str(ROOT / ".bench" / "run"))
    ap.add_argument(
        "--results-dir", default=None, help=f"default {RESULTS_DIR.relative_to(ROOT)}; 'none' to skip"
    )
    ap.add_argument("--markdown", default=None, help=f"default {MARKDOWN.name}; 'none' to skip")
    ap.add_argument(
        "--out-json", default=None, help="also write records, commands and notes here after each step"
    )
    ap.add_argument("--tag", default="", help="suffix for the dated results file (e.g. h100)")
    ap.add_argument("--ingest", nargs="*", help="record --out-json files made elsewhere; run nothing")
    return ap


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwind through the `finally` blocks that stop the servers


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = parser().parse_args(argv)
    if args.ctx is None:
        args.ctx = 8192 if args.gpu else 4096
    if not args.threads:
        # GPU: half the cores, llama-cpp-python's own server default: with full offload the CPU
        # threads only spin, and on all cores they starve the server's Python threads.
        args.threads = max(1, _threads() // 2) if args.gpu else _threads()
    if args.smoke:
        args.concurrency_max_tokens = min(args.concurrency_max_tokens or 16, 16)
        args.multiturn_max_tokens = min(args.multiturn_max_tokens or 16, 16)
        args.max_tokens, args.prefix_max_tokens = (
            min(args.max_tokens, 16),
            min(args.prefix_max_tokens or 16, 16),
        )
        args.prompt_tokens, args.turn_tokens, args.turns, args.pp_tokens = 32, 24, 2, 64
        args.concurrency, args.repeats, args.requests = [1, 2], 1, 1
        args.eval_concurrency, args.eval_conversations = [2], 2
        args.ctx = min(args.ctx, 1024)
        args.results_dir = args.results_dir or "none"
        args.markdown = args.markdown or "none"
    args.results_dir = args.results_dir or str(RESULTS_DIR)
    args.markdown = args.markdown or str(MARKDOWN)
    if args.ingest:
        return ingest(args)
    return Run(args).main()


if __name__ == "__main__":
    sys.exit(main())
