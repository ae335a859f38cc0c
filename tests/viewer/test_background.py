"""The viewer's background work: computed pages kept per store state (and on disk), the
"computing" answer while a result is missing, and the search index agreeing with a scan of
the store, new and replaced answers included."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from evaluator.store import Store
from evaluator.viewer import data, embed
from evaluator.viewer.app import create_app
from evaluator.viewer.background import Result, Results
from evaluator.viewer.search_index import AnswerIndex
from tests.support.documents import T0, make_response, replaced
from tests.support.memory_store import memory_store
from tests.viewer.seed import TEST_WAIT_S, Seeded

ANSWERS = [
    "The keeper lights the lamp at dusk.",
    "THE KEEPER sleeps; the lighthouse is dark.",
    "A gull circles the lighthouse, then the keeper's boat.",
    "Ünïcode keeper — façade and naïve café.",
    "Nothing about the tower here.",
    '<script>alert("x")</script> keeper',
]
QUERIES = [
    "keeper",
    "KEEPER s",
    "ighthou",
    "the lamp.",
    "façade",
    "<script>",
    "keeper's boat",
    "absent words",
    "ÜNÏCODE",
]


def _store_with_answers() -> Store:
    store = memory_store()
    for k, text in enumerate(ANSWERS):
        store.save_response(make_response(k, text=text))
    return store


def _index(tmp_path: Path, store: Store) -> AnswerIndex:
    index = AnswerIndex(tmp_path / "answers.sqlite3", lambda: store)
    index.start()
    assert index.sync(30)
    return index


def _ids(turns: list[object]) -> set[str]:
    return {t.id for t in turns}  # type: ignore[attr-defined]


def test_results_compute_once_per_store_state_and_say_when_they_are_computing(tmp_path: Path) -> None:
    release, calls = threading.Event(), []

    def slow() -> dict[str, object]:
        calls.append(1)
        release.wait(10)
        return {"n": len(calls)}

    results = Results(tmp_path)
    try:
        first = results.get("k", "marks-1", slow, wait_s=0.05)
        assert first.result is None and first.computing and not first.current
        meanwhile = results.get("k", "marks-1b", slow, wait_s=0.05)  # the store moved on
        assert meanwhile.result is None and meanwhile.computing and len(calls) == 1  # no pile-up
        release.set()
        done = results.get("k", "marks-1", slow, wait_s=10)
        assert done.current and done.result is not None and done.result.value == {"n": 1}
        assert results.get("k", "marks-1", slow, wait_s=10).result == done.result and len(calls) == 1
        release.clear()
        changed = results.get("k", "marks-2", slow, wait_s=0.05)  # the store changed
        assert changed.result == done.result and not changed.current and changed.computing
        release.set()
        assert results.get("k", "marks-2", slow, wait_s=10).result.value == {"n": 2}  # type: ignore[union-attr]
    finally:
        results.close()


def test_a_result_that_ended_while_the_page_looked_is_not_computed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The computation ends between the page's look at the kept results and its request (the
    CI flake of session 11): the page gets that result, and nothing is computed twice."""
    calls: list[int] = []

    def compute() -> dict[str, object]:
        calls.append(1)
        return {"n": len(calls)}

    results = Results(tmp_path)
    try:
        assert results.get("k", "marks-1", compute, wait_s=10).result.value == {"n": 1}  # type: ignore[union-attr]
        known, looks = results._known, []

        def looked_too_early(key: str) -> Result | None:  # the first look misses the result
            looks.append(key)
            return None if len(looks) == 1 else known(key)

        monkeypatch.setattr(results, "_known", looked_too_early)
        again = results.get("k", "marks-1", compute, wait_s=10)
        assert again.current and again.result is not None and again.result.value == {"n": 1}
        assert len(calls) == 1 and looks
    finally:
        results.close()


def test_an_old_result_is_served_while_it_is_computed_again(tmp_path: Path) -> None:
    """Past `revalidate_s` the kept result is still the answer (flagged as computing), and a
    computation for the same store state runs again in the background."""
    calls: list[int] = []

    def compute() -> dict[str, object]:
        calls.append(1)
        return {"n": len(calls)}

    results = Results(tmp_path, revalidate_s=0.0)
    try:
        first = results.get("k", "marks-1", compute, wait_s=10)
        old = results.get("k", "marks-1", compute, wait_s=10)
        assert old.result == first.result and old.current and old.computing
        for _ in range(200):
            if len(calls) == 2 and results.peek("k") != first.result:
                break
            threading.Event().wait(0.01)
        assert len(calls) == 2
        assert results.peek("k").value == {"n": 2}  # type: ignore[union-attr]
    finally:
        results.close()


def test_results_are_kept_in_the_cache_folder_across_starts(tmp_path: Path) -> None:
    first = Results(tmp_path)
    first.get("k", "m", lambda: {"html": "<p>board</p>"}, wait_s=10)
    first.close()

    def never() -> dict[str, object]:
        raise AssertionError("recomputed although the store did not change")

    again = Results(tmp_path)
    answer = again.get("k", "m", never, wait_s=0)
    assert answer.current and answer.result is not None and answer.result.value == {"html": "<p>board</p>"}
    again.close()


def test_a_failed_computation_is_raised_on_the_page_then_retried(tmp_path: Path) -> None:
    attempts = []

    def flaky() -> dict[str, object]:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("store went away")
        return {"ok": True}

    results = Results(None)
    with pytest.raises(RuntimeError, match="store went away"):
        results.get("k", "m", flaky, wait_s=10)
    assert results.get("k", "m", flaky, wait_s=10).result.value == {"ok": True}  # type: ignore[union-attr]
    results.close()


def test_the_search_index_finds_what_the_scan_finds(tmp_path: Path) -> None:
    store = _store_with_answers()
    index = _index(tmp_path, store)
    try:
        assert index.progress.indexed == len(ANSWERS) and not index.progress.building
        for query in QUERIES:
            found = index.search(store, query, 50)
            scanned = [h.turn for h in data.search(store, query, 50)]
            assert _ids(found.turns) == _ids(scanned), query
            assert found.complete
        assert len(index.search(store, "keeper", 50).turns) == 5
        assert [t.turn_index for t in index.search(store, "keeper", 2).turns] == [0, 1]  # the limit
    finally:
        index.stop()


def test_the_search_index_follows_new_and_replaced_answers(tmp_path: Path) -> None:
    store = _store_with_answers()
    failed = make_response(7, outcome="error", text="")
    store.save_response(failed)
    index = _index(tmp_path, store)
    try:
        store.save_response(make_response(8, text="A storm breaks over the reef."))
        assert index.sync(30)
        assert [t.turn_index for t in index.search(store, "storm breaks", 50).turns] == [8]
        retried = replaced(
            make_response(7, text="The retried turn found the harbour."),
            finished_at=T0 + timedelta(hours=1),
        )
        assert store.save_response(retried)  # replaces the error turn in place: same count
        assert index.sync(30)
        assert [t.turn_index for t in index.search(store, "found the harbour", 50).turns] == [7]
    finally:
        index.stop()


def test_a_restarted_index_reuses_its_file(tmp_path: Path) -> None:
    store = _store_with_answers()
    _index(tmp_path, store).stop()
    reads = []
    real = store.answer_texts

    def counted(*, newest_first: bool = False):  # type: ignore[no-untyped-def]
        reads.append(newest_first)
        return real(newest_first=newest_first)

    store.answer_texts = counted  # type: ignore[method-assign]
    index = AnswerIndex(tmp_path / "answers.sqlite3", lambda: store)
    index.start()
    try:
        assert index.sync(30)
        assert not index.progress.building and index.progress.indexed == len(ANSWERS)
        assert False not in reads  # no full read again
        assert len(index.search(store, "keeper", 50).turns) == 5
    finally:
        index.stop()


def test_short_queries_ask_for_three_characters(client: TestClient) -> None:
    html = client.get("/search?q=ke").text
    assert "Type at least 3 characters" in html


def test_a_page_still_computing_says_so_and_refreshes(
    store: Store, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real = embed.leaderboard

    def slow(*args: object, **kwargs: object) -> object:
        release.wait(30)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(embed, "leaderboard", slow)
    with TestClient(create_app(lambda: store, wait_s=0.05)) as client:
        waiting = client.get("/leaderboard").text
        assert 'id="computing"' in waiting and '<meta http-equiv="refresh" content="2">' in waiting
        assert "<td>alpha</td>" not in waiting
        release.set()
        client.app.state.wait_s = TEST_WAIT_S  # type: ignore[attr-defined]
        shown = client.get("/leaderboard").text
        assert 'id="computing"' not in shown and 'http-equiv="refresh"' not in shown
        assert 'id="computed-at"' in shown and "<td>alpha</td>" in shown


def test_the_viewers_paged_read_gives_the_commands_leaderboard_inputs(
    store: Store, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evaluator.leaderboard.gather import gather
    from evaluator.store import store as store_module

    monkeypatch.setattr(store_module, "PAGE", 7)  # many pages, some turns sharing a time across pages
    filters: list[dict[str, object]] = [
        {},
        {"models": ["alpha", "gamma"]},
        {"judge": "judge", "rubric_version": "v1"},
    ]
    for f in filters:
        command, viewer = gather(store, **f), gather(store, **f, paged=True)  # type: ignore[arg-type]
        assert viewer.models == command.models
        assert {m: [c.id for c in cs] for m, cs in viewer.conversations.items()} == {
            m: [c.id for c in cs] for m, cs in command.conversations.items()
        }
        assert sorted(e.id for e in viewer.evaluations) == sorted(e.id for e in command.evaluations)
        assert sorted(p.id for p in viewer.pairwise) == sorted(p.id for p in command.pairwise)
    sizes = store.collection_sizes()
    assert len(store.all_responses()) == sizes[1]
    assert len(store.all_evaluations()) == sizes[2] and len(store.all_pairwise()) == sizes[3]


def test_a_search_that_stops_checking_says_more_may_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evaluator.viewer import search_index

    store = _store_with_answers()
    index = _index(tmp_path, store)
    try:
        monkeypatch.setattr(search_index, "MAX_CHECKED", 2)
        monkeypatch.setattr(search_index, "VERIFY_BATCH", 1)
        found = index.search(store, "the", 50)  # in 4 answers: 2 checked
        assert len(found.turns) == 2 and not found.complete
        assert index.search(store, "gull", 50).complete  # one candidate: all checked
    finally:
        index.stop()


def test_a_changing_store_recomputes_the_leaderboard_at_most_every_so_often(
    store: Store, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.documents import make_evaluation

    computed = []
    real = embed.leaderboard

    def counted(*args: object, **kwargs: object) -> object:
        computed.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(embed, "leaderboard", counted)
    with TestClient(create_app(lambda: store, wait_s=TEST_WAIT_S, board_every_s=3600)) as client:
        first = client.get("/leaderboard").text
        assert 'id="computed-at"' in first and len(computed) == 1
        store.save_evaluation(make_evaluation("nothing-judged-here", judge="judge", rubric="v1"))
        again = client.get("/leaderboard").text
        assert len(computed) == 1  # not yet: the last board is shown, flagged
        assert "computed again at most every 3600" in again and "<td>alpha</td>" in again
        assert '<meta http-equiv="refresh" content="2">' in again
