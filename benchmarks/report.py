"""Summary tables from `benchmarks/results/latest.json` (the headline rows, per machine and model).

python -m benchmarks.report                 # every machine and model in latest.json
python -m benchmarks.report --machine H100  # machines whose name contains H100
python -m benchmarks.report --all           # every row, not only the headline ones
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from benchmarks.common import LATEST, Record, load_records, markdown_table

# (benchmark, metric pattern, concurrency or None): the rows a summary keeps, in this order.
HEADLINE = (
    ("single_stream", r"^end-to-end tok/s", None),
    ("single_stream", r"^decode tok/s \(client-side", None),
    ("single_stream", r"^time to first token", None),
    ("single_stream", r"^prompt eval tok/s \(~\d+-token", None),
    ("single_stream", r"^decode tok/s \(server timings\) vs llama-bench", None),
    ("prefix_reuse", r"^turn [15] time to first token", None),
    ("prefix_reuse", r"^turn [25] prompt tokens evaluated", None),
    ("concurrency", r"^aggregate generated tok/s", None),
    ("concurrency", r"^median time to first token", 16),
    ("concurrency", r"^ours engine step at \d+ sequences", None),
    ("multiturn_concurrency", r"^aggregate generated tok/s", None),
    ("multiturn_concurrency", r"^turn [15] median time to first token", None),
    ("multiturn_concurrency", r"history served from cache", None),
    ("multiturn_concurrency", r"^turn \d+ / turn 1 time to first token", None),
    ("evaluator_overhead", r".", None),
)


def headline(records: list[Record]) -> list[Record]:
    out: list[Record] = []
    for bench, pattern, conc in HEADLINE:
        for r in records:
            wanted = r.benchmark == bench and re.search(pattern, r.metric)
            if wanted and (conc is None or r.concurrency == conc) and r not in out:
                out.append(r)
    return out


def render(records: list[Record], everything: bool = False) -> str:
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(r.machine, []).append(r)
    parts = []
    for machine, recs in groups.items():
        parts.append(f"#### {machine}\n")
        parts.append(markdown_table(recs if everything else headline(recs)) + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=LATEST)
    ap.add_argument("--machine", default="", help="only machines whose name contains this")
    ap.add_argument("--model", default="", help="only models whose label contains this")
    ap.add_argument("--exclude", default="", help="drop models whose label matches this regex")
    ap.add_argument("--all", action="store_true", help="every row, not only the headline ones")
    args = ap.parse_args(argv)
    records = [
        r
        for r in load_records(args.results)
        if args.machine in r.machine
        and args.model in r.model
        and not (args.exclude and re.search(args.exclude, r.model))
    ]
    print(render(records, args.all))
    return 0


if __name__ == "__main__":
    sys.exit(main())
