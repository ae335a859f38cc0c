"""`storybench-eval report` as a user meets it: paths, formats, --latest, clear errors and exit
codes like `show`/`export`, nothing from the environment in the file, large runs."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from evaluator.cli import cli
from evaluator.records import sequence_run_id
from evaluator.report.cli import report_command
from evaluator.store import Store
from tests.report.conftest import (
    T0,
    Seeded,
    exp_key,
    judgement,
    parse_tables,
    run_record,
    seed_run,
    turn_record,
)
from tests.store.conftest import WIRE_BACKENDS
from tests.support.documents import replaced
from tests.support.servers import REPO

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session", params=WIRE_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Only servers a command can connect to: these tests drive the CLI with --mongo-uri."""
    return str(request.param)


def report(store: Store, *args: str, env: dict[str, str] | None = None) -> Result:
    base = ["--mongo-uri", store.uri, "--db", store.db_name]
    return CliRunner().invoke(report_command, [*args, *base], env=env, catch_exceptions=False)


def said(result: Result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_writes_the_default_html_file_and_prints_its_path(
    store: Store, seeded: Seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = report(store, seeded.run_id[:12])  # a unique prefix, like `show`
    assert result.exit_code == 0, result.output
    assert result.output == f"reports/{seeded.run_id}.html\n"
    document = (tmp_path / "reports" / f"{seeded.run_id}.html").read_text(encoding="utf-8")
    assert document.startswith("<!DOCTYPE html>") and document.endswith("</html>\n")
    again = report(store, seeded.run_id)  # a report is regenerated at will: the file is replaced
    assert again.exit_code == 0 and sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        f"{seeded.run_id}.html"
    ]


def test_markdown_by_option_or_by_suffix(store: Store, seeded: Seeded, tmp_path: Path) -> None:
    by_suffix = tmp_path / "issue.md"
    result = report(store, seeded.run_id, "-o", str(by_suffix))
    assert result.exit_code == 0 and result.output == f"{by_suffix}\n"
    text = by_suffix.read_text(encoding="utf-8")
    assert text.startswith(f"# StoryBench report: run {seeded.run_id}\n")
    assert "| m1 | lighthouse | 2/2 | 6 | 5 | 0 | 0 | 1 | 0 |" in text and "<details><summary>" in text
    by_option = tmp_path / "paste.txt"
    assert report(store, seeded.run_id, "--format", "md", "-o", str(by_option)).exit_code == 0
    assert by_option.read_text(encoding="utf-8").startswith("# StoryBench report")
    html_named_md = tmp_path / "x.md"
    assert report(store, seeded.run_id, "--format", "html", "-o", str(html_named_md)).exit_code == 0
    assert html_named_md.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_default_markdown_path_and_no_transcripts(
    store: Store, seeded: Seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = report(store, seeded.run_id, "--format", "md", "--no-transcripts")
    assert result.output == f"reports/{seeded.run_id}.md\n"
    text = (tmp_path / "reports" / f"{seeded.run_id}.md").read_text(encoding="utf-8")
    assert "Left out (--no-transcripts)" in text and "```text" not in text


def test_latest_is_the_most_recently_started_run(store: Store, tmp_path: Path) -> None:
    seed_run(store)
    store.create_run(run_record("20261128-150000-new000", started_at=T0 + timedelta(hours=3)))
    out = tmp_path / "latest.html"
    result = report(store, "--latest", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "<code>20261128-150000-new000</code>" in out.read_text(encoding="utf-8")


def test_unknown_run_is_a_clear_error_with_the_exit_code_of_show(
    store: Store, seeded: Seeded, tmp_path: Path
) -> None:
    out = tmp_path / "r.html"
    result = report(store, "nope", "-o", str(out))
    assert result.exit_code == 1  # `show` and `export` exit 1 for a missing run too
    assert "no run 'nope'" in said(result) and "storybench-eval runs" in said(result)
    assert isinstance(result.exception, SystemExit) and not out.exists()  # a message, not a crash
    shown = CliRunner().invoke(cli, ["show", "nope", "--mongo-uri", store.uri, "--db", store.db_name])
    assert shown.exit_code == result.exit_code


def test_latest_with_no_runs_says_how_to_start_one(store: Store) -> None:
    result = report(store, "--latest")
    assert result.exit_code == 1 and "no runs stored yet" in said(result)


def test_ambiguous_prefix_names_the_candidates(store: Store) -> None:
    seed_run(store)
    store.create_run(run_record("20261128-120000-abc999"))
    result = report(store, "20261128-1200")
    assert result.exit_code == 1 and "matches several runs" in said(result)


@pytest.mark.parametrize("args", [[], ["20261128", "--latest"]])
def test_run_id_or_latest_exactly_one(args: list[str]) -> None:
    result = CliRunner().invoke(report_command, args)
    assert result.exit_code == 2 and "give a RUN_ID or --latest" in said(result)


def test_output_path_problems_are_messages(store: Store, seeded: Seeded, tmp_path: Path) -> None:
    missing = report(store, seeded.run_id, "-o", str(tmp_path / "no" / "such" / "r.html"))
    assert missing.exit_code == 1 and "does not exist" in said(missing)
    (tmp_path / "folder").mkdir()
    folder = report(store, seeded.run_id, "-o", str(tmp_path / "folder"))
    assert folder.exit_code == 2  # click refuses a folder for -o itself
    target = tmp_path / "kept.html"
    target.write_text("mine")
    link = tmp_path / "link.html"
    link.symlink_to(target)
    assert report(store, seeded.run_id, "-o", str(link)).exit_code == 0
    assert target.read_text() == "mine" and not link.is_symlink()  # the link is replaced, not followed
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unreachable_database_fails_fast(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        report_command, ["--latest", "--mongo-uri", "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=1000"]
    )
    assert result.exit_code == 1 and "127.0.0.1:9" in said(result)
    assert isinstance(result.exception, SystemExit)  # the store's message, not a traceback


def test_nothing_from_the_environment_reaches_the_report(
    store: Store, seeded: Seeded, tmp_path: Path
) -> None:
    canary = "sk-canary-5f0c1d2e3a4b"
    out = tmp_path / "r.html"
    assert "?" not in store.uri
    uri = store.uri.rstrip("/") + f"/?appname={canary}"
    result = CliRunner().invoke(
        report_command,
        [seeded.run_id, "-o", str(out), "--db", store.db_name],
        env={"OPENAI_API_KEY": canary, "STORYBENCH_MONGO_URI": uri},  # m2's api_key_env
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    for path in (out,):
        text = path.read_text(encoding="utf-8")
        assert canary not in text and "canary" not in text
        assert "https://api.example.test/v1" in text  # endpoints are shown as stored
    assert canary not in said(result)


def test_registers_in_the_cli_group_without_an_import_cycle() -> None:
    """Importing the command must not import evaluator.cli (which will import it to register it),
    and `cli.add_command(report_command)` works from either side."""
    code = (
        "import sys\n"
        "import evaluator.report.cli as r\n"
        "assert 'evaluator.cli' not in sys.modules, 'evaluator.report.cli imports evaluator.cli'\n"
        "from evaluator.cli import cli\n"
        "cli.add_command(r.report_command)\n"
        "from click.testing import CliRunner\n"
        "res = CliRunner().invoke(cli, ['report', '-h'])\n"
        "assert res.exit_code == 0 and '--latest' in res.output, res.output\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_run_of_hundreds_of_turns_renders_every_turn_once(store: Store, tmp_path: Path) -> None:
    """24 conversations x 25 turns: several cursor batches and judgement batches."""
    runs, turns = 24, 25
    run_id = "20261128-160000-big000"
    sequence = "lighthouse"
    store.create_run(
        run_record(
            run_id,
            models=["m1"],
            sequences=[sequence],
            runs_per_sequence=runs,
            planned_turns=runs * turns,
            experiments=[
                {
                    "model": "m1",
                    "sequence": sequence,
                    "experiment_key": exp_key("m1", sequence),
                    "generation": 1,
                },
            ],
            config_snapshot={
                "sequences": [{"name": sequence, "turns": [{"name": f"t{i}"} for i in range(turns)]}]
            },
        )
    )
    docs, evals = [], []
    for r in range(runs):
        for t in range(turns):
            first = turn_record("m1", sequence, r, t % 3, "ok")
            rec = replaced(first, turn_index=t, turn_name=f"t{t}", _id="")
            rec.response_text = rec.response_raw = f"run {r} turn {t} answer"
            rec.completion_tokens = 100 + t
            docs.append(rec.to_doc() | {"schema_version": 1})
            evals.append(
                judgement(rec.id, "judge-a", "v1", {"coherence": t % 5}).to_doc() | {"schema_version": 1}
            )
        conv = sequence_run_id(exp_key("m1", sequence), "m1", sequence, r)
        evals.append(
            judgement(conv, "judge-a", "arc", {"arc": 3}, "sequence").to_doc() | {"schema_version": 1}
        )
    store.db["responses"].insert_many(docs)
    store.db["evaluations"].insert_many(evals)

    out = tmp_path / "big.html"
    result = report(store, run_id, "-o", str(out))
    assert result.exit_code == 0, result.output
    document = out.read_text(encoding="utf-8")
    assert document.count('<article class="turn">') == runs * turns
    assert document.count('<details class="conv">') == runs
    positions = [document.index(f"run {r} turn {t} answer</pre>") for r in range(runs) for t in range(turns)]
    assert positions == sorted(positions)
    assert document.count("judge-a (rubric v1): coherence") == runs * turns
    assert document.count("judge-a (rubric arc): arc 3") == runs
    tables = parse_tables(document)
    per_turn = next(rows for rows in tables.tables if rows and "m1: answer tokens" in rows[0])
    assert len(per_turn) == 1 + turns
    header = per_turn[0]
    last = dict(zip(header, per_turn[-1], strict=True))
    assert last["m1: ok/stored"] == f"{runs}/{runs}" and last["m1: answer tokens"] == str(100 + turns - 1)
    assert os.path.getsize(out) < 5_000_000
