"""Outputs (and fan-out) end to end on the Kubernetes runtime, against the kmock *emulator*.

Whole runs go through Redis, the engine and RQ as in production; an in-process RQ worker runs each
attempt with :class:`~runner.kubernetes.KubernetesRuntime`. The fake kubelet plays the step containers
from their rendered argv and env, and runs the outputs reader sidecar's script for real under the
host's busybox sh. What only a real cluster can prove: that the kubelet starts the native sidecar,
stops it with SIGTERM after the step's container exits and keeps its log until the Pod is deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from runner.context import WorkerContext, install
from runner.kubernetes import KubernetesRuntime
from scheduler.dispatch import Dispatcher
from scheduler.engine import Engine
from scheduler.model import QUEUES
from scheduler.service import submit_file
from scheduler.settings import Settings
from scheduler.store import RunStore
from tests.helpers import write_dag
from tests.kube_emulator import Emulator, Exec, FakeKubelet, Script

NAMESPACE = "data"


@pytest.fixture
def kube(settings: Settings) -> Iterator[FakeKubelet]:
    with Emulator() as emulator, FakeKubelet(emulator, NAMESPACE) as kubelet:
        context = WorkerContext(settings, name="kube-worker")
        context.__dict__["runtime"] = KubernetesRuntime(emulator.api_client(), NAMESPACE, poll_seconds=0.05)
        install(context)
        yield kubelet
        install(None)  # type: ignore[arg-type]


def drain(settings: Settings) -> None:
    """Run every queued attempt (and what each makes ready) in this process until the queues are empty."""
    connection = settings.connect(decode=False)
    queues = [Queue(q, connection=connection, serializer=JSONSerializer) for q in QUEUES]
    SimpleWorker(queues, connection=connection, serializer=JSONSerializer).work(burst=True)


def plays(run: Exec) -> Script:
    """The producer writes its outputs; every other step echoes its rendered argv and env value."""
    argv = list(run.argv)
    if run.env.get("CONVEYOR_OUTPUTS"):
        return Script(files={"text": b"a b $(c) {{ d }}\n", "list": b'["x", "y", "z"]'})
    return Script(output=(" ".join(argv[1:]) + "|" + run.env.get("GOT", "") + "\n").encode())


def test_outputs_through_command_env_and_when_on_kubernetes(tmp_path, store: RunStore, dispatcher: Dispatcher,
                                                            settings: Settings, kube: FakeKubelet) -> None:
    submit_file(store, write_dag(tmp_path, """
        name: data-kube
        defaults: {image: conveyor/busybox:local}
        steps:
          produce: {command: ["true"], outputs: [text, list]}
          use:
            command: [echo, "{{ steps.produce.outputs.text }}"]
            env: {GOT: "{{ steps.produce.outputs.list }}"}
            depends_on: [produce]
          never:
            command: [echo, never]
            depends_on: [produce]
            when: steps.produce.outputs.text == "other"
    """))
    kube.script = plays
    run_id = Engine(store, dispatcher).create_run("data-kube", {})
    drain(settings)
    assert store.run_record(run_id)["state"] == "success"
    steps = {s["name"]: s for s in store.step_records(run_id)}
    assert json.loads(steps["produce"]["attempts"][0]["outputs"]) == {"text": "a b $(c) {{ d }}",
                                                                      "list": '["x", "y", "z"]'}
    assert store.read_log(run_id, "use", 1) == b'a b $(c) {{ d }}|["x", "y", "z"]\n'
    assert steps["never"]["state"] == "skipped"
    pods = {p["metadata"]["annotations"]["dev.conveyor.step"]: p for p in kube.pods_seen}
    assert [c["name"] for c in pods["produce"]["spec"]["initContainers"]] == ["outputs"]
    assert "initContainers" not in pods["use"]["spec"]


def test_fan_out_on_kubernetes(tmp_path, store: RunStore, dispatcher: Dispatcher, settings: Settings,
                               kube: FakeKubelet) -> None:
    submit_file(store, write_dag(tmp_path, """
        name: data-kube-fanout
        defaults: {image: conveyor/busybox:local}
        steps:
          produce: {command: [list], outputs: [list]}
          each:
            command: [measure, "{{ item }}", "{{ index }}"]
            for_each: "{{ steps.produce.outputs.list }}"
            max_parallel: 2
            outputs: [size]
            depends_on: [produce]
          total: {command: [echo, "{{ steps.each.outputs.size }}"], depends_on: [each]}
          empty: {command: [echo, "{{ item }}"], for_each: []}
    """))

    def script(run: Exec) -> Script:
        if run.argv[0] == "list":
            return Script(files={"list": b'["x", "yy", "zzz"]\n'})
        if run.argv[0] == "measure":
            return Script(output=f"{run.argv[1]} {run.argv[2]}\n".encode(),
                          files={"size": str(len(run.argv[1])).encode()})
        return Script(output=(" ".join(run.argv[1:]) + "\n").encode())

    kube.script = script
    run_id = Engine(store, dispatcher).create_run("data-kube-fanout", {})
    drain(settings)
    assert store.run_record(run_id)["state"] == "success"
    steps = {s["name"]: s for s in store.step_records(run_id)}
    assert steps["empty"]["state"] == "skipped" and steps["each"]["instances"] == "3"
    assert [store.read_log(run_id, f"each[{i}]", 1) for i in range(3)] == [b"x 0\n", b"yy 1\n", b"zzz 2\n"]
    assert json.loads(store.read_log(run_id, "total", 1)) == ["1", "2", "3"]
    pods = [p["metadata"]["annotations"]["dev.conveyor.step"] for p in kube.pods_seen]
    assert sorted(pods) == ["each[0]", "each[1]", "each[2]", "produce", "total"]
