"""Real parts for the tests: a redis-server per session (a clean db per test), the Docker engine,
the locally built busybox image, and worker processes started with the real ``ctl worker``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import redis

from scheduler.dispatch import Dispatcher
from scheduler.settings import Settings, signing_key_from_env
from scheduler.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "conveyor/busybox:local"
# Key prefix and container label of every test; engineers running suites side by side on one engine
# set CONVEYOR_TEST_PREFIX so that one suite's cleanup never removes the other's containers.
TEST_PREFIX = os.environ.get("CONVEYOR_TEST_PREFIX", "test")
# Plans are signed and verified in every test, as in every real deployment (runs, workers, schedulers).
os.environ.setdefault("CONVEYOR_SIGNING_KEY", "conveyor-test-signing-key")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing: run ./dev setup (apt-get install redis-server)"
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    yield url
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def settings(redis_server: str) -> Settings:
    redis.Redis.from_url(redis_server).flushdb()
    return Settings(redis_server, prefix=TEST_PREFIX, signing_key=signing_key_from_env())


@pytest.fixture
def store(settings: Settings) -> RunStore:
    return RunStore.connect(settings)


@pytest.fixture
def dispatcher(settings: Settings) -> Dispatcher:
    return Dispatcher(settings.connect(decode=False), settings.prefix)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    """The real engine. A missing engine fails the test run; it is never a skip."""
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"no Docker engine answers ({exc}); run ./dev setup, which starts dockerd", pytrace=False)
    return client


@pytest.fixture(scope="session")
def image(docker_client: docker.DockerClient) -> str:
    subprocess.run(["bash", str(ROOT / "scripts/build-images.sh")], check=True, stdout=subprocess.DEVNULL)
    docker_client.images.get(IMAGE)
    return IMAGE


@pytest.fixture(autouse=True)
def _no_leftover_containers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every container a test's steps create is removed after it, whatever happened."""
    yield
    if "docker_client" in request.fixturenames or "workers" in request.fixturenames:
        client = request.getfixturevalue("docker_client")
        for container in client.containers.list(all=True, filters={"label": f"dev.conveyor.prefix={TEST_PREFIX}"}):
            with contextlib.suppress(docker.errors.NotFound):  # its worker removed it meanwhile
                container.remove(force=True)


class Workers:
    """``ctl worker`` processes against the test Redis."""

    def __init__(self, settings: Settings, tmp_path: Path):
        self.settings = settings
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen] = []
        self.logs: list = []

    def env(self) -> dict[str, str]:
        return {**os.environ, "REDIS_URL": self.settings.redis_url, "CONVEYOR_PREFIX": self.settings.prefix}

    def start(self, count: int = 1, *args: str) -> list[subprocess.Popen]:
        started = []
        for _ in range(count):
            log = open(self.tmp_path / f"worker-{len(self.processes)}.log", "wb")  # noqa: SIM115
            process = subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", "worker", *args],
                                       env=self.env(), stdout=log, stderr=subprocess.STDOUT)
            self.processes.append(process)
            self.logs.append(log)
            started.append(process)
        return started

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.tmp_path.glob("worker-*.log")))


@pytest.fixture
def workers(settings: Settings, tmp_path: Path, image: str) -> Iterator[Workers]:
    pool = Workers(settings, tmp_path)
    yield pool
    pool.stop()


def wait_for_run(store: RunStore, run_id: str, timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.run_record(run_id)
        if record["state"] in {"success", "failed", "cancelled"}:
            return record
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end within {timeout}s: {store.run_record(run_id)['state']}")
