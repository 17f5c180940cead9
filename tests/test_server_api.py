"""``ctl server``'s API against a real Redis, a real server process and real workers (containers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from scheduler.engine import Engine
from scheduler.service import submit_file
from tests.conftest import Workers
from tests.helpers import write_dag
from tests.servers import OPERATOR_TOKEN, VIEWER_TOKEN, Server, own_settings, wait_for_state  # noqa: F401

REPORT = """
    name: report
    params:
      date: {type: date, required: true}
      rows: {type: int, default: 3}
    defaults: {image: conveyor/busybox:local}
    steps:
      extract: {command: [sh, -c, 'echo "rows $0 for $1"', "{{ params.rows }}", "{{ params.date }}"]}
      check: {command: [sh, -c, 'test "$0" -lt 10 || { echo "too many rows" >&2; exit 4; }', "{{ params.rows }}"],
              depends_on: [extract]}
      load: {command: [echo, loaded], depends_on: [check]}
"""
SLOW = """
    name: slow
    defaults: {image: conveyor/busybox:local}
    steps:
      ticker: {command: [sh, -c, "for i in 1 2 3 4; do echo tick $i; sleep 0.5; done"]}
      nap: {command: [sleep, "30"], depends_on: [ticker]}
"""


@pytest.fixture
def server(settings, tmp_path) -> Iterator[Server]:
    running = Server(settings, tmp_path)
    yield running
    running.stop()


@pytest.fixture
def dags(tmp_path, store) -> None:
    submit_file(store, write_dag(tmp_path, REPORT, "report.yaml"))
    submit_file(store, write_dag(tmp_path, SLOW, "slow.yaml"))


def test_tokens_decide_who_reads_and_who_writes(server: Server, dags) -> None:
    assert server.client(None).get("/api/v1/dags").status_code == 401
    assert server.client("not-a-token-at-all-xxxx").get("/api/v1/dags").status_code == 401
    viewer, operator = server.client(VIEWER_TOKEN), server.client(OPERATOR_TOKEN)
    listed = viewer.get("/api/v1/dags")
    assert listed.status_code == 200 and [d["name"] for d in listed.json()] == ["report", "slow"]
    refused = viewer.post("/api/v1/dags/report/runs", json={"params": {"date": "2026-11-20"}})
    assert refused.status_code == 403 and "operator" in refused.json()["detail"]
    assert viewer.post("/api/v1/dags/report/pause").status_code == 403
    assert operator.post("/api/v1/dags/report/pause").json() == {"dag": "report", "paused": True}
    assert viewer.get("/api/v1/dags/report").json()["paused"] is True
    assert operator.post("/api/v1/dags/report/unpause").status_code == 200
    assert OPERATOR_TOKEN not in server.output() and VIEWER_TOKEN not in server.output()


def test_health_probes_and_openapi(server: Server) -> None:
    client = server.client(None)
    assert client.get("/healthz").json() == {"ok": True}
    assert client.get("/readyz").json() == {"ready": True}
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    for path in ("/api/v1/dags", "/api/v1/dags/{dag}/runs", "/api/v1/runs/{run_id}", "/api/v1/events",
                 "/api/v1/runs/{run_id}/steps/{step}/logs", "/api/v1/dags/{dag}/backfill", "/api/v1/runs/{a}/diff/{b}"):
        assert path in paths


def test_login_sets_a_strict_httponly_cookie_and_checks_csrf(server: Server) -> None:
    with httpx.Client(base_url=server.url, follow_redirects=False) as browser, httpx.Client(
            base_url=server.url) as stranger:
        login_flow(server, browser, stranger)


def login_flow(server: Server, browser: httpx.Client, stranger: httpx.Client) -> None:
    assert browser.get("/").status_code == 303  # to /login
    form = browser.get("/login")
    csrf = form.text.split('name="_csrf" value="', 1)[1].split('"', 1)[0]
    wrong = browser.post("/login", data={"token": "wrong-token-xxxxxxxxxx", "_csrf": csrf})
    assert wrong.status_code == 401 and "not known" in wrong.text
    no_csrf = stranger.post("/login", data={"token": OPERATOR_TOKEN}, follow_redirects=False)
    assert "conveyor_session" not in no_csrf.headers.get("set-cookie", "")
    done = browser.post("/login", data={"token": OPERATOR_TOKEN, "_csrf": csrf, "_next": "/"})
    cookie = next(c for c in done.headers.get_list("set-cookie") if c.startswith("conveyor_session="))
    assert done.status_code == 303 and "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = browser.get("/")
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers
    assert "unsafe-inline" not in page.headers["Content-Security-Policy"]
    # A form post without the page's CSRF token is refused even with the session cookie.
    assert browser.post("/dags/report/pause", data={"paused": "true"}).status_code == 403
    # The API with the cookie: reads work, writes need the CSRF header.
    assert browser.get("/api/v1/dags").status_code == 200
    assert browser.post("/api/v1/dags/report/pause").status_code == 403


@pytest.mark.timeout(300)
def test_trigger_with_params_runs_in_containers(server: Server, dags, workers: Workers) -> None:
    workers.start(1)
    client = server.client()
    created = client.post("/api/v1/dags/report/runs", json={"params": {"date": "2026-11-20", "rows": 5},
                                                            "priority": "high"})
    assert created.status_code == 201, created.text
    run_id = created.json()["run_id"]
    done = wait_for_state(client, run_id, {"success", "failed"})
    assert done["state"] == "success", done
    assert done["params"] == {"date": "2026-11-20", "rows": 5}
    assert [s["state"] for s in done["steps"]] == ["success"] * 3
    assert done["steps"][0]["attempts"][0]["image_id"].startswith("sha256:")
    cli = subprocess.run([sys.executable, "-m", "scheduler.cli.main", "status", run_id, "-o", "json"],
                         capture_output=True, text=True, env=workers.env(), check=True)
    assert json.loads(cli.stdout) == done  # the same document as ctl status -o json
    logs = client.get(f"/api/v1/runs/{run_id}/steps/extract/logs")
    assert logs.headers["content-type"].startswith("text/plain") and logs.content == b"rows 5 for 2026-11-20\n"


def test_bad_or_missing_params_are_422_naming_param_and_type(server: Server, dags) -> None:
    client = server.client()
    bad = client.post("/api/v1/dags/report/runs", json={"params": {"date": "2026-11-20", "rows": "many"}})
    assert bad.status_code == 422 and "'rows' (int)" in bad.json()["detail"]
    missing = client.post("/api/v1/dags/report/runs", json={"params": {}})
    assert missing.status_code == 422 and "'date' (date) is required" in missing.json()["detail"]
    assert client.post("/api/v1/dags/reprot/runs", json={}).status_code == 404
    assert "did you mean 'report'" in client.post("/api/v1/dags/reprot/runs", json={}).json()["detail"]
    assert client.post("/api/v1/dags/report/runs", json={"priority": "urgent"}).status_code == 422
    assert client.get("/api/v1/runs/no-such-run").status_code == 404


def test_runs_are_paginated_newest_first(server: Server, dags, store, dispatcher) -> None:
    made = [Engine(store, dispatcher).create_run("report", {"date": f"2026-11-{d:02d}"}) for d in range(1, 8)]
    client = server.client(VIEWER_TOKEN)
    seen, cursor, pages = [], None, 0
    while True:
        query = {"dag": "report", "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/runs", params=query)
        assert page.status_code == 200
        body = page.json()
        assert len(body["runs"]) <= 3
        seen += [r["run_id"] for r in body["runs"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made)) and pages == 3
    assert client.get("/api/v1/runs", params={"state": "success"}).json()["runs"] == []
    assert len(client.get("/api/v1/runs", params={"state": "queued", "limit": 50}).json()["runs"]) == 7
    assert client.get("/api/v1/runs", params={"cursor": "garbage"}).status_code == 422


@pytest.mark.timeout(300)
def test_rerun_and_cancel(server: Server, dags, workers: Workers) -> None:
    workers.start(1)
    client = server.client()
    params = {"date": "2026-11-20", "rows": 12}
    run_id = client.post("/api/v1/dags/report/runs", json={"params": params}).json()["run_id"]
    failed = wait_for_state(client, run_id, {"success", "failed"})
    assert failed["state"] == "failed" and [s["state"] for s in failed["steps"]] == ["success", "failed",
                                                                                    "upstream_failed"]
    assert client.post(f"/api/v1/runs/{run_id}/cancel").status_code == 409  # already ended
    again = client.post(f"/api/v1/runs/{run_id}/rerun", json={"step": "check", "no_downstream": True})
    assert again.status_code == 200 and again.json()["rerun"] == ["check"]
    rerun = wait_for_state(client, run_id, {"success", "failed"})
    check = next(s for s in rerun["steps"] if s["name"] == "check")
    assert [a["number"] for a in check["attempts"]] == [1, 2]
    assert client.post(f"/api/v1/runs/{run_id}/rerun", json={"step": "nope"}).status_code == 404

    slow = client.post("/api/v1/dags/slow/runs", json={}).json()["run_id"]
    deadline = time.monotonic() + 120
    while client.get(f"/api/v1/runs/{slow}").json()["steps"][1]["state"] != "running":
        assert time.monotonic() < deadline, "the nap step never started"
        time.sleep(0.2)
    cancelled = client.post(f"/api/v1/runs/{slow}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] in {"cancelling", "cancelled"}
    assert wait_for_state(client, slow, {"success", "failed", "cancelled"}, timeout=60)["state"] == "cancelled"


@pytest.mark.timeout(300)
def test_logs_follow_streams_until_the_attempt_ends(server: Server, dags, workers: Workers, store) -> None:
    workers.start(1)
    client = server.client(VIEWER_TOKEN)
    run_id = server.client().post("/api/v1/dags/slow/runs", json={}).json()["run_id"]
    chunks = []
    started = time.monotonic()
    with client.stream("GET", f"/api/v1/runs/{run_id}/steps/ticker/logs", params={"follow": "true"}) as response:
        assert response.status_code == 200 and response.headers["x-conveyor-attempt"] == "1"
        for chunk in response.iter_bytes():
            chunks.append((time.monotonic() - started, chunk))
    body = b"".join(c for _, c in chunks)
    assert body == b"tick 1\ntick 2\ntick 3\ntick 4\n" == store.read_log(run_id, "ticker", 1)
    assert len(chunks) >= 2, "the log came in one piece: it was not followed while the step ran"
    assert client.get(f"/api/v1/runs/{run_id}/steps/ticker/logs", params={"attempt": 2}).status_code == 404
    server.client().post(f"/api/v1/runs/{run_id}/cancel")


@pytest.mark.timeout(300)
def test_events_arrive_in_order_and_resume_from_last_event_id(server: Server, dags, workers: Workers) -> None:
    workers.start(1)
    client = server.client(VIEWER_TOKEN)
    run_id = server.client().post("/api/v1/dags/report/runs", json={"params": {"date": "2026-11-20"}}).json()["run_id"]
    assert wait_for_state(client, run_id, {"success", "failed"})["state"] == "success"
    events = read_events(client, {"run": run_id, "last_event_id": "0"}, until=lambda e: e["kind"] == "run"
                         and e["state"] == "success")
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    for step in ("extract", "check", "load"):
        assert [e["state"] for e in events if e["step"] == step] == ["queued", "running", "success"]
    order = [(e["step"], e["state"]) for e in events if e["kind"] == "step"]
    assert order.index(("extract", "success")) < order.index(("check", "queued"))
    middle = events[len(events) // 2]
    resumed = read_events(client, {"run": run_id}, headers={"Last-Event-ID": middle["id"]},
                          until=lambda e: e["kind"] == "run" and e["state"] == "success")
    assert [e["id"] for e in resumed] == ids[ids.index(middle["id"]) + 1:]


def read_events(client: httpx.Client, params: dict, until, headers: dict | None = None) -> list[dict]:
    found = []
    with client.stream("GET", "/api/v1/events", params=params, headers=headers or {}, timeout=20) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                found.append(json.loads(line[6:]))
                if until(found[-1]):
                    return found
    raise AssertionError(f"the stream ended early: {found}")


@pytest.mark.timeout(300)
def test_diff_is_the_same_in_the_api_and_the_cli(server: Server, dags, workers: Workers) -> None:
    workers.start(1)
    client = server.client()
    good = client.post("/api/v1/dags/report/runs", json={"params": {"date": "2026-11-19"}}).json()["run_id"]
    bad = client.post("/api/v1/dags/report/runs", json={"params": {"date": "2026-11-20", "rows": 50}}).json()["run_id"]
    wait_for_state(client, good, {"success", "failed"})
    wait_for_state(client, bad, {"success", "failed"})
    diff = client.get(f"/api/v1/runs/{good}/diff/{bad}").json()
    params = {p["name"]: p for p in diff["params"]}
    assert params["rows"] == {"name": "rows", "a": 3, "b": 50, "differs": True}
    assert params["date"]["differs"] and not {r["field"]: r for r in diff["run"]}["dag_sha256"]["differs"]
    check = next(s for s in diff["steps"] if s["name"] == "check")
    assert check["a"]["exit_code"] == 0 and check["b"]["exit_code"] == 4 and "exit_code" in check["differs"]
    assert next(s for s in diff["steps"] if s["name"] == "extract")["differs"] == []
    cli = subprocess.run([sys.executable, "-m", "scheduler.cli.main", "diff", good, bad, "-o", "json"],
                         capture_output=True, text=True, env=workers.env(), check=True)
    assert json.loads(cli.stdout) == diff
    table = subprocess.run([sys.executable, "-m", "scheduler.cli.main", "diff", good, bad], capture_output=True,
                           text=True, env=workers.env(), check=True)
    assert "difference(s)" in table.stdout and "params.rows" in table.stdout


def test_backfill_dry_run_plans_and_the_real_one_creates(server: Server, dags) -> None:
    client = server.client()
    body = {"start": "2026-11-01", "end": "2026-11-04", "params": {"date": "2026-11-01"}}
    planned = client.post("/api/v1/dags/report/backfill", json={**body, "dry_run": True})
    assert planned.status_code == 200
    assert [(b["start"][:10], b["action"]) for b in planned.json()["batches"]] == [
        ("2026-11-01", "create"), ("2026-11-02", "create"), ("2026-11-03", "create")]
    assert client.get("/api/v1/runs").json()["runs"] == []
    created = client.post("/api/v1/dags/report/backfill", json=body)
    assert created.status_code == 201 and created.json()["created"] == 3
    runs = client.get("/api/v1/runs", params={"dag": "report"}).json()["runs"]
    assert len(runs) == 3 and {r["trigger"] for r in runs} == {"backfill"}
    again = client.post("/api/v1/dags/report/backfill", json={**body, "dry_run": True}).json()["batches"]
    assert {b["action"] for b in again} == {"skip"}
    assert client.post("/api/v1/dags/report/backfill", json={**body, "start": "yesterday"}).status_code == 422


def test_next_fires_match_ctl_next(server: Server, tmp_path, store, settings) -> None:
    submit_file(store, write_dag(tmp_path, """
        name: weekdays
        schedule: {cron: "0 17 * * *", timezone: America/New_York, calendar: NYSE}
        steps: {a: {image: conveyor/busybox:local, command: ["true"]}}
    """, "weekdays.yaml"))
    api = server.client(VIEWER_TOKEN).get("/api/v1/dags/weekdays/next", params={"n": 5})
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    cli = json.loads(subprocess.run([sys.executable, "-m", "scheduler.cli.main", "next", "weekdays", "-n", "5", "-o",
                                     "json"], capture_output=True, text=True, env=env, check=True).stdout)
    data = api.json()
    assert data["fires"][0]["at"] == cli["fires"][0]["at"] and len(data["fires"]) == 5
    assert any(d["reason"].startswith("weekend") for d in data["dropped"])
    listed = server.client(VIEWER_TOKEN).get("/api/v1/dags").json()
    entry = next(d for d in listed if d["name"] == "weekdays")
    assert entry["timezone"] == "America/New_York" and entry["next_fire"] and entry["import_error"] is None


def test_a_public_host_without_tokens_is_refused(settings, tmp_path) -> None:
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    env.pop("CONVEYOR_TOKENS_FILE", None)
    refused = subprocess.run([sys.executable, "-m", "scheduler.cli.main", "server", "--host", "0.0.0.0"],
                             capture_output=True, text=True, env=env, timeout=30)
    assert refused.returncode == 1 and "without a tokens file" in refused.stderr
    bad = tmp_path / "tokens"
    bad.write_text("admin secret-secret-secret-1\n")
    broken = subprocess.run([sys.executable, "-m", "scheduler.cli.main", "server", "--tokens-file", str(bad)],
                            capture_output=True, text=True, env=env, timeout=30)
    assert broken.returncode == 1 and f"{bad}:1:" in broken.stderr and "secret-secret" not in broken.stderr


def test_without_tokens_the_server_is_open_on_loopback(settings, tmp_path, dags) -> None:
    running = Server(settings, tmp_path, tokens=False)
    try:
        assert "loopback" in running.output()
        assert running.client(None).get("/api/v1/dags").status_code == 200
        cross = running.client(None).post("/api/v1/dags/report/pause", headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403
    finally:
        running.stop()


def test_dataset_events_from_outside_need_an_operator(server: Server, store) -> None:
    """POST /api/v1/datasets/{name}/events: what `ctl dataset emit` does, for other systems."""
    from scheduler.datasets import dataset_list

    viewer, operator = server.client(VIEWER_TOKEN), server.client(OPERATOR_TOKEN)
    assert server.client(None).post("/api/v1/datasets/orders/events").status_code == 401
    assert viewer.post("/api/v1/datasets/orders/events", json={"payload": {"rows": 3}}).status_code == 403
    first = operator.post("/api/v1/datasets/orders/events", json={"payload": {"rows": 3}})
    second = operator.post("/api/v1/datasets/orders/events")
    assert first.status_code == 201 and second.status_code == 201, first.text
    assert second.json()["seq"] > first.json()["seq"]
    [orders] = [d for d in dataset_list(store) if d["dataset"] == "orders"]
    assert orders["last_event"]["seq"] == second.json()["seq"]
