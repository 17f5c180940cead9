"""Redis is the trust boundary: a process that can write to Redis, but holds no signing key, cannot make
a real ``ctl worker`` run anything. Each case below is what such a writer can do; none executes, each is
recorded as refused, and the worker keeps serving real attempts afterwards."""

from __future__ import annotations

import json
import os
import pickle
import zlib
from pathlib import Path

import pytest
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from scheduler.engine import Engine
from scheduler.errors import ConveyorError
from scheduler.service import submit_file, submit_source
from tests.conftest import Workers, wait_for_run
from tests.helpers import write_dag


class Touch:
    """Unpickling this runs ``touch PATH``: what a pickle payload in an RQ job would do."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def raw_job(connection, job_id: str, data: bytes, queue: str = "high") -> None:
    """Write an RQ job hash and queue entry by hand, as a hostile Redis writer would."""
    connection.hset(Job.key_for(job_id), mapping={"data": zlib.compress(data), "origin": queue,
                                                  "created_at": "2026-11-28T00:00:00.000000Z", "status": "queued"})
    connection.rpush(f"rq:queue:{queue}", job_id)
    connection.sadd("rq:queues", f"rq:queue:{queue}")


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


def ok_dag(tmp_path: Path, store) -> None:
    submit_file(store, write_dag(tmp_path, """
        name: hostileok
        steps:
          fine: {image: conveyor/busybox:local, command: [echo, fine]}
    """))


def assert_serves_real_attempts(store, dispatcher, run_name: str = "hostileok") -> None:
    run_id = Engine(store, dispatcher).create_run(run_name, {})
    assert wait_for_run(store, run_id, timeout=60)["state"] == "success"


def refused_reasons(connection) -> dict[str, str]:
    reasons = {}
    for queue in ("high", "default", "low"):
        registry = FailedJobRegistry(queue, connection=connection)
        for job_id in registry.get_job_ids():
            raw = connection.hget(Job.key_for(job_id), "exc_info") or b""
            reasons[job_id] = zlib.decompress(raw).decode() if raw else ""
    return reasons


def test_hostile_jobs_are_refused_and_nothing_runs(tmp_path, store, dispatcher, workers: Workers, canary) -> None:
    connection = dispatcher.connection
    prefix = store.prefix
    ok_dag(tmp_path, store)
    # 1. A pickled payload whose unpickling would run a command.
    raw_job(connection, "evil-pickle", pickle.dumps(("os.system", None, (f"touch {canary}",), {})))
    raw_job(connection, "evil-reduce", pickle.dumps(Touch(str(canary))))
    # 2. Valid JSON naming another function (os.system, or any importable one).
    queue = Queue("high", connection=connection, serializer=JSONSerializer)
    queue.enqueue_call("os.system", args=(f"touch {canary}",), job_id="evil-system")
    queue.enqueue_call("subprocess.run", args=([f"touch {canary}"],), kwargs={"shell": True}, job_id="evil-run")
    # 3. Conveyor's function with arguments that are not plain values, or for another prefix.
    queue.enqueue_call("runner.job.run_attempt", args=({"x": 1}, "s", 1, prefix), job_id="evil-args")
    queue.enqueue_call("runner.job.run_attempt", args=("r", "s", 1, "other"), job_id="r-s-1")
    # 4. Malformed and oversized jobs.
    raw_job(connection, "evil-garbage", b"\x00\x01 not json at all")
    raw_job(connection, "evil-huge", json.dumps(["runner.job.run_attempt", None, ["x" * 100_000], {}]).encode())
    connection.rpush("rq:queue:high", "evil-missing-hash")
    workers.start(1)
    assert_serves_real_attempts(store, dispatcher)
    reasons = refused_reasons(connection)
    for job_id in ("evil-pickle", "evil-reduce", "evil-system", "evil-run", "evil-args", "r-s-1",
                   "evil-garbage", "evil-huge"):
        assert job_id in reasons, (job_id, reasons, workers.output()[-3000:])
        assert "refused" in reasons[job_id]
    assert "os.system" in reasons["evil-system"] and "bytes" in reasons["evil-huge"]
    assert not canary.exists()
    assert store.jobs_refused() >= 8
    assert "refused job" in workers.output()
    assert workers.processes[0].poll() is None  # still serving


TAMPER = """
name: hostiletamper
steps:
  first: {image: conveyor/busybox:local, command: [sh, -c, "sleep 1"]}
  victim: {image: conveyor/busybox:local, command: [echo, honest], env: {A: "1"}, depends_on: [first]}
"""


@pytest.mark.parametrize("change", ["argv", "image", "env", "mounts", "unsigned", "garbage"])
def test_a_tampered_plan_never_runs(tmp_path, store, dispatcher, workers: Workers, canary, change: str) -> None:
    """The plan of a step that has not started is rewritten in Redis: the worker refuses it before it
    creates any container (reason plan_signature)."""
    submit_file(store, write_dag(tmp_path, TAMPER))
    run_id = Engine(store, dispatcher).create_run("hostiletamper", {})
    key = store.keys.step(run_id, "victim")
    stored = store.keys.plan(store.r.hget(key, "plan"))  # the plan itself, stored once by content
    plan = json.loads(store.r.get(stored))
    if change == "argv":
        plan["argv"] = ["sh", "-c", f"touch {canary}"]
    elif change == "image":
        plan["image"] = "conveyor/busybox:other"
    elif change == "env":
        plan["env"] = {"A": "2"}
    elif change == "mounts":
        plan["mounts"] = [{"source": "/", "target": "/host", "read_only": False}]
    if change == "unsigned":
        store.r.hset(key, "plan_sig", "")
    elif change == "garbage":
        store.r.set(stored, "{not a plan")
    else:
        store.r.set(stored, json.dumps(plan))
    workers.start(1)
    record = wait_for_run(store, run_id, timeout=60)
    assert record["state"] == "failed"
    victim = next(s for s in store.step_records(run_id) if s["name"] == "victim")
    attempt = victim["attempts"][0]
    assert attempt["reason"] == "plan_signature", attempt
    assert not attempt.get("container_id")
    assert not canary.exists()
    assert_serves_real_attempts(store, dispatcher, "hostiletamper") if change == "argv" else None


def test_a_dag_version_changed_in_redis_is_never_planned(store, dispatcher) -> None:
    """The scheduler signs the plans it makes: it plans only from DAG versions a key holder submitted, so
    a Redis writer cannot have it sign a DAG of their own (a changed source, an unsigned version)."""
    source = b"name: hostiledag\nsteps:\n  only: {image: conveyor/busybox:local, command: [echo, honest]}\n"
    submit_source(store, source, "hostiledag.yaml")
    engine = Engine(store, dispatcher)
    key = store.keys.dag_version("hostiledag", 1)
    record = json.loads(store.r.get(key))
    record["source"] = record["source"].replace("echo, honest", "sh, -c, 'touch /tmp/owned'")
    store.r.set(key, json.dumps(record))
    with pytest.raises(ConveyorError, match="not signed with this deployment's key"):
        engine.create_run("hostiledag", {})
    assert store.run_ids("hostiledag") == []
    # The key holder's submit of the same file puts its own text back, signed, as that same version.
    assert submit_source(store, source, "hostiledag.yaml").version == 1
    run_id = engine.create_run("hostiledag", {})
    assert store.step_plan(run_id, "only").argv == ("echo", "honest")
    # A version stored without a signature (before a key was set) is refused the same way, then re-signed.
    record = json.loads(store.r.get(key))
    store.r.set(key, json.dumps({**record, "source_sig": ""}))
    with pytest.raises(ConveyorError, match="not signed"):
        engine.create_run("hostiledag", {})
    submit_source(store, source, "hostiledag.yaml")
    assert engine.create_run("hostiledag", {})


def test_a_rerun_with_latest_refuses_params_changed_in_redis(store, dispatcher) -> None:
    """``ctl rerun --latest`` plans the run again from its params: only from those it was given."""
    from scheduler.service import plan_rerun

    submit_source(store, b"name: hostileparams\nparams:\n  who: {default: world}\nsteps:\n"
                         b"  only: {image: conveyor/busybox:local, command: [echo, '{{ params.who }}']}\n", "p.yaml")
    run_id = Engine(store, dispatcher).create_run("hostileparams", {"who": "moon"})
    store.start_attempt(run_id, "only", 1, host="h", pid=1, worker="w")
    store.finish_attempt(run_id, "only", 1, "failed", {"exit_code": 1})
    assert plan_rerun(store, run_id, latest=True).plans["only"].argv == ("echo", "moon")
    store.r.hset(store.keys.run(run_id), "params", json.dumps({"who": "$(touch /tmp/owned)"}))
    with pytest.raises(ConveyorError, match="params do not verify"):
        plan_rerun(store, run_id, latest=True)
