"""The Docker engine restarted mid-step (real ``ctl worker`` processes against a private ``dockerd`` in a
network namespace of its own, see ``tests/private_engine.py``; the shared engine is never touched).

With ``live-restore`` the container survives the restart and its worker follows it to its end: one
container, one attempt. Without it the engine's shutdown kills the container: the attempt ends
``engine_restarted`` and the step is retried.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from scheduler.dispatch import Dispatcher
from scheduler.store import RunStore
from tests.conftest import wait_for_run
from tests.private_engine import PrivateEngine
from tests.test_adoption import NamedWorkers, attempts, create, lease_env, wait_for  # noqa: F401

DAG = """
    name: adopt-test
    steps:
      work: {image: conveyor/busybox:local, command: [sh, -c, "echo before; sleep 6; echo after"],
             retries: 1, retry_backoff: {initial: 1s}}
"""


@pytest.fixture
def engine(image: str) -> Iterator[PrivateEngine]:
    private = PrivateEngine(image)
    try:
        yield private
    finally:
        private.close()


@pytest.fixture
def pool(settings, tmp_path: Path, engine: PrivateEngine, lease_env: None,  # noqa: F811
         monkeypatch: pytest.MonkeyPatch) -> Iterator[NamedWorkers]:
    monkeypatch.setenv("DOCKER_HOST", engine.url)  # the workers' engine is the private one
    workers = NamedWorkers(settings, tmp_path)
    yield workers
    workers.stop()


def restart_mid_step(engine: PrivateEngine, client: docker.DockerClient, store: RunStore, run_id: str, *,
                     live_restore: bool) -> str:
    """Wait until the step's container runs, restart the engine; returns the container's id."""
    running = {"label": f"dev.conveyor.run={run_id}", "status": "running"}
    wait_for(lambda: client.api.containers(filters=running), what="the step's container")
    time.sleep(1)  # past its first line
    [container] = client.api.containers(filters=running)
    engine.stop()
    time.sleep(1.5)  # the engine stays away for a while: the worker must wait for it, not give up
    engine.start(live_restore=live_restore)
    return container["Id"]


def test_a_container_surviving_an_engine_restart_is_followed_to_its_end(
        tmp_path: Path, store: RunStore, dispatcher: Dispatcher, engine: PrivateEngine, pool: NamedWorkers) -> None:
    client = engine.start(live_restore=True)
    engine.load_image()
    pool.named("adopt2-a", "adopt2-b")
    run_id = create(store, dispatcher, tmp_path, DAG)
    container_id = restart_mid_step(engine, client, store, run_id, live_restore=True)
    assert wait_for_run(store, run_id, timeout=60)["state"] == "success", pool.output() + engine.tail()
    [only] = attempts(store, run_id, "work")  # one attempt, the same container: nothing ran twice
    assert only["state"] == "success" and only["exit_code"] == "0" and only["container_id"] == container_id
    assert not only.get("adopted_by"), "its own worker kept the lease while the engine was away"
    assert store.read_log(run_id, "work", 1) == b"before\nafter\n"
    assert "lost the Docker engine" in pool.output()
    wait_for(lambda: not client.api.containers(all=True, filters={"label": f"dev.conveyor.run={run_id}"}),
             timeout=10, what="the container's removal")


def test_a_container_killed_by_an_engine_restart_is_retried_as_engine_restarted(
        tmp_path: Path, store: RunStore, dispatcher: Dispatcher, engine: PrivateEngine, pool: NamedWorkers) -> None:
    client = engine.start(live_restore=False)
    engine.load_image()
    pool.named("adopt2-a")
    run_id = create(store, dispatcher, tmp_path, DAG)
    container_id = restart_mid_step(engine, client, store, run_id, live_restore=False)
    assert wait_for_run(store, run_id, timeout=60)["state"] == "success", pool.output() + engine.tail()
    first, second = attempts(store, run_id, "work")
    assert first["state"] == "failed" and first["reason"] == "engine_restarted", first
    assert first["container_id"] == container_id and "restarted" in first["error"]
    assert second["state"] == "success" and second["container_id"] != container_id
    assert store.read_log(run_id, "work", 2) == b"before\nafter\n"
