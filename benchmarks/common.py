"""Shared pieces: result records, the machine description, tables, and where results are written."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
LATEST = RESULTS_DIR / "latest.json"
MARKDOWN = ROOT / "BENCHMARKS.md"
BENCHMARKS = ("single_stream", "prefix_reuse", "concurrency", "multiturn_concurrency", "evaluator_overhead")
RUN_LOG_HEADING = "## Run log"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@dataclass
class Record:
    """One row of a results table: ours vs the reference, with every repeat kept."""

    benchmark: str
    model: str
    concurrency: int
    metric: str
    unit: str
    ours: float | None
    reference: float | None
    ratio: float | None = None  # ours / reference; `better` says which direction is good
    machine: str = ""
    gpu: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    date: str = ""
    better: str = "higher"  # "higher" or "lower"
    reference_name: str = "native llama-server"
    ours_runs: list[float] = field(default_factory=list)
    reference_runs: list[float] = field(default_factory=list)
    note: str = ""

    def finish(self) -> Record:
        if self.ours_runs and self.ours is None:
            self.ours = median(self.ours_runs)
        if self.reference_runs and self.reference is None:
            self.reference = median(self.reference_runs)
        if self.ours is not None and self.reference:
            self.ratio = round(self.ours / self.reference, 4)
        self.ours = _round(self.ours)
        self.reference = _round(self.reference)
        self.ours_runs = [_round(x) or 0.0 for x in self.ours_runs]
        self.reference_runs = [_round(x) or 0.0 for x in self.reference_runs]
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _round(x: float | None) -> float | None:
    if x is None:
        return None
    return round(float(x), 3 if abs(x) < 100 else 1)


def make_record(
    benchmark: str,
    model: str,
    concurrency: int,
    metric: str,
    unit: str,
    ours_runs: Iterable[float],
    reference_runs: Iterable[float],
    *,
    better: str = "higher",
    reference_name: str = "native llama-server",
    note: str = "",
) -> Record:
    return Record(
        benchmark=benchmark,
        model=model,
        concurrency=concurrency,
        metric=metric,
        unit=unit,
        ours=None,
        reference=None,
        better=better,
        reference_name=reference_name,
        ours_runs=list(ours_runs),
        reference_runs=list(reference_runs),
        note=note,
    ).finish()


# --- the machine ---------------------------------------------------------------------------


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str:
    if not shutil.which("nvidia-smi"):
        return "none"
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"])
    return "; ".join(line.strip() for line in out.splitlines() if line.strip()) or "none"


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def machine_name() -> str:
    cores = os.cpu_count() or 0
    gpu = gpu_name()
    base = f"{cpu_name()}, {cores} cores, {memory_gib():.0f} GiB"
    return f"{gpu.split(',')[0].split(';')[0]} ({base})" if gpu != "none" else base


def git_commit() -> str:
    """HEAD, '+dirty' when the tree has changes; $STORYBENCH_COMMIT where the checkout has no .git."""
    if os.environ.get("STORYBENCH_COMMIT"):
        return os.environ["STORYBENCH_COMMIT"]
    head = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    if not head:
        return "unknown"
    dirty = _run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return head + ("+dirty" if dirty else "")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Environment:
    machine: str
    gpu: str
    versions: dict[str, str]
    date: str
    load: str  # what else was running, as far as we can tell

    @classmethod
    def detect(cls, native_version: str = "") -> Environment:
        from benchmarks.native import llama_cpp_python_version

        versions = {
            "storybench": git_commit(),
            "llama-cpp-python": llama_cpp_python_version(),
            "python": platform.python_version(),
        }
        if native_version:
            versions["native llama.cpp"] = native_version
        return cls(machine_name(), gpu_name(), versions, utc_now(), load_summary())

    def stamp(self, records: Iterable[Record]) -> list[Record]:
        out = []
        for r in records:
            r.machine, r.gpu, r.versions, r.date = self.machine, self.gpu, dict(self.versions), self.date
            out.append(r)
        return out


def load_summary() -> str:
    """The load average and the busiest other processes when the run started."""
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    top = _run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"]).splitlines()[:4]
    busy = ", ".join(
        f"{parts[1]} {parts[0]}%" for parts in (line.split(None, 1) for line in top) if len(parts) == 2
    )
    return f"load average {load}; busiest processes: {busy or 'unknown'}"


# --- tables --------------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _runs(values: list[float]) -> str:
    return " / ".join(_fmt(v) for v in values)


def _ratio(r: Record) -> str:
    if r.ratio is None:
        return "-"
    return f"{r.ratio:.2f}x"


TABLE_HEAD = ["benchmark", "model", "conc.", "metric", "unit", "ours (runs)", "reference (runs)", "ours/ref"]


def table_rows(records: Iterable[Record]) -> list[list[str]]:
    rows = []
    for r in records:
        unit = f"{r.unit} ({r.better} is better)"
        if r.reference is None and not r.reference_runs:
            ref = "-"  # a figure of ours alone (e.g. our engine's step profile)
        else:
            ref = f"{_fmt(r.reference)} ({_runs(r.reference_runs)})"
            if r.reference_name != "native llama-server":
                ref += f" [{r.reference_name}]"
        rows.append([
            r.benchmark, r.model, str(r.concurrency), r.metric, unit,
            f"{_fmt(r.ours)} ({_runs(r.ours_runs)})", ref, _ratio(r),
        ])  # fmt: skip
    return rows


def print_table(records: Sequence[Record], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich is a project dependency
        print(title)
        for row in table_rows(records):
            print(" | ".join(row))
        return
    table = Table(title=title, show_lines=False)
    for h in TABLE_HEAD:
        table.add_column(h, justify="right" if h in ("conc.", "ours/ref") else "left")
    for row in table_rows(records):
        table.add_row(*row)
    Console(width=200).print(table)


def markdown_table(records: Iterable[Record]) -> str:
    lines = ["| " + " | ".join(TABLE_HEAD) + " |", "|" + "---|" * len(TABLE_HEAD)]
    for row in table_rows(records):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


# --- writing results -----------------------------------------------------------------------


def run_section(
    env: Environment, records: Sequence[Record], commands: Sequence[str], notes: Sequence[str]
) -> str:
    """The Markdown block one run appends to BENCHMARKS.md."""
    lines = [f"### {env.date}: {env.machine}", ""]
    lines.append(f"- GPU: {env.gpu}")
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in env.versions.items()))
    lines.append(f"- at start: {env.load}")
    for note in notes:
        lines.append(f"- {note}")
    lines.append("- commands:")
    lines += [f"  - `{c}`" for c in commands]
    lines += ["", markdown_table(records), ""]
    return "\n".join(lines) + "\n"


def append_markdown(section: str, path: Path = MARKDOWN) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if RUN_LOG_HEADING not in text:
        text = (
            text.rstrip("\n") + f"\n\n{RUN_LOG_HEADING}\n\nEvery `make bench` run appends its figures here.\n"
        )
    path.write_text(text.rstrip("\n") + "\n\n" + section, encoding="utf-8")


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["benchmark"], r["model"], r["concurrency"], r["metric"], r["machine"], r.get("gpu", ""))


def write_results(records: Sequence[Record], results_dir: Path = RESULTS_DIR, tag: str = "") -> Path:
    """A dated file with exactly this run, and latest.json where this run's rows replace every older
    row of the same benchmark, model, machine and GPU (other rows stay: the CPU and the GPU
    results, and models not re-run, live side by side)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    docs = [r.to_json() for r in records]
    stamp = (records[0].date if records else utc_now()).replace(":", "").replace("-", "")
    dated = results_dir / f"{stamp}{'-' + tag if tag else ''}.json"
    dated.write_text(json.dumps(docs, indent=1) + "\n", encoding="utf-8")
    latest = results_dir / "latest.json"
    old: list[dict[str, Any]] = []
    if latest.exists():
        try:
            old = json.loads(latest.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            old = []
    new_keys = {_key(d) for d in docs}

    def run_key(d: dict[str, Any]) -> tuple[Any, ...]:
        return (d["benchmark"], d["model"], d["machine"], d.get("gpu", ""))

    replaced = {run_key(d) for d in docs}
    kept = [d for d in old if _key(d) not in new_keys and run_key(d) not in replaced]
    latest.write_text(json.dumps(kept + docs, indent=1) + "\n", encoding="utf-8")
    return dated


def load_records(path: Path) -> list[Record]:
    docs = json.loads(path.read_text(encoding="utf-8"))
    return [Record(**d) for d in docs]
