"""Redis as the trust boundary, from the deployment side (issue 11): ``rediss://`` end to end, the
least-privilege ACL user of docs/deploy.md, and the start-up warning about an open Redis.

Real parts only: redis-server processes (TLS with a CA made by openssl here, ACL users), real
``ctl worker`` / ``ctl scheduler`` processes and real step containers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from scheduler.security import exposure, is_loopback, warn_if_exposed
from scheduler.settings import Settings
from scheduler.store import RunStore
from tests.redis_servers import RedisProcess, make_certificates

ROOT = Path(__file__).resolve().parent.parent
SIGNING_KEY = "0" * 64  # the workers and the CLI share it (the signing half of issue 11)

pytestmark = pytest.mark.timeout(180)

DAG = """\
name: {name}
{schedule}defaults:
  image: conveyor/busybox:local
  timeout: 1m
steps:
  hello: {{command: [echo, "hello over {name}"]}}
  after: {{command: [sh, -c, "echo after"], depends_on: [hello]}}
"""


class Processes:
    """``ctl`` daemons started for one test, stopped (SIGTERM, then SIGKILL) after it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, url: str, *args: str, prefix: str = "conveyor") -> subprocess.Popen:
        log = self.folder / f"{args[0]}-{len(self.started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", *args], env=ctl_env(url, prefix),
                                       stdout=out, stderr=subprocess.STDOUT)
        self.started.append((process, log))
        return process

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')}" for _, log in self.started)

    def stop(self) -> None:
        for process, _ in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in self.started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def processes(tmp_path: Path, image: str) -> Iterator[Processes]:
    running = Processes(tmp_path)
    yield running
    running.stop()


def ctl_env(url: str, prefix: str = "conveyor") -> dict[str, str]:
    env = {**os.environ, "REDIS_URL": url, "CONVEYOR_PREFIX": prefix, "CONVEYOR_SIGNING_KEY": SIGNING_KEY,
           "PYTHONPATH": str(ROOT)}
    env.pop("CONVEYOR_DEBUG", None)
    return env


def ctl(url: str, *args: str, prefix: str = "conveyor", timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "scheduler.cli.main", *args], env=ctl_env(url, prefix),
                          capture_output=True, text=True, timeout=timeout)


def submit_and_trigger(url: str, tmp_path: Path, name: str, processes: Processes, schedule: str = "") -> dict:
    dag = tmp_path / f"{name}.yaml"
    dag.write_text(DAG.format(name=name, schedule=schedule))
    done = ctl(url, "submit", str(dag))
    assert done.returncode == 0, done.stderr + processes.output()
    done = ctl(url, "trigger", name, "--wait", "-o", "json")
    assert done.returncode == 0, done.stdout + done.stderr + processes.output()
    return json.loads(done.stdout)


# --- rediss:// -------------------------------------------------------------------------------


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    certificates = make_certificates(tmp_path / "tls")
    server = RedisProcess(tmp_path / "redis-tls", tls=certificates, password="tls-secret")
    yield server
    server.stop()


def test_store_round_trip_over_rediss(tls_redis: RedisProcess) -> None:
    url = tls_redis.url(password="tls-secret")
    assert url.startswith("rediss://") and "ssl_ca_certs=" in url
    store = RunStore.connect(Settings(url, prefix="tls"))
    store.r.set("tls:probe", "through TLS")
    assert store.r.get("tls:probe") == "through TLS"
    assert Settings(url).safe_url.startswith("rediss://:***@127.0.0.1:")
    # The server speaks TLS only, and the certificate is checked against the CA named in the URL.
    plain = redis.Redis.from_url(f"redis://:tls-secret@127.0.0.1:{tls_redis.port}/0", socket_timeout=2)
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    unverified = redis.Redis.from_url(f"rediss://:tls-secret@127.0.0.1:{tls_redis.port}/0", socket_timeout=2)
    with pytest.raises(redis.ConnectionError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        unverified.ping()


def test_worker_and_ctl_run_a_dag_over_rediss(tls_redis: RedisProcess, tmp_path: Path,
                                              processes: Processes) -> None:
    url = tls_redis.url(password="tls-secret")
    processes.start(url, "worker", "--queues", "high,default,low")
    result = submit_and_trigger(url, tmp_path, "over-tls", processes)
    assert result["state"] == "success", result
    assert [s["state"] for s in result["steps"]] == ["success", "success"]
    logs = ctl(url, "logs", result["run_id"], "hello")
    assert "hello over over-tls" in logs.stdout, logs.stdout + logs.stderr
    # (The server has no plain port: every one of those connections was TLS.)


# --- the least-privilege ACL user ------------------------------------------------------------


def documented_acl_line() -> str:
    """The ACL line of docs/deploy.md (between its markers): the test uses exactly what users copy."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    block = re.search(r"<!-- acl-line -->\s*```[a-z]*\n(.*?)\n```", text, re.S)
    assert block, "docs/deploy.md has no <!-- acl-line --> block"
    (line,) = [ln for ln in block.group(1).splitlines() if ln.startswith("user ")]
    return line


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[tuple[RedisProcess, str]]:
    # DEBUG and MODULE enabled on the server, so that the ACL is what stops them.
    server = RedisProcess(tmp_path / "redis-acl", "--enable-debug-command", "yes", "--enable-module-command", "yes",
                          password="admin-secret")
    line = documented_acl_line().replace("PASSWORD", "conveyor-secret")
    name, *rules = line.split()[1:]
    server.admin.execute_command("ACL", "SETUSER", name, "reset", *rules)
    server.admin.execute_command("ACL", "LOG", "RESET")
    yield server, name
    server.stop()


DENIED = [
    ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("CONFIG", "SET", "dir", "/tmp"), ("DEBUG", "SLEEP", "0"),
    ("MODULE", "LIST"), ("MODULE", "LOAD", "/tmp/x.so"), ("SCRIPT", "KILL"), ("SCRIPT", "FLUSH"),
    ("FUNCTION", "FLUSH"), ("SHUTDOWN", "NOSAVE"), ("KEYS", "*"), ("MONITOR",), ("ACL", "LIST"),
    ("ACL", "SETUSER", "evil", "on", ">x", "+@all"), ("CLIENT", "KILL", "ID", "1"), ("CLIENT", "LIST"),
    ("REPLICAOF", "127.0.0.1", "1"), ("SAVE",), ("BGSAVE",), ("SLOWLOG", "GET"), ("SET", "elsewhere:key", "1"),
]


@pytest.mark.parametrize("command", DENIED, ids=lambda c: "-".join(c[:2]).lower())
def test_acl_user_is_denied(acl_redis: tuple[RedisProcess, str], command: tuple[str, ...]) -> None:
    server, user = acl_redis
    client = redis.Redis.from_url(server.url(user=user, password="conveyor-secret"))
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.execute_command(*command)
    assert server.admin.ping()  # nothing was flushed, reconfigured or shut down


def test_acl_user_runs_conveyor(acl_redis: tuple[RedisProcess, str], tmp_path: Path, processes: Processes) -> None:
    """A worker and a scheduler as the ACL user; a triggered run and a scheduled run both succeed,
    and Redis logged no denial (ACL LOG) while they worked."""
    server, user = acl_redis
    url = server.url(user=user, password="conveyor-secret")
    processes.start(url, "worker", "--queues", "high,default,low")
    processes.start(url, "scheduler", "--lease-ttl", "3")
    triggered = submit_and_trigger(url, tmp_path, "acl-probe", processes,
                                   schedule='schedule: {cron: "* * * * * */2"}\n')
    assert triggered["state"] == "success", triggered

    def scheduled_success() -> bool:
        runs = json.loads(ctl(url, "runs", "acl-probe", "-o", "json").stdout or "[]")
        return any(r["trigger"] == "schedule" and r["state"] == "success" for r in runs)

    deadline = time.monotonic() + 60
    while not scheduled_success():
        assert time.monotonic() < deadline, "no scheduled run succeeded\n" + processes.output()
        time.sleep(0.5)
    denials = server.admin.execute_command("ACL", "LOG")
    assert denials == [], f"{denials}\n{processes.output()}"
    output = processes.output()
    assert "leading (fencing token" in output
    assert "NOPERM" not in output and "no permissions" not in output.lower(), output


# --- the start-up warning --------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "open_"), [
    ({"host": "10.0.0.7", "port": 6379}, True),
    ({"host": "redis.example.internal", "port": 6380}, True),
    ({"host": "10.0.0.7", "port": 6379, "password": "x"}, False),
    ({"host": "127.0.0.1", "port": 6379}, False),
    ({"host": "127.3.0.1", "port": 6379}, False),
    ({"host": "localhost", "port": 6379}, False),
    ({"host": "::1", "port": 6379}, False),
    ({"path": "/run/redis.sock"}, False),
])
def test_exposure_rules(kwargs: dict, open_: bool) -> None:
    warning = exposure(kwargs)
    assert (warning is not None) == open_
    if open_:
        assert kwargs["host"] in warning and "no password" in warning


def test_warning_logged_for_a_url(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="conveyor.security")
    assert warn_if_exposed(redis.Redis.from_url("redis://10.1.2.3:6379/0")) is not None
    assert "10.1.2.3:6379 has no password" in caplog.text
    caplog.clear()
    assert warn_if_exposed(redis.Redis.from_url("rediss://:pw@10.1.2.3:6379/0")) is None
    assert warn_if_exposed(redis.Redis.from_url("unix:///tmp/r.sock")) is None
    assert caplog.text == ""
    assert is_loopback("[::1]") and not is_loopback("redis")
