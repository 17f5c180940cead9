"""A real ``ctl server`` process for the API and browser tests, against the tests' Redis and prefix."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest
import redis

from scheduler.settings import Settings, signing_key_from_env
from tests.conftest import free_port

VIEWER_TOKEN = "viewer-token-0123456789abcdef"
OPERATOR_TOKEN = "operator-token-0123456789abcdef"


class Server:
    def __init__(self, settings: Settings, tmp_path: Path, *, tokens: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / f"server-{self.port}.log"
        self._clients: dict[str | None, httpx.Client] = {}
        args = [sys.executable, "-m", "scheduler.cli.main", "server", "--port", str(self.port)]
        if tokens:
            path = tmp_path / "tokens"
            path.write_text(f"# the team's tokens\nviewer {VIEWER_TOKEN}\noperator {OPERATOR_TOKEN}\n")
            args += ["--tokens-file", str(path)]
        env = {**os.environ, "REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
        env.pop("CONVEYOR_TOKENS_FILE", None)
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"ctl server exited: {self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"ctl server did not become ready: {self.output()}")

    def client(self, token: str | None = OPERATOR_TOKEN) -> httpx.Client:
        """A client sending ``token`` as a bearer token (none: anonymous); closed by :meth:`stop`."""
        if token not in self._clients:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            self._clients[token] = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        return self._clients[token]

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def wait_for_state(client: httpx.Client, run_id: str, states: set[str], timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get(f"/api/v1/runs/{run_id}").json()
        if data["state"] in states:
            return data
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not reach {states}: {data['state']}")


PREFIX = "srvtest"  # its own prefix: other test sessions on a shared engine remove containers labelled 'test'


@pytest.fixture(name="settings")
def own_settings(redis_server: str) -> Iterator[Settings]:
    """The conftest fixture's clean db, under this module's own prefix; its containers removed afterwards."""
    redis.Redis.from_url(redis_server).flushdb()
    yield Settings(redis_server, prefix=PREFIX, signing_key=signing_key_from_env())  # as the server has it
    client = docker.from_env()
    for container in client.containers.list(all=True, filters={"label": f"dev.conveyor.prefix={PREFIX}"}):
        with contextlib.suppress(docker.errors.NotFound):  # its worker removed it meanwhile
            container.remove(force=True)
    client.close()
