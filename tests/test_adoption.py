"""A dead worker costs no second run: its container is adopted by another worker (real Docker, real
``ctl worker`` processes, real SIGKILLs)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import docker
import pytest
from prometheus_client import CollectorRegistry
from rich.console import Console

from runner.adoption import Adopter
from runner.containers import labels_for
from runner.context import WorkerContext
from scheduler.cli.views import status_object, steps_table
from scheduler.dispatch import Dispatcher
from scheduler.engine import Engine
from scheduler.metrics import StreamMetrics
from scheduler.reaper import Reaper, Sighting
from scheduler.results import Fence, Lease, StartStatus
from scheduler.service import submit_file
from scheduler.settings import Settings
from scheduler.store import RunStore, member
from tests.conftest import Workers, wait_for_run
from tests.helpers import new_run, spec_from, write_dag

LEASE = 2.0
LINES = 100_000
NUMBERED = "".join(f"{i}\n" for i in range(1, LINES + 1)).encode()


@pytest.fixture
def lease_env() -> Iterator[None]:
    """Short leases for the worker processes this test starts (they read the environment)."""
    saved = {k: os.environ.get(k) for k in ("CONVEYOR_ATTEMPT_LEASE", "CONVEYOR_SHUTDOWN_GRACE")}
    os.environ["CONVEYOR_ATTEMPT_LEASE"] = str(LEASE)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def attempts(store: RunStore, run_id: str, step: str) -> list[dict]:
    return {s["name"]: s for s in store.step_records(run_id)}[step]["attempts"]


def wait_for(predicate, timeout: float = 30, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.05)


def gone(docker_client: docker.DockerClient, run_id: str) -> None:
    """The run's containers are removed (right after their results are recorded)."""
    # The low-level list: the high-level one inspects each container and fails on one removed meanwhile.
    wait_for(lambda: not docker_client.api.containers(all=True, filters={"label": f"dev.conveyor.run={run_id}"}),
             timeout=10, what="the containers' removal")


def start_and_kill_its_worker(pool: Workers, store: RunStore, run_id: str, step: str, *, after: float = 0.5) -> str:
    """Wait until a worker runs the step, SIGKILL that worker; returns its name."""
    wait_for(lambda: (attempts(store, run_id, step) or [{}])[-1].get("state") == "running", what="the step's start")
    wait_for(lambda: (attempts(store, run_id, step)[-1].get("log_bytes") or pool.containers(run_id)),
             what="its container's start")
    time.sleep(after)
    name = attempts(store, run_id, step)[-1]["worker"]
    victim = pool.by_name[name]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    return name


class NamedWorkers(Workers):
    """``ctl worker --name NAME`` processes, found again by name."""

    def __init__(self, settings: Settings, tmp_path: Path):
        super().__init__(settings, tmp_path)
        self.by_name: dict = {}

    def containers(self, run_id: str) -> list:
        return docker.from_env().api.containers(filters={"label": f"dev.conveyor.run={run_id}"})

    def named(self, *names: str, args: tuple[str, ...] = ()) -> None:
        for name in names:
            [process] = self.start(1, "--name", name, *args)
            self.by_name[name] = process


@pytest.fixture
def pool(settings: Settings, tmp_path: Path, image: str, lease_env: None) -> Iterator[NamedWorkers]:
    workers = NamedWorkers(settings, tmp_path)
    yield workers
    workers.stop()


def create(store: RunStore, dispatcher: Dispatcher, tmp_path: Path, text: str) -> str:
    """A run of the DAG ``adopt-test`` written in ``text``."""
    submit_file(store, write_dag(tmp_path, text))
    return Engine(store, dispatcher).create_run("adopt-test", {})


def test_a_running_container_is_adopted_and_its_log_continues_byte_for_byte(
        tmp_path: Path, store: RunStore, dispatcher: Dispatcher, pool: NamedWorkers,
        docker_client: docker.DockerClient) -> None:
    # 100,000 numbered lines in three bursts, the worker killed in the first pause: part of the output was
    # stored by the dead worker, the rest must come from the adopter, every byte exactly once.
    run_id = create(store, dispatcher, tmp_path, """
        name: adopt-test
        steps:
          count: {image: conveyor/busybox:local, retries: 2,
                  command: [sh, -c, "seq 1 30000; sleep 1.5; seq 30001 70000; sleep 2; seq 70001 100000"]}
    """)
    pool.named("first", "second")
    victim = start_and_kill_its_worker(pool, store, run_id, "count", after=0.8)
    killed_at = time.time()
    stored_by_the_dead = len(store.read_log(run_id, "count", 1))
    assert docker_client.containers.list(filters={"label": f"dev.conveyor.run={run_id}"}), "it outlives its worker"
    assert wait_for_run(store, run_id, timeout=60)["state"] == "success", pool.output()
    [only] = attempts(store, run_id, "count")
    survivor = "second" if victim == "first" else "first"
    assert only["state"] == "success" and only["worker"] == victim and only["adopted_by"] == survivor
    assert datetime.fromisoformat(only["adopted_at"]).timestamp() - killed_at < LEASE + 2.5 + 1
    log = store.read_log(run_id, "count", 1)
    assert 0 < stored_by_the_dead < len(NUMBERED)  # both workers stored part of it
    assert log == NUMBERED  # no byte lost, none twice
    assert int(only["log_bytes"]) == len(NUMBERED)
    assert only["exit_code"] == "0"
    gone(docker_client, run_id)


def test_an_exited_container_not_yet_removed_is_adopted_with_its_exit_code(
        tmp_path: Path, store: RunStore, dispatcher: Dispatcher, pool: NamedWorkers,
        docker_client: docker.DockerClient) -> None:
    run_id = create(store, dispatcher, tmp_path, """
        name: adopt-test
        steps:
          short: {image: conveyor/busybox:local, retries: 0, command: [sh, -c, "echo partial; sleep 1; exit 3"]}
    """)
    pool.named("alone")
    start_and_kill_its_worker(pool, store, run_id, "short", after=0.2)
    wait_for(lambda: docker_client.containers.list(
        all=True, filters={"label": f"dev.conveyor.run={run_id}", "status": "exited"}), what="the container's exit")
    pool.named("later")
    assert wait_for_run(store, run_id, timeout=60)["state"] == "failed"
    [only] = attempts(store, run_id, "short")
    assert only["adopted_by"] == "later"
    assert only["exit_code"] == "3" and only["reason"] == "exit_code"  # its own end, not "lost"
    assert store.read_log(run_id, "short", 1) == b"partial\n"
    gone(docker_client, run_id)


def test_an_adopted_container_s_declared_outputs_are_collected(
        tmp_path: Path, store: RunStore, dispatcher: Dispatcher, pool: NamedWorkers,
        docker_client: docker.DockerClient) -> None:
    run_id = create(store, dispatcher, tmp_path, """
        name: adopt-test
        steps:
          produce: {image: conveyor/busybox:local, retries: 0, outputs: [answer],
                    command: [sh, -c, "sleep 2; echo 42 > $CONVEYOR_OUTPUTS/answer"]}
    """)
    pool.named("first", "second")
    start_and_kill_its_worker(pool, store, run_id, "produce", after=0.3)
    assert wait_for_run(store, run_id, timeout=60)["state"] == "success", pool.output()
    [only] = attempts(store, run_id, "produce")
    assert only["adopted_by"] and json.loads(only["outputs"]) == {"answer": "42"}
    gone(docker_client, run_id)


def test_an_adopted_container_s_checkpoint_is_saved(
        tmp_path: Path, store: RunStore, dispatcher: Dispatcher, pool: NamedWorkers,
        docker_client: docker.DockerClient) -> None:
    """Written after its worker died, the checkpoint is saved by the adopter (while it runs and at exit)."""
    run_id = create(store, dispatcher, tmp_path, """
        name: adopt-test
        steps:
          resume: {image: conveyor/busybox:local, retries: 0,
                   command: [sh, -c, "sleep 2; echo step-7 > $CONVEYOR_CHECKPOINT; sleep 0.3"]}
    """)
    pool.named("first", "second")
    start_and_kill_its_worker(pool, store, run_id, "resume", after=0.3)
    assert wait_for_run(store, run_id, timeout=60)["state"] == "success", pool.output()
    [only] = attempts(store, run_id, "resume")
    assert only["adopted_by"]
    assert store.checkpoint(run_id, "resume") == b"step-7\n"
    gone(docker_client, run_id)


def test_cancel_kills_an_adopted_container(tmp_path: Path, store: RunStore, dispatcher: Dispatcher,
                                           pool: NamedWorkers, docker_client: docker.DockerClient) -> None:
    run_id = create(store, dispatcher, tmp_path, """
        name: adopt-test
        steps:
          long: {image: conveyor/busybox:local, command: [sleep, "60"]}
    """)
    pool.named("first", "second")
    start_and_kill_its_worker(pool, store, run_id, "long")
    wait_for(lambda: attempts(store, run_id, "long")[0].get("adopted_by"), what="the adoption")
    Engine(store, dispatcher).cancel(run_id)
    assert wait_for_run(store, run_id, timeout=30)["state"] == "cancelled"
    [only] = attempts(store, run_id, "long")
    assert only["state"] == "cancelled" and only["reason"] == "cancelled"
    gone(docker_client, run_id)


def test_an_adopted_attempt_times_out_counting_from_its_real_start(
        tmp_path: Path, store: RunStore, dispatcher: Dispatcher, pool: NamedWorkers) -> None:
    run_id = create(store, dispatcher, tmp_path, """
        name: adopt-test
        steps:
          slow: {image: conveyor/busybox:local, command: [sleep, "60"], timeout: 8s, retries: 0}
    """)
    pool.named("first", "second")
    start_and_kill_its_worker(pool, store, run_id, "slow")
    wait_for(lambda: attempts(store, run_id, "slow")[0].get("adopted_by"), what="the adoption")
    assert wait_for_run(store, run_id, timeout=40)["state"] == "failed"
    [only] = attempts(store, run_id, "slow")
    assert only["reason"] == "timeout"
    ran = (datetime.fromisoformat(only["ended_at"]) - datetime.fromisoformat(only["started_at"])).total_seconds()
    since_adoption = (datetime.fromisoformat(only["ended_at"])
                      - datetime.fromisoformat(only["adopted_at"])).total_seconds()
    # 8 s from the real start (plus the container's start and a wait slice), not 8 s from the adoption.
    assert 8 <= ran < 8 + 2.5, ran
    assert since_adoption < 8


def test_shutdown_hands_the_running_container_to_another_worker(
        tmp_path: Path, store: RunStore, dispatcher: Dispatcher, pool: NamedWorkers,
        docker_client: docker.DockerClient) -> None:
    os.environ["CONVEYOR_SHUTDOWN_GRACE"] = "1"
    run_id = create(store, dispatcher, tmp_path, """
        name: adopt-test
        steps:
          work: {image: conveyor/busybox:local, command: [sh, -c, "echo one; sleep 5; echo two"], retries: 0}
    """)
    pool.named("first", "second")
    wait_for(lambda: (attempts(store, run_id, "work") or [{}])[-1].get("state") == "running", what="the start")
    name = attempts(store, run_id, "work")[0]["worker"]
    pool.by_name[name].send_signal(signal.SIGTERM)
    assert pool.by_name[name].wait(timeout=20) == 0  # it leaves after its grace, the container still running
    assert docker_client.containers.list(filters={"label": f"dev.conveyor.run={run_id}"})
    assert wait_for_run(store, run_id, timeout=40)["state"] == "success", pool.output()
    [only] = attempts(store, run_id, "work")  # not restarted: the same attempt, the same container
    assert only["handed_over_by"] == name and only["adopted_by"] not in ("", None, name)
    assert store.read_log(run_id, "work", 1) == b"one\ntwo\n"


# --- the fences, in process ---------------------------------------------------------------------------


def test_one_adopter_wins_and_the_old_holder_is_fenced_off(store: RunStore) -> None:
    plan, _ = new_run(store, spec_from("""
        name: adopt-fence
        steps:
          a: {image: conveyor/busybox:local, command: [true]}
    """))
    rid = plan.run_id
    entry = member(rid, "a", 1)
    assert store.start_attempt(rid, "a", 1, host="h", pid=1, worker="dead", lease=0.1).status is StartStatus.OK
    assert store.append_log(rid, "a", 1, b"abc", holder="dead") == 3
    assert store.adopt(entry, adopter="w1", lease=5).status is Fence.ALIVE  # not expired yet
    time.sleep(0.2)
    first = store.adopt(entry, adopter="w1", lease=5)
    second = store.adopt(entry, adopter="w2", lease=5)
    assert first.status is StartStatus.OK and first.log_bytes == 3 and first.plan is not None
    assert second.status is Fence.ALIVE  # the first adopter renewed the lease: only one wins
    assert store.renew_lease(rid, "a", 1, 5, "dead") is Lease.TAKEN
    assert store.append_log(rid, "a", 1, b"late", holder="dead") == -1
    assert store.finish_attempt(rid, "a", 1, "success", {}, holder="dead").state is Fence.STALE
    assert store.renew_lease(rid, "a", 1, 5, "w1") is Lease.HELD
    assert store.finish_attempt(rid, "a", 1, "success", {"exit_code": 0}, holder="w1").changed
    assert store.read_log(rid, "a", 1) == b"abc"
    fields = store.attempt_fields(rid, "a", 1, "adopted_by", "worker", "adoptions")
    assert fields == ["w1", "dead", "1"]
    # Shown by ctl status (JSON and table) and counted in conveyor_attempts_adopted_total, from the events.
    status = status_object(store, rid)
    assert status["steps"][0]["attempts"][0]["adopted_by"] == "w1"
    console = Console(width=200, record=True)
    console.print(steps_table(status))
    assert "1 (adopted by w1)" in console.export_text()
    registry = CollectorRegistry()
    metrics = StreamMetrics(registry, lambda run_id: "adopt-fence")
    for _, fields_ in store.read_events("0-0"):
        metrics.handle(fields_)
    assert registry.get_sample_value("conveyor_attempts_adopted_total", {"dag": "adopt-fence"}) == 1


def test_the_reaper_declares_lost_only_what_no_worker_can_adopt(
        settings: Settings, store: RunStore, dispatcher: Dispatcher, image: str,
        docker_client: docker.DockerClient) -> None:
    context = WorkerContext(settings, name="sweeper")
    engine = Engine(store, dispatcher)
    adopter = Adopter(context)
    mine = adopter.runtime.engine_id()
    plan, _ = new_run(store, spec_from("""
        name: adopt-sweep
        steps:
          here: {image: conveyor/busybox:local, command: [sleep, "30"], retries: 0}
          gone: {image: conveyor/busybox:local, command: [true], retries: 0}
          elsewhere: {image: conveyor/busybox:local, command: [true], retries: 0}
    """))
    rid = plan.run_id
    for step, engine_id in (("here", mine), ("gone", mine), ("elsewhere", "docker:another-host")):
        assert store.start_attempt(rid, step, 1, host="h", pid=1, worker="dead", lease=0.1,
                                   engine_id=engine_id).status is StartStatus.OK
    container = docker_client.containers.run(
        image, ["sleep", "30"], detach=True,
        labels=labels_for(store.step_plan(rid, "here"), 1, settings.prefix, store.store_id))
    time.sleep(0.2)
    assert adopter.consider(member(rid, "gone", 1)) is Sighting.GONE
    assert adopter.consider(member(rid, "elsewhere", 1)) is Sighting.UNSEEN
    reaper = Reaper(engine, context.runtime, adopter=adopter, adopt_grace=3600)
    assert reaper.lost_attempts() == 1  # 'gone' at once; 'elsewhere' waits for the grace; 'here' is adopted
    assert reaper.adopted == 1
    steps = {s["name"]: s for s in store.step_records(rid)}
    assert steps["gone"]["state"] == "failed" and steps["gone"]["attempts"][0]["reason"] == "lost"
    assert steps["elsewhere"]["state"] == "running"
    assert steps["here"]["attempts"][0]["adopted_by"] == "sweeper"
    assert Reaper(engine, adopt_grace=0).lost_attempts() == 1  # past the grace, anyone declares 'elsewhere' lost
    container.kill()
    wait_for(lambda: store.step_records(rid)[0]["state"] == "failed", what="the adopted attempt's end")
    here = store.step_records(rid)[0]["attempts"][0]
    assert here["exit_code"] == "137" and here["reason"] == "exit_code"
    gone(docker_client, rid)


def test_an_adopter_refuses_a_plan_changed_since_it_was_signed(
        settings: Settings, store: RunStore, image: str, docker_client: docker.DockerClient) -> None:
    """As a starting worker does: a plan whose signature does not verify is not followed (its timeout,
    secrets, outputs are someone else's now); the container is removed and nothing of it collected."""
    assert settings.signing_key, "the suite signs and verifies plans"
    context = WorkerContext(settings, name="adopter")
    plan, _ = new_run(store, spec_from("""
        name: adopt-signed
        steps:
          honest: {image: conveyor/busybox:local, command: [sh, -c, "echo honest; sleep 30"], retries: 0}
          changed: {image: conveyor/busybox:local, command: [sh, -c, "echo changed; sleep 30"], retries: 0}
    """))
    rid = plan.run_id
    containers = {}
    for step in ("honest", "changed"):
        assert store.start_attempt(rid, step, 1, host="h", pid=1, worker="dead", lease=0.1,
                                   engine_id=Adopter(context).runtime.engine_id()).status is StartStatus.OK
        step_plan = store.step_plan(rid, step)
        containers[step] = docker_client.containers.run(
            image, list(step_plan.argv), detach=True, labels=labels_for(step_plan, 1, settings.prefix,
                                                                        store.store_id))
    # A Redis writer without the key rewrites the stored plan (a longer timeout, a secret to read...).
    key = store.keys.plan(store.r.hget(store.keys.step(rid, "changed"), "plan"))
    stored = json.loads(store.r.get(key))
    stored["timeout"] = 86400
    store.r.set(key, json.dumps(stored))
    time.sleep(0.3)
    adopter = Adopter(context)
    assert adopter.consider(member(rid, "changed", 1)) is Sighting.BUSY  # ended here, not followed
    assert adopter.consider(member(rid, "honest", 1)) is Sighting.ADOPTED
    [refused] = attempts(store, rid, "changed")
    assert refused["state"] == "failed" and refused["reason"] == "plan_signature"
    assert "does not verify" in refused["error"] and "nothing of it collected" in refused["error"]
    assert refused["adopted_by"] == "adopter"  # it took the lease, so that no one else follows it either
    assert store.read_log(rid, "changed", 1) == b""  # nothing collected
    wait_for(lambda: not docker_client.api.containers(all=True, filters={"id": containers["changed"].id}),
             what="the refused container's removal")
    containers["honest"].kill()
    wait_for(lambda: attempts(store, rid, "honest")[0]["state"] == "failed", what="the honest attempt's end")
    assert store.read_log(rid, "honest", 1) == b"honest\n"
    gone(docker_client, rid)


# --- Kubernetes: against the kmock emulator and its fake kubelet (an emulator, not a cluster) ----------


def test_a_pod_outliving_its_worker_is_adopted_on_kubernetes(settings: Settings, store: RunStore) -> None:
    """Relies on tests/kube_emulator.py: the fake kubelet keeps a Pod running whatever its worker does,
    and serves its log from the start on every read, as the API server does."""
    from runner.kube_adoption import KubernetesAdoption
    from runner.kubernetes import KubernetesRuntime, pod_manifest
    from tests.kube_emulator import Emulator, FakeKubelet, Script

    namespace = "adopt"
    with Emulator() as emulator, FakeKubelet(emulator, namespace) as kubelet:
        kubelet.script = lambda run: Script(output=NUMBERED, seconds=1.5, exit_code=0)
        runtime = KubernetesRuntime(emulator.api_client(), namespace, poll_seconds=0.05)
        context = WorkerContext(settings, name="adopter")
        context.__dict__["runtime"] = runtime  # the worker's runtime, as CONVEYOR_RUNTIME=kubernetes would make it
        ran_on = KubernetesAdoption(runtime).engine_id()
        plan, _ = new_run(store, spec_from("""
            name: adopt-pods
            steps:
              pod: {image: conveyor/busybox:local, command: [sh, -c, "seq 1 100000; sleep 1"], retries: 0}
              vanished: {image: conveyor/busybox:local, command: [true], retries: 0}
        """))
        rid = plan.run_id
        for step in ("pod", "vanished"):
            assert store.start_attempt(rid, step, 1, host="h", pid=1, worker="dead", lease=0.1,
                                       engine_id=ran_on).status is StartStatus.OK
        step_plan = store.step_plan(rid, "pod")
        runtime.core.create_namespaced_pod(namespace, pod_manifest(
            step_plan, labels_for(step_plan, 1, settings.prefix, store.store_id), namespace))
        stored_by_the_dead = 123_457  # mid-line: the dead worker's last write
        store.append_log(rid, "pod", 1, NUMBERED[:stored_by_the_dead], holder="dead", raw=stored_by_the_dead)
        time.sleep(0.2)
        adopter = Adopter(context)
        assert adopter.consider(member(rid, "vanished", 1)) is Sighting.GONE  # same namespace, no Pod
        assert adopter.consider(member(rid, "pod", 1)) is Sighting.ADOPTED
        assert adopter.consider(member(rid, "pod", 1)) is Sighting.BUSY  # this process follows it now
        wait_for(lambda: store.step_records(rid)[0]["state"] == "success", what="the adopted Pod's end")
        [only] = store.step_records(rid)[0]["attempts"]
        assert only["adopted_by"] == "adopter" and only["exit_code"] == "0"
        assert store.read_log(rid, "pod", 1) == NUMBERED
        assert [p for p in runtime.core.list_namespaced_pod(namespace).items
                if p.metadata.annotations.get("dev.conveyor.run") == rid] == []
        runtime.api_client.close()
