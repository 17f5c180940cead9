"""Security defaults: no host mounts unless allowed, secrets never stored and masked, limits, bounded params."""

from __future__ import annotations

import os
from pathlib import Path

import docker
import pytest

from scheduler.engine import Engine
from scheduler.errors import ParamError
from scheduler.service import submit_file
from tests.conftest import Workers, wait_for_run
from tests.helpers import write_dag

SECRET = "hunter2-very-secret"


def test_secrets_reach_the_container_but_never_the_store(tmp_path: Path, settings, store, dispatcher,
                                                         image: str) -> None:
    secret_file = tmp_path / "token"
    secret_file.write_text("from-a-file-0451\n")
    submit_file(store, write_dag(tmp_path, f"""
        name: secrets
        steps:
          use:
            image: conveyor/busybox:local
            command: [sh, -c, 'echo "token=$TOKEN file=$FROM_FILE"; echo "$TOKEN" | cut -c1-7']
            secrets:
              TOKEN: {{env: CONVEYOR_TEST_TOKEN}}
              FROM_FILE: {{file: {secret_file}}}
    """))
    pool = Workers(settings, tmp_path)
    os.environ["CONVEYOR_TEST_TOKEN"] = SECRET
    try:
        pool.start(1)
        run_id = Engine(store, dispatcher).create_run("secrets", {})
        assert wait_for_run(store, run_id)["state"] == "success"
    finally:
        os.environ.pop("CONVEYOR_TEST_TOKEN")
        pool.stop()
    log = store.read_log(run_id, "use", 1)
    assert log == b"token=*** file=***\nhunter2\n"  # masked; a part of it is not the secret
    everything = b"".join(store.r.dump(k) or b"" for k in store.r.keys("*"))
    assert SECRET.encode() not in everything and b"from-a-file-0451" not in everything


def test_a_missing_secret_fails_the_attempt_clearly(tmp_path: Path, store, dispatcher, workers: Workers) -> None:
    submit_file(store, write_dag(tmp_path, """
        name: nosecret
        steps:
          use: {image: conveyor/busybox:local, command: ["true"], secrets: {TOKEN: {env: CONVEYOR_NOT_SET_ANYWHERE}}}
    """))
    workers.start(1)
    run_id = Engine(store, dispatcher).create_run("nosecret", {})
    assert wait_for_run(store, run_id)["state"] == "failed"
    attempt = store.step_records(run_id)[0]["attempts"][0]
    assert attempt["reason"] == "secret_missing" and "CONVEYOR_NOT_SET_ANYWHERE" in attempt["error"]


def test_mounts_only_where_the_worker_allows(tmp_path: Path, settings, store, dispatcher, image: str) -> None:
    allowed = tmp_path / "shared"
    allowed.mkdir()
    (allowed / "data.txt").write_text("shared data\n")
    submit_file(store, write_dag(tmp_path, f"""
        name: mounts
        steps:
          ok: {{image: conveyor/busybox:local, command: [cat, /data/data.txt],
                mounts: [{{source: {allowed}, target: /data}}]}}
          sneaky: {{image: conveyor/busybox:local, command: [ls, /host],
                    mounts: [{{source: {allowed}/../../.., target: /host}}]}}
          socket: {{image: conveyor/busybox:local, command: [ls, /var/run/docker.sock],
                    mounts: [{{source: /var/run/docker.sock, target: /var/run/docker.sock}}]}}
    """))
    pool = Workers(settings, tmp_path)
    try:
        pool.start(1, "--allow-mount", str(allowed))
        run_id = Engine(store, dispatcher).create_run("mounts", {})
        wait_for_run(store, run_id)
    finally:
        pool.stop()
    steps = {s["name"]: s for s in store.step_records(run_id)}
    assert steps["ok"]["state"] == "success" and store.read_log(run_id, "ok", 1) == b"shared data\n"
    for name in ("sneaky", "socket"):
        attempt = steps[name]["attempts"][0]
        assert steps[name]["state"] == "failed" and attempt["reason"] == "mount_not_allowed", name


def test_containers_run_unprivileged_with_the_worker_default_limits(tmp_path: Path, settings, store, dispatcher,
                                                                     docker_client: docker.DockerClient,
                                                                     image: str) -> None:
    submit_file(store, write_dag(tmp_path, """
        name: limits
        steps:
          look: {image: conveyor/busybox:local, command: [sleep, "3"]}
    """))
    pool = Workers(settings, tmp_path)
    seen = {}
    try:
        pool.start(1, "--default-memory", "64m", "--default-cpus", "0.5")
        run_id = Engine(store, dispatcher).create_run("limits", {})
        import time

        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            for container in docker_client.containers.list(filters={"label": f"dev.conveyor.run={run_id}"}):
                seen = container.attrs["HostConfig"]
            time.sleep(0.1)
        wait_for_run(store, run_id)
    finally:
        pool.stop()
    assert seen["Memory"] == 64 * 1024 * 1024 and seen["NanoCpus"] == 500_000_000
    assert seen["Privileged"] is False and not seen.get("Binds") and not seen.get("Mounts")


def test_params_are_bounded(tmp_path: Path, store, dispatcher) -> None:
    submit_file(store, write_dag(tmp_path, """
        name: big
        params: {blob: {type: string}}
        steps:
          s: {image: conveyor/busybox:local, command: [echo, "{{ params.blob }}"]}
    """))
    with pytest.raises(ParamError, match="the limit is 65,536"):
        Engine(store, dispatcher).create_run("big", {"blob": "x" * 70_000})
    assert store.run_ids("big") == []
