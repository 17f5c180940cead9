"""``ctl`` through ``ctl server`` (CONVEYOR_SERVER, CONVEYOR_TOKEN): a real server with a tokens file, a real
Redis and real workers; every command's output and exit code compared with the same command against Redis.
The remote ``ctl`` is given an unreachable REDIS_URL and no signing key: it can only have used the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from scheduler.service import submit_file
from scheduler.settings import Settings
from scheduler.store import RunStore
from tests.conftest import ROOT, Workers, wait_for_run
from tests.helpers import write_dag
from tests.servers import OPERATOR_TOKEN, VIEWER_TOKEN, Server

CHECKED = """
    name: remote_report
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
NIGHTLY = """
    name: remote_nightly
    schedule: {cron: "30 2 * * *", timezone: America/New_York, calendar: NYSE}
    steps:
      only: {image: conveyor/busybox:local, command: ["true"]}
"""
SLOW = """
    name: remote_slow
    steps:
      nap: {image: conveyor/busybox:local, command: [sleep, "30"]}
"""


class Ctl:
    """``ctl`` in a process of its own, against Redis (local) or through the server (remote)."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "scheduler.cli.main", *args], capture_output=True, text=True,
                              env=self.env, timeout=180, cwd=ROOT)

    def json(self, *args: str) -> object:
        done = self(*args, "-o", "json")
        assert done.returncode in (0, 1), done.stderr
        return json.loads(done.stdout)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "REDIS_URL"))}
    return {**env, "COLUMNS": "160"}


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[Server]:
    running = Server(settings, tmp_path)
    yield running
    running.stop()


@pytest.fixture
def local(settings: Settings) -> Ctl:
    return Ctl({**base_env(), "REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix,
                "CONVEYOR_SIGNING_KEY": os.environ["CONVEYOR_SIGNING_KEY"]})


def remote_ctl(server: Server, token: str | None = OPERATOR_TOKEN) -> Ctl:
    env = {**base_env(), "CONVEYOR_SERVER": server.url + "/", "REDIS_URL": "redis://127.0.0.1:1/0"}
    return Ctl({**env, "CONVEYOR_TOKEN": token} if token else env)


@pytest.fixture
def remote(server: Server) -> Ctl:
    return remote_ctl(server)


@pytest.fixture
def dags(tmp_path: Path, store: RunStore) -> None:
    for text, name in ((CHECKED, "checked.yaml"), (NIGHTLY, "nightly.yaml"), (SLOW, "slow.yaml")):
        submit_file(store, write_dag(tmp_path, text, name))


def both(local: Ctl, remote: Ctl, *args: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(2) as pool:
        mine, theirs = pool.map(lambda ctl: ctl(*args), (local, remote))
    return mine, theirs


def assert_same(local: Ctl, remote: Ctl, *args: str) -> subprocess.CompletedProcess:
    """The command prints the same to stdout and stderr, and exits the same, either way."""
    mine, theirs = both(local, remote, *args)
    assert (theirs.returncode, theirs.stdout, theirs.stderr) == (mine.returncode, mine.stdout, mine.stderr), args
    assert "Traceback" not in theirs.stderr
    return theirs


@pytest.mark.timeout(400)
def test_runs_through_the_server_print_what_redis_gives(local: Ctl, remote: Ctl, dags, store: RunStore,
                                                         workers: Workers) -> None:
    workers.start(1)
    # A bad param: the same one-line message naming the param, exit 1; an unknown DAG or run likewise.
    bad = assert_same(local, remote, "trigger", "remote_report", "--param", "date=yesterday")
    assert bad.returncode == 1 and "date" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert assert_same(local, remote, "trigger", "remote_reprot").returncode == 1
    assert assert_same(local, remote, "status", "no-such-run").returncode == 1

    # trigger --wait through the server: exit 1 because the check fails, the final status as JSON.
    waited = remote("trigger", "remote_report", "-p", "date=2026-11-20", "-p", "rows=12", "--wait", "-o", "json")
    assert waited.returncode == 1, waited.stderr
    failed = json.loads(waited.stdout)
    assert failed["state"] == "failed" and failed["params"] == {"date": "2026-11-20", "rows": 12}
    run_id = failed["run_id"]
    assert f"{run_id} check: failed" in waited.stderr  # the followed changes, one line each
    assert local.json("status", run_id) == failed
    for args in (("status", run_id, "-o", "json"), ("runs", "remote_report", "-o", "json"), ("runs", "-o", "json"),
                 ("runs", "remote_report"), ("runs", "-n", "1"), ("logs", run_id, "check"),
                 ("logs", run_id, "extract", "--attempt", "1"), ("logs", run_id, "check", "--attempt", "2"),
                 ("logs", run_id, "nope")):
        assert_same(local, remote, *args)
    assert remote("logs", run_id, "check").stdout == "too many rows\n"
    # logs -f: an ended attempt is printed and its outcome is the exit code; a step not started yet is
    # waited for, followed while it runs, and ends the command when it does.
    assert assert_same(local, remote, "logs", "-f", run_id, "check").returncode == 1
    assert assert_same(local, remote, "logs", "-f", run_id, "extract").returncode == 0
    fresh = remote("trigger", "remote_report", "-p", "date=2026-11-23").stdout.strip()
    followed = assert_same(local, remote, "logs", "-f", fresh, "load")
    assert (followed.returncode, followed.stdout) == (0, "loaded\n")

    # rerun through the server and against Redis: the same answer and notes for two like runs.
    second, third = (local.json("trigger", "remote_report", "-p", f"date=2026-11-2{day}", "-p", "rows=12",
                                "--wait")["run_id"] for day in (1, 2))
    mine, theirs = local("rerun", second, "--step", "check", "-o", "json"), remote("rerun", third, "--step", "check",
                                                                               "-o", "json")
    assert theirs.returncode == mine.returncode == 0 and theirs.stderr == mine.stderr
    assert "images pinned to the ids they ran" in theirs.stderr
    assert json.loads(mine.stdout) == {"run_id": second, "rerun": ["check", "load"], "version": 1}
    assert json.loads(theirs.stdout) == {"run_id": third, "rerun": ["check", "load"], "version": 1}
    wait_for_run(store, second, timeout=90)
    wait_for_run(store, third, timeout=90)
    again = remote("rerun", run_id, "--wait", "-o", "json")  # the failed step and what follows, followed
    assert again.returncode == 1 and [len(s["attempts"]) for s in json.loads(again.stdout)["steps"]] == [1, 2, 0]

    # cancel: a running run is cancelled through the server (exit 0); after that both sides exit 1.
    slow = remote("trigger", "remote_slow").stdout.strip()
    cancelled = remote("cancel", slow)
    assert cancelled.returncode == 0 and cancelled.stdout.startswith(f"run {slow}: cancel"), cancelled
    wait_for_run(store, slow, timeout=60)  # "cancelling" until its running step has been stopped
    ended = assert_same(local, remote, "cancel", slow)
    assert ended.returncode == 1 and "had already ended" in ended.stderr
    assert assert_same(local, remote, "cancel", slow, "--step", "nap").returncode == 1


@pytest.mark.timeout(200)
def test_dags_next_and_pause_through_the_server(local: Ctl, remote: Ctl, dags) -> None:
    for args in (("dags", "-o", "json"), ("dags",), ("next", "remote_nightly", "-n", "6", "--from", "2026-03-27"),
                 ("next", "remote_nightly", "-n", "6", "--from", "2026-03-27T00:00:00+01:00", "-o", "json"),
                 ("next", "remote_report"), ("next", "remote_nope")):
        assert_same(local, remote, *args)
    fires = local.json("next", "remote_nightly", "-n", "6", "--from", "2026-03-27")
    assert "weekend (Saturday)" in [d["reason"] for d in fires["dropped"]]

    paused = remote("pause", "remote_nightly")
    assert (paused.returncode, paused.stdout) == (0, "remote_nightly: paused\n")
    assert next(d for d in local.json("dags")["dags"] if d["name"] == "remote_nightly")["paused"] is True
    assert assert_same(local, remote, "unpause", "remote_nightly").stdout == "remote_nightly: active\n"
    assert assert_same(local, remote, "pause", "remote_nope").returncode == 1


def test_refusals_are_one_line_and_never_show_the_token(server: Server, dags) -> None:
    viewer = remote_ctl(server, VIEWER_TOKEN)
    assert viewer("runs").returncode == 0  # a viewer reads
    refused = viewer("trigger", "remote_report", "-p", "date=2026-11-20")
    assert refused.returncode == 1 and "(403)" in refused.stderr and "operator" in refused.stderr
    assert viewer("pause", "remote_nightly").returncode == 1
    wrong = remote_ctl(server, "a-token-nobody-gave-out-123")("runs")
    assert wrong.returncode == 1 and "(401)" in wrong.stderr and "a-token-nobody-gave-out" not in wrong.stderr
    anonymous = remote_ctl(server, None)("status", "x")
    assert anonymous.returncode == 1 and "no CONVEYOR_TOKEN was sent" in anonymous.stderr
    for done in (refused, wrong, anonymous):
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert VIEWER_TOKEN not in done.stderr + done.stdout and OPERATOR_TOKEN not in done.stderr + done.stdout
    assert VIEWER_TOKEN not in server.output() and "a-token-nobody-gave-out" not in server.output()


def test_an_unreachable_or_misspelt_server_is_one_line() -> None:
    env = {**base_env(), "CONVEYOR_TOKEN": "secret-token-value-xyz"}
    gone = Ctl({**env, "CONVEYOR_SERVER": "http://127.0.0.1:1"})("runs")
    assert gone.returncode == 1 and gone.stderr.startswith("cannot reach ctl server at http://127.0.0.1:1:")
    assert len(gone.stderr.strip().splitlines()) == 1
    misspelt = Ctl({**env, "CONVEYOR_SERVER": "localhost:8080"})("status", "x")
    assert misspelt.returncode == 2 and "CONVEYOR_SERVER" in misspelt.stderr
    with_password = Ctl({**env, "CONVEYOR_SERVER": "http://me:hunter2@example.invalid"})("runs")
    assert with_password.returncode == 2 and "hunter2" not in with_password.stderr
    for done in (gone, misspelt, with_password):
        assert "secret-token-value-xyz" not in done.stderr and "Traceback" not in done.stderr
