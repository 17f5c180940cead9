"""Reruns, rerun rules and step cancellation, end to end with containers."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import docker

from scheduler.engine import Engine
from scheduler.service import submit_file
from tests.conftest import Workers, wait_for_run
from tests.helpers import write_dag
from tests.test_cli import ctl

CHAIN = """
name: chain
defaults: {image: IMAGE}
steps:
  stage: {command: [echo, staged], rerun_before_downstream: true}
  a: {command: [echo, a]}
  b: {command: [sh, -c, "B_COMMAND"], depends_on: [a]}
  c: {command: [echo, c], depends_on: [b, stage]}
"""


def dag(b_command: str = "exit 1", image: str = "conveyor/busybox:local") -> str:
    return CHAIN.replace("B_COMMAND", b_command).replace("IMAGE", image)


def steps(store, run_id: str) -> dict[str, dict]:
    return {s["name"]: s for s in store.step_records(run_id)}


def test_rerun_failed_with_latest_then_a_step_and_its_rule(tmp_path: Path, settings, store, dispatcher,
                                                           workers: Workers) -> None:
    env = {"REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    path = write_dag(tmp_path, dag())
    submit_file(store, path)
    workers.start(2)
    run_id = Engine(store, dispatcher).create_run("chain", {})
    assert wait_for_run(store, run_id)["state"] == "failed"
    assert {n: s["state"] for n, s in steps(store, run_id).items()} == {
        "stage": "success", "a": "success", "b": "failed", "c": "upstream_failed"}
    none_left = ctl("rerun", "nope", env=env)
    assert none_left.returncode == 1 and "no run 'nope'" in none_left.stderr
    path.write_text(dag("echo fixed"))
    submit_file(store, path)
    done = ctl("rerun", run_id, "--latest", "--wait", "-o", "json", env=env)
    assert done.returncode == 0, done.stderr
    assert "switching to DAG version 2 (was 1)" in done.stderr
    after = steps(store, run_id)
    assert [a["state"] for a in after["b"]["attempts"]] == ["failed", "success"]
    assert [a["number"] for a in after["c"]["attempts"]] == ["1"]  # c never ran before: attempt 1
    assert len(after["a"]["attempts"]) == 1
    assert len(after["stage"]["attempts"]) == 2  # c reran, and stage reruns whenever a step after it does
    assert store.read_log(run_id, "b", 2) == b"fixed\n"
    # --step c --no-downstream: c and, by the rule, stage (which c reads) run again, stage first.
    again = ctl("rerun", run_id, "--step", "c", "--no-downstream", "--wait", env=env)
    assert again.returncode == 0, again.stderr
    after = steps(store, run_id)
    assert len(after["stage"]["attempts"]) == 3 and len(after["c"]["attempts"]) == 2
    assert len(after["a"]["attempts"]) == 1 and len(after["b"]["attempts"]) == 2
    stage_end = datetime.fromisoformat(after["stage"]["attempts"][2]["ended_at"])
    assert datetime.fromisoformat(after["c"]["attempts"][1]["started_at"]) >= stage_end
    # --all reruns everything; the run keeps all its history.
    assert ctl("rerun", run_id, "--all", "--wait", env=env).returncode == 0
    assert {n: len(s["attempts"]) for n, s in steps(store, run_id).items()} == {"stage": 4, "a": 2, "b": 3, "c": 3}


def test_a_rerun_runs_the_image_it_ran_before(tmp_path: Path, settings, store, dispatcher, workers: Workers,
                                              docker_client: docker.DockerClient, image: str) -> None:
    env = {"REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    tag = "conveyor/pin-test:1"
    original = docker_client.images.get(image)
    original.tag(tag)
    build = tmp_path / "v2"
    build.mkdir()
    (build / "Dockerfile").write_text(f"FROM {image}\nRUN echo v2 > /version\n")
    try:
        submit_file(store, write_dag(tmp_path, dag(b_command="cat /version || echo v1; exit 1", image=tag)))
        workers.start(1)
        run_id = Engine(store, dispatcher).create_run("chain", {})
        wait_for_run(store, run_id)
        docker_client.images.build(path=str(build), tag=tag)  # the tag moves on
        assert ctl("rerun", run_id, "--wait", env=env).returncode == 1  # b still fails (same image)
        b = steps(store, run_id)["b"]["attempts"]
        assert b[1]["image_id"] == b[0]["image_id"] == original.id
        second = store.read_log(run_id, "b", 2)  # stdout and stderr interleave in either order
        assert b"can't open '/version'" in second and b"v1\n" in second
        latest = ctl("rerun", run_id, "--latest", "--wait", env=env)
        assert latest.returncode == 1 and store.read_log(run_id, "b", 3) == b"v2\n"
    finally:
        docker_client.images.remove(tag, force=True)


def test_cancel_one_running_step(tmp_path: Path, settings, store, dispatcher, workers: Workers) -> None:
    env = {"REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    submit_file(store, write_dag(tmp_path, """
        name: two
        steps:
          slow: {image: conveyor/busybox:local, command: [sleep, "60"]}
          quick: {image: conveyor/busybox:local, command: ["true"]}
          after: {image: conveyor/busybox:local, command: ["true"], depends_on: [slow]}
    """))
    workers.start(2)
    run_id = Engine(store, dispatcher).create_run("two", {})
    deadline = time.monotonic() + 30
    while steps(store, run_id)["slow"]["state"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    result = ctl("cancel", run_id, "--step", "slow", env=env)
    assert result.returncode == 0 and "stopping" in result.stdout
    record = wait_for_run(store, run_id, timeout=30)
    final = steps(store, run_id)
    assert final["slow"]["state"] == "cancelled" and final["quick"]["state"] == "success"
    assert final["after"]["state"] == "skipped"
    assert record["state"] == "success"
    assert json.loads(ctl("status", run_id, "-o", "json", env=env).stdout)["state"] == "success"
