"""User-facing errors and settings: every expected failure is a ConveyorError with its exit code (never
"unexpected error"), settings are checked at start with messages naming the variable, and ``ctl run``
and ``ctl worker`` say clearly when no Docker engine answers."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import docker
import pytest
import yaml

from scheduler.durations import setting_seconds
from scheduler.errors import ConfigError, ConveyorError
from scheduler.plan import plan_run
from scheduler.settings import Settings, check_redis_url
from scheduler.templates import TemplateError
from tests.conftest import ROOT, TEST_PREFIX
from tests.helpers import spec_from, write_dag
from tests.test_cli import _processes_mentioning, ctl

HANDLER_ENV = """\
name: handlers
params:
  day: {type: string, default: monday}
steps:
  only: {image: conveyor/busybox:local, command: [echo, "{{ params.day }}"]}
on_failure:
  image: conveyor/busybox:local
  command: [echo, failed]
  env: {X: "{{ params.nope }}"}
"""
DEAD_ENGINES = ["tcp://127.0.0.1:1", "unix:///nonexistent/conveyor-test/docker.sock"]

# Exceptions that never reach a person: each is turned into something that does, where it is caught.
INTERNAL = {
    "scheduler.yamlsource.YamlProblems": "becomes a SpecError",
    "scheduler.yamlsource._TooDeep": "becomes a YAML problem",
    "runner.job.StepRefused": "becomes the attempt's outcome (reason and error)",
    "runner.admission.JobRefused": "the worker moves the job to RQ's failed registry with the reason, and logs it",
    "runner.outputs.OutputFailure": "becomes the attempt's outcome (output_missing, output_too_large, ...)",
    "scheduler.outputs.OutputUnavailable": "becomes the attempt's outcome (output_unavailable)",
    "scheduler.outputs.OutputRefused": "becomes the attempt's outcome (output_signature)",
}


def _exception_classes() -> list[type[BaseException]]:
    found = []
    for package in ("scheduler", "runner"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            module = importlib.import_module(info.name)
            found += [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                      if obj.__module__ == module.__name__ and issubclass(obj, BaseException)]
    return found


def test_every_error_class_is_a_conveyor_error() -> None:
    classes = _exception_classes()
    names = {f"{c.__module__}.{c.__qualname__}" for c in classes}
    assert {"scheduler.templates.TemplateError", "scheduler.durations.DurationError",
            "scheduler.conditions.ConditionError", "scheduler.outages.OutageError",
            "scheduler.calendars.CalendarError", "scheduler.schedules.ScheduleError"} <= names
    assert not [c for c in classes if c.__bases__ == (ValueError,)], "an error class derives only from ValueError"
    strays = sorted(n for c, n in ((c, f"{c.__module__}.{c.__qualname__}") for c in classes)
                    if not issubclass(c, ConveyorError) and n not in INTERNAL)
    assert strays == []
    assert set(INTERNAL) <= names  # an entry for a class that is gone is stale


# --- handlers are validated like steps -----------------------------------------------------------------


def test_validate_reports_a_handler_env_template_where_it_is(tmp_path: Path) -> None:
    path = write_dag(tmp_path, HANDLER_ENV)
    result = ctl("validate", str(path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{path}:9:12: on_failure.env.X: unknown template variable 'params.nope'; did you mean 'params.day'?"]


def test_a_bad_handler_template_at_plan_time_is_a_conveyor_error() -> None:
    spec = spec_from(HANDLER_ENV.replace("params.nope", "params.day"))
    broken = replace(spec.handlers["_on_failure"], env={"X": "{{ params.nope }}"})
    with pytest.raises(TemplateError) as caught:
        plan_run(replace(spec, handlers={"_on_failure": broken}), version=1, params={"day": "x"},
                 now=datetime.now(UTC))
    assert isinstance(caught.value, ConveyorError) and caught.value.exit_code == 1


def test_trigger_of_a_stored_dag_with_a_bad_handler_template_is_exit_1(settings, store) -> None:
    """A version stored before handlers' env was validated: found again when a run is created."""
    raw = HANDLER_ENV.encode()
    store.submit_dag("handlers", raw, yaml.safe_load(raw), path="/dags/handlers.yaml")
    result = ctl("trigger", "handlers", env={"REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix})
    assert result.returncode == 1, result.stderr
    assert "/dags/handlers.yaml:9:12: on_failure.env.X: unknown template variable 'params.nope'" in result.stderr
    assert "unexpected error" not in result.stderr and "Traceback" not in result.stderr
    assert store.run_ids("handlers", 10) == []


# --- settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("15s", 15.0), ("10", 10.0), ("2.5", 2.5), ("1m", 60.0),
                                               ("1h30m", 5400.0), ("250ms", 0.25)])
def test_duration_settings_accept_every_form(text: str, seconds: float) -> None:
    assert setting_seconds(text) == seconds
    settings = Settings.from_env("redis://127.0.0.1:6379/0", {"CONVEYOR_ATTEMPT_LEASE": text,
                                                              "CONVEYOR_SHUTDOWN_GRACE": text})
    assert (settings.attempt_lease, settings.shutdown_grace) == (seconds, seconds)


@pytest.mark.parametrize(("name", "value"), [
    ("CONVEYOR_ATTEMPT_LEASE", "abc"), ("CONVEYOR_ATTEMPT_LEASE", "0"), ("CONVEYOR_SHUTDOWN_GRACE", "-5"),
    ("CONVEYOR_SHUTDOWN_GRACE", "1.5s"), ("CONVEYOR_LOST_COUNTS", "maybe"), ("CONVEYOR_DEFAULT_CPUS", "lots"),
    ("CONVEYOR_DEFAULT_MEMORY", "1q"), ("CONVEYOR_LOG_CAP", "big"), ("CONVEYOR_ALLOW_MOUNTS", "data"),
    ("CONVEYOR_RUNTIME", "podman"),
])
def test_a_bad_setting_names_the_variable_and_the_value(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env("redis://127.0.0.1:6379/0", {name: value})
    assert caught.value.exit_code == 2
    assert str(caught.value).startswith(f"{name}={value!r} ") and ": use " in str(caught.value)


@pytest.mark.parametrize("url", ["garbage", "http://127.0.0.1:6379/0", "redis://h:port/0", "rediss://h:99999/0",
                                 "redis://h/zero", "unix://", "redis://h/0?nonsense=1", "redis:/h"])
def test_a_malformed_redis_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_redis_url(url)
    message = str(caught.value)
    assert message.startswith(f"REDIS_URL={url!r} is not a Redis URL")
    assert "redis://" in message and "rediss://" in message and "unix://" in message


def test_the_password_of_a_malformed_redis_url_is_never_shown() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings("redis://:s3cret@h:port/0").connect()
    assert "s3cret" not in str(caught.value) and "redis://:***@h:port/0" in str(caught.value)


def test_ctl_reports_a_bad_setting_with_exit_2() -> None:
    lease = ctl("runs", env={"CONVEYOR_ATTEMPT_LEASE": "abc"})
    assert lease.returncode == 2
    assert lease.stderr.splitlines() == ["CONVEYOR_ATTEMPT_LEASE='abc' is not a duration: use a duration like 15s, "
                                         "1m or 1h30m, or plain seconds like 10 or 2.5"]
    for url in ("http://127.0.0.1:6379/0", "garbage", "redis://127.0.0.1:port/0"):
        bad_url = ctl("runs", env={"REDIS_URL": url})
        assert bad_url.returncode == 2, bad_url.stderr
        assert f"REDIS_URL={url!r} is not a Redis URL" in bad_url.stderr
        assert "unexpected error" not in bad_url.stderr and len(bad_url.stderr.splitlines()) == 1
    worker = ctl("worker", env={"REDIS_URL": "redis://127.0.0.1:1/0", "CONVEYOR_RUNTIME": "podman"})
    assert worker.returncode == 2 and "CONVEYOR_RUNTIME='podman'" in worker.stderr


def test_ctl_next_of_a_file_still_reports_a_malformed_redis_url(tmp_path: Path) -> None:
    """A file is checked without Redis when none answers; a REDIS_URL that is not a URL is still a mistake."""
    path = write_dag(tmp_path, "name: d\nschedule: {cron: '0 3 * * *'}\n"
                               "steps:\n  s: {image: conveyor/busybox:local, command: [true]}\n")
    assert ctl("next", str(path), "-n", "1", env={"REDIS_URL": "redis://127.0.0.1:1/0"}).returncode == 0
    assert ctl("next", str(path), "-n", "1", env={"REDIS_URL": "nonsense"}).returncode == 2


def test_scheduler_options_take_durations_from_their_variables(settings, store) -> None:
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix,
           "CONVEYOR_LEASE_TTL": "10s", "CONVEYOR_LOOKAHEAD": "1m", "CONVEYOR_HISTORY_DAYS": "12h"}
    process = subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", "scheduler", "--log-level", "WARNING"],
                               env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not store.r.exists(store.keys.leader()):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "the scheduler never took the lease"
            time.sleep(0.05)
        assert 1000 < store.r.pttl(store.keys.leader()) <= 10_000  # 10s read as ten seconds
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    bad = ctl("scheduler", env={"REDIS_URL": settings.redis_url, "CONVEYOR_LEASE_TTL": "ten"})
    assert bad.returncode == 2
    assert "'--lease-ttl' (env var: 'CONVEYOR_LEASE_TTL'): 'ten' is not a duration like 15s" in bad.stderr
    short = ctl("scheduler", "--lease-ttl", "500ms", env={"REDIS_URL": settings.redis_url})
    assert short.returncode == 2 and "the minimum is 1s" in short.stderr
    level = ctl("worker", "--log-level", "loud", env={"REDIS_URL": settings.redis_url})
    assert level.returncode == 2 and "'loud' is not one of" in level.stderr


# --- no Docker engine ------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", DEAD_ENGINES)
def test_ctl_run_without_an_engine_fails_before_starting_anything(tmp_path: Path, engine: str) -> None:
    path = write_dag(tmp_path, "name: one\nsteps:\n  s: {image: conveyor/busybox:local, command: [echo, hi]}\n")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(DOCKER_HOST=engine, TMPDIR=str(scratch))
    result = subprocess.run([sys.executable, "-m", "scheduler.cli.main", "run", str(path)], capture_output=True,
                            text=True, env=env, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"cannot reach the Docker engine at {engine} (DOCKER_HOST): "
        f"{'Connection refused' if engine.startswith('tcp') else 'No such file or directory'}. "
        "Is dockerd running, and is DOCKER_HOST right?"]
    assert list(scratch.iterdir()) == []  # no private redis-server folder was made
    assert _processes_mentioning(str(scratch)) == []


def test_ctl_run_without_an_engine_creates_nothing_in_redis(tmp_path: Path, settings, store) -> None:
    path = write_dag(tmp_path, "name: one\nsteps:\n  s: {image: conveyor/busybox:local, command: [echo, hi]}\n")
    result = ctl("run", str(path), env={"REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix,
                                        "DOCKER_HOST": DEAD_ENGINES[0]})
    assert result.returncode == 1 and "DOCKER_HOST" in result.stderr
    assert store.r.keys("*") == []


def test_ctl_worker_without_an_engine_is_one_line(settings) -> None:
    result = ctl("worker", "--burst", env={"REDIS_URL": settings.redis_url, "DOCKER_HOST": DEAD_ENGINES[0]})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"cannot reach the Docker engine at {DEAD_ENGINES[0]} (DOCKER_HOST): "
                                          "Connection refused. Is dockerd running, and is DOCKER_HOST right?"]


def test_ctl_run_fails_when_every_worker_has_died(tmp_path: Path, image: str,
                                                  docker_client: docker.DockerClient) -> None:
    path = write_dag(tmp_path, "name: orphaned\nsteps:\n  nap: {image: conveyor/busybox:local, "
                               "command: [sleep, '60']}\n")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(TMPDIR=str(scratch), CONVEYOR_PREFIX=TEST_PREFIX)
    process = subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", "run", str(path), "-o", "json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not docker_client.containers.list(filters={"label": "dev.conveyor.dag=orphaned"}):
            assert process.poll() is None and time.monotonic() < deadline, "the step never started"
            time.sleep(0.1)
        workers = [pid for pid in _children(process.pid) if b"redis-server" not in _cmdline(pid)]
        assert len(workers) == 2
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1, stderr
    assert "worker-0 exited (exit code -9)" in stderr and "worker-1 exited (exit code -9)" in stderr
    assert "all 2 workers exited before the run ended (exit codes -9, -9); run orphaned-" in stderr
    assert "was cancelled" in stderr and "Traceback" not in stderr and stdout == ""
    assert docker_client.containers.list(all=True, filters={"label": "dev.conveyor.dag=orphaned"}) == []
    assert list(scratch.iterdir()) == [] and _processes_mentioning(str(scratch)) == []


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_json_output_is_untouched_by_the_checks(tmp_path: Path, image: str) -> None:
    """The engine check costs nothing to a run that works: same JSON, exit 0."""
    path = write_dag(tmp_path, "name: fine\nsteps:\n  s: {image: conveyor/busybox:local, command: [echo, ok]}\n")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    result = subprocess.run([sys.executable, "-m", "scheduler.cli.main", "run", str(path), "-o", "json"],
                            capture_output=True, text=True, env={**env, "CONVEYOR_ATTEMPT_LEASE": "15s"},
                            timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["state"] == "success"
