"""``ctl`` habits, as users run them (separate processes): render, run --only, validate against Redis,
multi-file submit, --version, completion, logs -f, workers, the summarised next."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import docker
import pytest

from scheduler.errors import ParamError
from scheduler.plan import assume
from scheduler.settings import Settings
from tests.conftest import ROOT, Workers
from tests.helpers import spec_from, write_dag
from tests.test_cli import ctl

PIPELINE = """\
name: habits-pipe
params:
  tag: {type: string, default: local}
  date: {type: date, required: true}
schedule: {cron: "0 6 * * *", timezone: Europe/Paris}
defaults:
  image: "conveyor/busybox:{{ params.tag }}"
steps:
  extract:
    command: [sh, -c, 'echo "extracting $DAY"']
    env: {DAY: "{{ params.date }} {{ ds }}"}
    secrets: {TOKEN: {env: HABITS_TOKEN}}
    mounts: [{source: /srv/data, target: /data}]
    resources: {cpus: 0.5, memory: 256m}
    timeout: 5m
  transform:
    command: [echo, "transforming {{ params.date }}"]
    depends_on: [extract]
  load:
    command: [echo, loading]
    depends_on: [transform]
  report:
    command: [echo, reporting]
"""
OFFLINE = {"REDIS_URL": "redis://127.0.0.1:1/0", "DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def _env(settings: Settings) -> dict[str, str]:
    return {"REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}


# --- ctl render ------------------------------------------------------------------------------------


def test_render_shows_each_step_without_redis_or_docker(tmp_path: Path) -> None:
    path = write_dag(tmp_path, PIPELINE)
    env = {**OFFLINE, "HABITS_TOKEN": "s3cret-value"}
    done = ctl("render", str(path), "-p", "date=2026-11-20", "-p", "tag=1.2", "--logical-date",
               "2026-11-20T05:00:00Z", "-o", "json", env=env)
    assert done.returncode == 0, done.stderr
    assert "s3cret-value" not in done.stdout + done.stderr
    data = json.loads(done.stdout)
    steps = {s["step"]: s for s in data["steps"]}
    assert list(steps) == ["extract", "transform", "load", "report"]
    extract = steps["extract"]
    assert extract["image"] == "conveyor/busybox:1.2"  # the image template, rendered
    assert extract["argv"] == ["sh", "-c", 'echo "extracting $DAY"']
    # ds is the schedule's data interval start: the day before the 06:00 Paris fire of 2026-11-20
    assert extract["env"] == {"DAY": "2026-11-20 2026-11-19", "TOKEN": {"env": "HABITS_TOKEN"}}
    assert extract["mounts"] == [{"source": "/srv/data", "target": "/data", "read_only": True}]
    assert extract["limits"] == {"cpus": 0.5, "memory": 256 * 2**20, "timeout": 300.0}
    assert steps["transform"]["argv"] == ["echo", "transforming 2026-11-20"]
    assert steps["transform"]["depends_on"] == ["extract"]
    table = ctl("render", str(path), "-p", "date=2026-11-20", env=env)
    assert table.returncode == 0, table.stderr
    assert "TOKEN=<secret from env HABITS_TOKEN>" in table.stdout
    assert "cpus 0.5, memory 256m, timeout 300s" in table.stdout
    assert "s3cret-value" not in table.stdout


def test_render_refuses_bad_params_and_images_that_do_not_render(tmp_path: Path) -> None:
    path = write_dag(tmp_path, PIPELINE)
    missing = ctl("render", str(path), env=OFFLINE)
    assert missing.returncode == 1 and "param 'date' (date) is required" in missing.stderr
    empty_tag = ctl("render", str(path), "-p", "date=2026-11-20", "-p", "tag=", env=OFFLINE)
    assert empty_tag.returncode == 1
    assert "renders as 'conveyor/busybox:', which is not an image reference" in empty_tag.stderr
    assert "Traceback" not in empty_tag.stderr


# --- ctl run --only ---------------------------------------------------------------------------------


def test_assume_treats_upstream_as_succeeded_and_skips_the_rest() -> None:
    spec = spec_from(PIPELINE)
    assert assume(spec, ["transform"]) == {"extract": "success", "load": "skipped", "report": "skipped"}
    assert assume(spec, ["load", "report"]) == {"extract": "success", "transform": "success"}
    with pytest.raises(ParamError, match="no step 'transfrom' to run with --only; did you mean 'transform'"):
        assume(spec, ["transfrom"])
    rules = spec_from(PIPELINE.replace("    depends_on: [transform]\n",
                                       "    depends_on: [transform]\n    trigger_rule: one_failed\n"))
    with pytest.raises(ParamError, match="step 'load' runs only when an upstream step fails"):
        assume(rules, ["load"])
    assert assume(rules, ["transform", "load"])["extract"] == "success"


def test_run_only_runs_just_those_steps(tmp_path: Path, image: str, docker_client: docker.DockerClient) -> None:
    path = write_dag(tmp_path, PIPELINE.replace("[sh, -c, 'echo \"extracting $DAY\"']", "[sh, -c, 'exit 3']"))
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = ctl("run", str(path), "-p", "date=2026-11-20", "--only", "transform,load", "-o", "json", env=env)
    assert done.returncode == 0, done.stderr
    assert "only transform, load; treated as succeeded: extract" in done.stderr
    status = json.loads(done.stdout)
    states = {s["name"]: (s["state"], len(s["attempts"])) for s in status["steps"]}
    # extract would fail (exit 3): it is not run, and counts as succeeded
    assert states == {"extract": ("success", 0), "transform": ("success", 1), "load": ("success", 1),
                      "report": ("skipped", 0)}
    assert status["state"] == "success"
    failing = ctl("run", str(path), "-p", "date=2026-11-20", "--only", "extract", "-o", "json", env=env)
    assert failing.returncode == 1
    states = {s["name"]: s["state"] for s in json.loads(failing.stdout)["steps"]}
    assert states == {"extract": "failed", "transform": "skipped", "load": "skipped", "report": "skipped"}
    unknown = ctl("run", str(path), "-p", "date=2026-11-20", "--only", "lod", env=env)
    assert unknown.returncode == 1 and "did you mean 'load'" in unknown.stderr


# --- ctl validate and ctl submit -------------------------------------------------------------------

SCHEDULED = """\
name: habits-cal
schedule: {cron: "0 17 * * 1-5", calendar: habits-ops}
steps:
  hello: {image: conveyor/busybox:local, command: [echo, hi]}
"""


def test_validate_checks_named_calendars_against_redis(tmp_path: Path, settings: Settings) -> None:
    path = write_dag(tmp_path, SCHEDULED)
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    offline = ctl("validate", str(path), env=env)
    assert offline.returncode == 0
    assert offline.stderr.splitlines() == [
        f"{path}:2:44: warning: schedule.calendar: named calendar 'habits-ops': cannot check offline (set REDIS_URL)"]
    unknown = ctl("validate", str(path), env=_env(settings))
    assert unknown.returncode == 1 and "unknown calendar 'habits-ops'" in unknown.stderr
    calendars = write_dag(tmp_path, "habits-ops: {holidays: [GB-ENG]}\n", "calendars.yaml")
    assert ctl("calendar", "submit", str(calendars), env=_env(settings)).returncode == 0
    known = ctl("validate", str(path), env=_env(settings))
    assert (known.returncode, known.stderr) == (0, "")


def test_submit_reports_every_file_and_shows_warnings(tmp_path: Path, settings: Settings) -> None:
    good = write_dag(tmp_path, "name: habits-good\nsteps:\n  a: {image: conveyor/busybox:local, command: [echo]}\n",
                     "good.yaml")
    bad = write_dag(tmp_path, "name: habits-bad\nsteps:\n  a: {image: x, comand: [y]}\n", "bad.yaml")
    warned = write_dag(tmp_path, "name: habits-warned\nschedule: {cron: '0 0 17 * * *'}\n"
                                 "steps:\n  a: {image: conveyor/busybox:local, command: [echo]}\n", "warned.yaml")
    done = ctl("submit", str(bad), str(good), str(warned), env=_env(settings))
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].startswith("habits-good: new version 1")
    assert done.stdout.splitlines()[1].startswith("habits-warned: new version 1")
    assert f"{bad}:3:17: steps.a.comand: unknown field 'comand'" in done.stderr
    assert f"{bad}: not submitted (2 problem(s))" in done.stderr
    assert f"{warned}:2:18: warning: schedule.cron: '0 0 17 * * *' has 6 fields" in done.stderr
    listed = json.loads(ctl("submit", str(good), str(bad), "-o", "json", env=_env(settings)).stdout)
    assert [r["file"] for r in listed] == [str(good), str(bad)]
    assert listed[0]["created"] is False
    assert any(p["message"].startswith("unknown field") for p in listed[1]["problems"])


# --- --version, completion ----------------------------------------------------------------------------


def test_version_and_completion() -> None:
    from importlib.metadata import version

    done = ctl("--version")
    assert (done.returncode, done.stdout) == (0, f"ctl (conveyor) {version('conveyor')}\n")
    script = ctl("--show-completion", "bash", env={"SHELL": "/bin/bash"})
    assert script.returncode == 0 and "_CTL_COMPLETE=complete_bash" in script.stdout
    assert "complete -o default -F _ctl_completion ctl" in script.stdout
    # what the installed script asks: the completions of "ctl da"
    words = ctl(env={"_CTL_COMPLETE": "complete_bash", "COMP_WORDS": "ctl da", "COMP_CWORD": "1"})
    assert words.stdout.split() == ["dags"]
    options = ctl(env={"_CTL_COMPLETE": "complete_bash", "COMP_WORDS": "ctl logs --fo", "COMP_CWORD": "2"})
    assert options.stdout.split() == ["--follow"]
    helped = ctl("--help")
    assert "--install-completion" in helped.stdout and "workers" in helped.stdout and "render" in helped.stdout


# --- logs -f, workers, NO_COLOR -------------------------------------------------------------------------

TALKER = """\
name: habits-talk
params: {code: {type: int, default: 0}}
steps:
  talk:
    image: conveyor/busybox:local
    command: [sh, -c, 'echo one; sleep 2; echo two; exit {{ params.code }}']
"""


def _follow(run_id: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", "logs", "-f", run_id, "talk"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, **env}, cwd=ROOT)


def _rest(process: subprocess.Popen) -> bytes:
    """What the process writes from now on (through the same buffered reader as readline)."""
    assert process.stdout is not None
    with process.stdout:
        rest = process.stdout.read()
    process.wait(timeout=60)
    return rest


def test_logs_follow_prints_as_it_comes_and_ends_with_the_attempt(tmp_path: Path, settings: Settings,
                                                                   workers: Workers) -> None:
    env = _env(settings)
    assert ctl("submit", str(write_dag(tmp_path, TALKER)), env=env).returncode == 0
    run_id = ctl("trigger", "habits-talk", env=env).stdout.strip()
    # started before any worker: it waits for the attempt, then follows it
    process = _follow(run_id, env)
    workers.start(1)
    assert process.stdout is not None
    first = process.stdout.readline()
    assert first == b"one\n"
    assert process.poll() is None  # "two" is 2 s away: still following
    assert (_rest(process), process.returncode) == (b"two\n", 0)
    failing = ctl("trigger", "habits-talk", "-p", "code=3", env=env).stdout.strip()
    process = _follow(failing, env)
    assert (_rest(process), process.returncode) == (b"one\ntwo\n", 1)
    assert ctl("logs", "-f", "no-such-run", "talk", env=env).returncode == 1


def test_workers_lists_what_each_worker_runs(tmp_path: Path, settings: Settings, workers: Workers) -> None:
    env = _env(settings)
    assert ctl("submit", str(write_dag(tmp_path, TALKER.replace("sleep 2", "sleep 4"))), env=env).returncode == 0
    [process] = workers.start(1, "--queues", "high,default")
    run_id = ctl("trigger", "habits-talk", env=env).stdout.strip()
    deadline = time.monotonic() + 30
    while True:
        rows = json.loads(ctl("workers", "-o", "json", env=env).stdout)
        busy = [r for r in rows if r["current"]]
        if busy:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    [row] = rows
    assert (row["host"], row["pid"], row["queues"]) == (socket.gethostname(), process.pid, ["high", "default"])
    assert row["name"] == f"{socket.gethostname()}-{process.pid}" and row["state"] == "busy"
    assert (row["current"]["run_id"], row["current"]["step"], row["current"]["attempt"]) == (run_id, "talk", 1)
    assert row["last_heartbeat"] and row["current"]["started_at"]
    table = ctl("workers", env=env)
    assert f"{run_id} talk #1" in table.stdout and "last heartbeat" in table.stdout


def _in_a_terminal(args: list[str], env: dict[str, str]) -> bytes:
    main, child = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", *args], stdout=child, stderr=child,
                               env={**os.environ, "TERM": "xterm-256color", **env}, cwd=ROOT)
    os.close(child)
    out = b""
    with contextlib.suppress(OSError):  # EIO once the child side is closed
        while chunk := os.read(main, 65536):
            out += chunk
    os.close(main)
    process.wait(timeout=60)
    return out


def test_no_color_and_non_tty_output_have_no_colours(tmp_path: Path, settings: Settings, workers: Workers) -> None:
    env = _env(settings)
    assert ctl("submit", str(write_dag(tmp_path, TALKER.replace("sleep 2; ", ""))), env=env).returncode == 0
    workers.start(1)
    assert ctl("trigger", "habits-talk", "--wait", env=env).returncode == 0
    colour = re.compile(rb"\x1b\[[0-9;]*3[0-9](;[0-9;]*)?m")
    coloured = _in_a_terminal(["runs"], {**env, "NO_COLOR": ""})
    assert b"success" in coloured and colour.search(coloured)  # the check can fail: a terminal gets colours
    plain = _in_a_terminal(["runs"], {**env, "NO_COLOR": "1"})
    assert b"success" in plain and not colour.search(plain)
    piped = ctl("runs", env={**env, "NO_COLOR": ""})
    assert "success" in piped.stdout and "\x1b[" not in piped.stdout + piped.stderr
