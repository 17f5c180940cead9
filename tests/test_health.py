"""``/healthz`` and ``/readyz`` on the metrics port: the registry with an injected clock, then real
``ctl scheduler`` and ``ctl worker`` processes against a redis-server this test stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.health import Health
from tests.conftest import free_port
from tests.redis_servers import RedisProcess

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(120)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_registry_ready_only_when_checks_pass_and_loops_turn() -> None:
    clock = FakeClock()
    health = Health(clock)
    ready, details = health.report()
    assert not ready and "starting" in details["loop"]["reason"]
    health.beat("scheduler", 30, "standby")
    assert health.report()[0]
    clock.now += 31
    ready, details = health.report()
    assert not ready and "has not turned for 31s" in details["loop:scheduler"]["reason"]
    health.beat("scheduler", 30, "leader")
    ready, details = health.report()
    assert ready and details["loop:scheduler"]["state"] == "leader"
    with health.busy("scheduler"):
        clock.now += 3600  # a long step: busy, not stuck
        assert health.report()[0]
    assert health.report()[0], "leaving busy counts as a turn"
    problem = {"now": "Redis does not answer: refused"}
    health.add_check("redis", lambda: problem["now"])
    ready, details = health.report()
    assert not ready and details["redis"] == {"ok": False, "reason": "Redis does not answer: refused"}
    problem["now"] = None
    assert health.report()[0]
    health.add_check("broken", lambda: 1 / 0)
    ready, details = health.report()
    assert not ready and "ZeroDivisionError" in details["broken"]["reason"]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisProcess]:
    process = RedisProcess(tmp_path / "redis", password="probe-secret")
    yield process
    if process.process.poll() is None:
        process.stop()


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen]]:
    processes: list[subprocess.Popen] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_ctl(started: list[subprocess.Popen], tmp_path: Path, url: str, *args: str) -> int:
    port = free_port()
    log = (tmp_path / f"{args[0]}-{len(started)}.log").open("wb")
    env = {**os.environ, "REDIS_URL": url, "CONVEYOR_PREFIX": "health", "CONVEYOR_SIGNING_KEY": "1" * 64,
           "PYTHONPATH": str(ROOT)}
    started.append(subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", *args, "--metrics-port", str(port)],
                                    env=env, stdout=log, stderr=subprocess.STDOUT))
    log.close()
    return port


def readyz(port: int) -> dict | None:
    status, body = get(port, "/readyz")
    return {"status": status, **json.loads(body)} if body else None


def test_scheduler_probes_leader_standby_and_redis_down(server: RedisProcess, tmp_path: Path,
                                                        started: list[subprocess.Popen]) -> None:
    url = server.url(password="probe-secret")
    first = start_ctl(started, tmp_path, url, "scheduler", "--lease-ttl", "3")
    wait_until(lambda: get(first, "/healthz") == (200, "ok\n"), 20, "/healthz of the first scheduler")
    leader = wait_until(lambda: (r := readyz(first)) and r["status"] == 200 and r, 20, "the first scheduler ready")
    assert leader["ready"] is True and leader["checks"]["redis"] == {"ok": True}
    assert leader["checks"]["loop:scheduler"]["state"] == "leader"
    second = start_ctl(started, tmp_path, url, "scheduler", "--lease-ttl", "3")
    standby = wait_until(lambda: (r := readyz(second)) and r["status"] == 200 and r, 20, "the standby ready")
    assert standby["checks"]["loop:scheduler"]["state"] == "standby"
    # The metrics are still served on the same port.
    status, metrics = get(first, "/metrics")
    assert status == 200 and "conveyor_redis_up 1.0" in metrics

    server.stop()
    down = wait_until(lambda: (r := readyz(first)) and r["status"] == 503 and r, 20, "/readyz to turn unready")
    assert down["ready"] is False and "Redis does not answer" in down["checks"]["redis"]["reason"]
    assert get(first, "/healthz") == (200, "ok\n"), "alive while Redis is away: no restart loop"
    assert all(p.poll() is None for p in started), "the schedulers keep running without Redis"


def test_worker_probes(server: RedisProcess, tmp_path: Path, started: list[subprocess.Popen],
                       docker_client) -> None:
    port = start_ctl(started, tmp_path, server.url(password="probe-secret"), "worker")
    ready = wait_until(lambda: (r := readyz(port)) and r["status"] == 200 and r, 30, "the worker ready")
    assert ready["checks"]["loop:worker"]["state"] == "idle"
    assert get(port, "/healthz") == (200, "ok\n")
