"""The server's pure parts: tokens and sessions, schedules in words, the layered graph, the run diff."""

from __future__ import annotations

import pytest

from scheduler.errors import ConveyorError
from scheduler.rundiff import diff_runs
from scheduler.server.auth import Role, Tokens
from scheduler.server.present import cron_words, graph_layout, layers, schedule_words


def test_tokens_file_roles_and_sessions(tmp_path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# team\nviewer vvvvvvvvvvvvvvvvvvvv\n\noperator oooooooooooooooooooo\n")
    tokens = Tokens.load(path)
    assert tokens.role_of("vvvvvvvvvvvvvvvvvvvv") is Role.VIEWER
    assert tokens.role_of("oooooooooooooooooooo") is Role.OPERATOR
    assert tokens.role_of("oooooooooooooooooooX") is None and tokens.role_of("") is None
    cookie, session = tokens.open_session("vvvvvvvvvvvvvvvvvvvv")
    assert tokens.session(cookie) == session and session.role is Role.VIEWER
    body, mac = cookie.rsplit(".", 1)
    forged = body.replace(body[5], "A" if body[5] != "A" else "B", 1) + "." + mac
    assert tokens.session(forged) is None
    assert tokens.csrf_ok(session.sid, tokens.csrf_token(session.sid))
    assert not tokens.csrf_ok(session.sid, "") and not tokens.csrf_ok(session.sid, tokens.csrf_token("other"))
    # A session opened with a token that is no longer in the file ends.
    path.write_text("operator oooooooooooooooooooo\n")
    assert Tokens.load(path, tokens.secret).session(cookie) is None


@pytest.mark.parametrize("text", ["admin xxxxxxxxxxxxxxxxxxxx", "viewer", "viewer tiny9", "# nothing\n"])
def test_bad_tokens_files_are_refused_without_echoing_the_token(tmp_path, text: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ConveyorError) as caught:
        Tokens.load(path)
    assert "xxxxxxxx" not in str(caught.value) and "tiny9" not in str(caught.value)


def test_schedules_in_words() -> None:
    assert cron_words("0 17 * * 1-5") == "at 17:00, Monday to Friday"
    assert cron_words("30 6 * * *") == "at 06:30, every day"
    assert cron_words("*/15 * * * *") == "every 15 minutes"
    assert cron_words("5 * * * *") == "every hour at :05"
    assert cron_words("0 9 1 * *") == "at 09:00, on day 1 of the month"
    assert cron_words("0 0 L * *") == "at 00:00, days L"
    assert cron_words("not a cron") == "not a cron"
    words = schedule_words({"cron": "0 17 * * *", "timezone": "America/New_York", "calendar": "NYSE",
                            "business_day": -1})
    assert words == ("at 17:00, every day (only the last business day of the month; NYSE calendar; "
                     "America/New_York)")
    assert schedule_words(None) == "manual only"


def test_graph_layers_follow_the_longest_path() -> None:
    upstream = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["a", "d"]}
    assert layers(upstream) == [["a"], ["b", "c"], ["d"], ["e"]]
    drawn = graph_layout(upstream, {"a": "success"})
    assert len(drawn["nodes"]) == 5 and len(drawn["edges"]) == 6
    x = {n["name"]: n["x"] for n in drawn["nodes"]}
    assert x["a"] < x["b"] == x["c"] < x["d"] < x["e"]
    assert next(n for n in drawn["nodes"] if n["name"] == "a")["state"] == "success"


def test_diff_marks_what_changed() -> None:
    def run(run_id, rows, exit_code, image_id):
        attempt = {"number": 1, "state": "success", "exit_code": exit_code, "image": "x", "image_id": image_id,
                   "image_digest": None, "reason": None, "started_at": "2026-11-20T00:00:00+00:00",
                   "ended_at": "2026-11-20T00:00:02+00:00"}
        return {"run_id": run_id, "dag": "d", "dag_version": 1, "dag_sha256": "s", "git_commit": None,
                "git_dirty": None, "state": "success", "trigger": "manual", "priority": "high",
                "logical_date": None, "data_interval_start": None, "data_interval_end": None,
                "started_at": None, "ended_at": None, "params": {"rows": rows},
                "steps": [{"name": "a", "state": "success", "attempts": [attempt]}]}

    same = diff_runs(run("r1", 3, 0, "sha256:1"), run("r2", 3, 0, "sha256:1"))
    assert same["differences"] == 0
    changed = diff_runs(run("r1", 3, 0, "sha256:1"), run("r2", 4, 1, "sha256:2"))
    assert changed["differences"] == 2
    assert changed["steps"][0]["differs"] == ["image_id", "exit_code"]
    assert changed["params"] == [{"name": "rows", "a": 3, "b": 4, "differs": True}]
