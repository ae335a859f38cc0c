"""The viewer's pages over a seeded in-memory store: every page answers, stored text is shown
as text, every response carries the policy, nothing but GET is accepted, the token is enforced."""

from __future__ import annotations

import html
import re
from urllib.parse import quote

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from evaluator.store import Store
from evaluator.viewer.app import create_app
from evaluator.viewer.cli import token_for
from evaluator.viewer.security import CSP, TOKEN_ENV
from tests.viewer.seed import HOSTILE, HOSTILE_RUN, LIVE_RUN, TEST_WAIT_S, Seeded


def pages(seeded: Seeded) -> list[str]:
    a, b = seeded.conversations["alpha"][0], seeded.conversations["beta"][0]
    return [
        "/",
        "/runs/run-1",
        f"/runs/{HOSTILE_RUN}",
        f"/conversations/{quote(a)}",
        f"/turns/{quote(seeded.hostile_turn)}",
        f"/side-by-side?a={quote(a)}&b={quote(b)}",
        "/leaderboard",
        "/leaderboard?models=alpha,beta&judge=judge&rubric_version=v1",
        "/search?q=keeper",
    ]


def main(html: str) -> str:
    return html[html.index("<main>") :]


def test_every_page_answers_with_the_policy(client: TestClient, seeded: Seeded) -> None:
    for url in [*pages(seeded), "/static/viewer.css", "/static/report.css"]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-security-policy"] == CSP, url
        assert (
            "<script" not in main(response.text) if "text/html" in response.headers["content-type"] else True
        )


def test_the_policy_allows_no_inline_or_foreign_script() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["default-src"] == "'none'" and directives["form-action"] == "'self'"


def test_runs_page_shows_status_progress_and_refreshes_while_a_run_plays(client: TestClient) -> None:
    html = client.get("/").text
    rows = re.findall(r"<tr>\s*<td><a href=\"/runs/([^\"]+)\">", html)
    assert set(rows) == {"run-1", HOSTILE_RUN, LIVE_RUN}
    assert '<meta http-equiv="refresh" content="10">' in html
    assert "running" in html and "completed" in html
    assert "18 / 18" in html  # run-1: 3 models x 3 sequences x 1 run x 2 turns, all stored
    assert "0 / 10" in html  # the live run has written nothing yet


def test_no_refresh_when_nothing_runs(store: Store, seeded: Seeded) -> None:
    store.update_run(LIVE_RUN, status="completed")
    with TestClient(create_app(lambda: store, wait_s=TEST_WAIT_S)) as c:
        assert 'http-equiv="refresh"' not in c.get("/").text


def test_links_lead_from_runs_to_a_run_to_a_conversation_to_a_turn(
    client: TestClient, seeded: Seeded
) -> None:
    run_page = client.get("/runs/run-1").text
    conv = seeded.conversations["gamma"][1]
    assert f'href="/conversations/{quote(conv)}"' in run_page
    assert "StoryBench report" in run_page and "<svg" in run_page  # the report with its chart
    conv_page = client.get(f"/conversations/{quote(conv)}").text
    turn_id = f"{conv}:t1"
    assert f'href="/turns/{quote(turn_id)}"' in conv_page
    turn_page = client.get(f"/turns/{quote(turn_id)}").text
    # The messages sent: system prompt, turn 0's prompt and answer, then this prompt.
    sent = re.findall(r'<pre class="msg msg-(\w+)">', turn_page)
    assert sent == ["system", "user", "assistant", "user"]
    assert "[writer:gamma] seq1 run 0 turn 0" in turn_page and "seq1 turn 1" in turn_page
    assert "judge (rubric v1): prose 8" in turn_page  # gamma scored 7, +1 on turn 1


def test_stored_markup_is_shown_as_text(client: TestClient, seeded: Seeded) -> None:
    conversation = seeded.hostile_turn.rsplit(":t", 1)[0]
    shown = (
        f"/turns/{quote(seeded.hostile_turn)}",
        f"/conversations/{quote(conversation)}",
        "/search?q=onerror",
    )
    for url in (*shown, f"/runs/{HOSTILE_RUN}"):
        html = main(client.get(url).text)
        assert "<script>" not in html and "<img src=x" not in html, url
        if url in shown:  # the run page links its conversations instead of showing answers
            assert "&lt;script&gt;alert(" in html, url
    turn = client.get(f"/turns/{quote(seeded.hostile_turn)}").text
    assert HOSTILE.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;") in turn


def test_side_by_side_shows_both_conversations_and_their_verdicts(client: TestClient, seeded: Seeded) -> None:
    a, b = seeded.conversations["alpha"][0], seeded.conversations["beta"][0]
    html = client.get(f"/side-by-side?a={quote(a)}&b={quote(b)}").text
    assert html.count("<tr><td>alpha</td><td>beta</td>") == 1  # alpha shown first: beta better
    assert html.count("<tr><td>beta</td><td>alpha</td>") == 1
    assert "B better" in html and "A better" in html
    assert "[writer:alpha] seq0 run 0 turn 1" in html and "[writer:beta] seq0 run 0 turn 1" in html
    assert "judge (rubric v1): prose 4" in html and "judge (rubric v1): prose 6" in html


def test_leaderboard_filters_change_the_table(client: TestClient) -> None:
    full = client.get("/leaderboard").text
    two = client.get("/leaderboard?models=alpha,gamma").text
    assert all(f"<td>{m}</td>" in full for m in ("alpha", "beta", "gamma"))
    assert "<td>alpha</td>" in two and "<td>gamma</td>" in two and "<td>beta</td>" not in two
    assert 'name="models" value="alpha,gamma"' in two  # the form shows the URL's filters


def test_leaderboard_refusal_is_a_page_not_an_error(client: TestClient) -> None:
    response = client.get("/leaderboard?judge=nobody")
    assert response.status_code == 200
    assert 'id="leaderboard-message"' in response.text
    assert "no judgements by judge 'nobody'" in html.unescape(response.text).lower()


def test_missing_documents_are_404_pages(client: TestClient) -> None:
    for url in ("/runs/nope", "/turns/nope:x", "/conversations/nope", "/side-by-side?a=x&b=y"):
        response = client.get(url)
        assert response.status_code == 404, url
        assert response.headers["content-security-policy"] == CSP


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_nothing_but_get_is_accepted(client: TestClient, seeded: Seeded, method: str) -> None:
    for url in pages(seeded):
        response = client.request(method, url)
        assert response.status_code == 405, (method, url)
        assert response.headers["content-security-policy"] == CSP


def test_token_is_required_when_set(store: Store, seeded: Seeded) -> None:
    app: FastAPI = create_app(lambda: store, token="s3cret", wait_s=TEST_WAIT_S)
    with TestClient(app) as c:
        assert c.get("/").status_code == 401
        assert c.get("/leaderboard?token=wrong").status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        first = c.get("/leaderboard?models=alpha&token=s3cret", follow_redirects=False)
        assert first.status_code == 303
        assert first.headers["location"] == "/leaderboard?models=alpha"
        assert "httponly" in first.headers["set-cookie"].lower()
        assert c.get("/").status_code == 200  # the cookie now carries it


def test_binding_elsewhere_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert token_for("127.0.0.1") is None and token_for("::1") is None and token_for("localhost") is None
    with pytest.raises(ValueError, match=TOKEN_ENV):
        token_for("0.0.0.0")
    monkeypatch.setenv(TOKEN_ENV, "abc")
    assert token_for("0.0.0.0") == "abc"


def test_view_command_refuses_a_public_host_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from evaluator.cli import cli

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    result = CliRunner().invoke(cli, ["view", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert TOKEN_ENV in result.output


def test_the_leaderboard_is_cached_until_the_store_changes(
    store: Store, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evaluator.viewer import embed
    from tests.support.documents import make_evaluation

    computed = []
    real = embed.leaderboard

    def counted(*args: object, **kwargs: object) -> object:
        computed.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(embed, "leaderboard", counted)  # before the app's warm-up computes one
    with TestClient(create_app(lambda: store, wait_s=TEST_WAIT_S, board_every_s=0)) as client:
        first = client.get("/leaderboard").text
        assert client.get("/leaderboard").text == first and len(computed) == 1
        client.get("/leaderboard?models=alpha,beta")
        assert len(computed) == 2  # other filters, another entry
        store.save_evaluation(make_evaluation("nothing-judged-here", judge="judge", rubric="v1"))
        client.get("/leaderboard")
        assert len(computed) == 3  # a new judgement changes the store's marks
