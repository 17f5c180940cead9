"""Sensors: a step whose container is poked until its condition holds, holding no worker in between
(the attempt waits in Redis, state 'waiting'); past its timeout it fails with sensor_timeout."""

from __future__ import annotations

import json
import time
from datetime import datetime

from typer.testing import CliRunner

from scheduler.cli.main import app
from scheduler.dispatch import Dispatcher
from scheduler.engine import Engine
from scheduler.model import StepState
from scheduler.service import submit_file
from scheduler.store import RunStore
from tests.conftest import Workers, wait_for_run
from tests.helpers import new_run, spec_from, write_dag


def test_a_poke_that_is_not_ready_waits_in_redis_and_times_out(store: RunStore, dispatcher: Dispatcher) -> None:
    spec = spec_from("""
        name: data-sensor-unit
        steps:
          wait: {image: i, command: ["true"], sensor: {interval: 1s, timeout: 2s}}
    """)
    plan, [_] = new_run(store, spec)
    engine = Engine(store, dispatcher)
    assert engine.start(plan.run_id, "wait", 1, host="h", pid=1, worker="w", lease=30).status == "ok"
    first = time.time() - 0.9  # the next poke (in 1 s) is just within the 2 s timeout
    poked = engine.poke(plan.run_id, "wait", 1, interval=1.0, timeout=2.0, since=first, record={"exit_code": 100})
    assert poked.state == StepState.WAITING
    [again] = poked.ready
    assert (again.step, again.attempt, again.delay, again.tag) == ("wait", 1, 1.0, "poke-1")
    assert store.running_attempts() == set(), "no lease is held between pokes"
    [step] = store.step_records(plan.run_id)
    assert step["state"] == "waiting" and step["attempts"][0]["pokes"] == "1"
    # The same attempt starts again; a poke whose next one would fall past the timeout fails the step
    assert engine.start(plan.run_id, "wait", 1, host="h", pid=1, worker="w", lease=30).status == "ok"
    time.sleep(0.3)
    timed_out = engine.poke(plan.run_id, "wait", 1, interval=1.0, timeout=2.0, since=time.time(), record={})
    assert timed_out.state == StepState.FAILED
    [step] = store.step_records(plan.run_id)
    assert step["attempts"][0]["reason"] == "sensor_timeout" and "2.0s (2 pokes)" in step["attempts"][0]["error"]
    assert store.run_record(plan.run_id)["state"] == "failed"


def test_a_sensor_ready_on_its_third_poke_holds_no_worker(tmp_path, store: RunStore, dispatcher: Dispatcher,
                                                          workers: Workers) -> None:
    """One worker: another step runs while the sensor waits between pokes."""
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    submit_file(store, write_dag(tmp_path, f"""
        name: data-sensor
        defaults: {{image: conveyor/busybox:local}}
        steps:
          wait:
            command: [sh, -c, 'echo poke >> /shared/pokes; [ $(wc -l < /shared/pokes) -ge 3 ] || exit 100']
            mounts: [{{source: {folder}, target: /shared, read_only: false}}]
            sensor: {{interval: 2s, timeout: 1m}}
          other:
            command: [sh, -c, 'sleep 0.5']
            depends_on: [first]
          first: {{command: [sh, -c, 'sleep 1']}}
          late:
            command: [sh, -c, 'exit 100']
            sensor: {{interval: 1s, timeout: 2s}}
    """))
    workers.start(1, "--allow-mount", str(folder))
    run_id = Engine(store, dispatcher).create_run("data-sensor", {})
    assert wait_for_run(store, run_id, timeout=90)["state"] == "failed"
    steps = {s["name"]: s for s in store.step_records(run_id)}
    assert steps["wait"]["state"] == "success" and (folder / "pokes").read_text() == "poke\n" * 3
    [attempt] = steps["wait"]["attempts"]
    assert attempt["pokes"] == "2" and attempt["state"] == "success"
    events = [e for _, e in store.r.xrange(store.keys.events()) if e["run"] == run_id and e["step"] == "wait"]
    assert [e["state"] for e in events].count("waiting") == 2
    first_poke = min(datetime.fromisoformat(e["at"]) for e in events if e["state"] == "running")
    last_poke = max(datetime.fromisoformat(e["at"]) for e in events if e["state"] == "running")
    other = steps["other"]["attempts"][0]
    assert first_poke < datetime.fromisoformat(other["started_at"])
    assert datetime.fromisoformat(other["ended_at"]) < last_poke, "the only worker ran 'other' between pokes"
    late = steps["late"]["attempts"][-1]
    assert steps["late"]["state"] == "failed" and late["reason"] == "sensor_timeout"


def test_status_shows_a_waiting_sensor(store: RunStore, dispatcher: Dispatcher, settings) -> None:
    spec = spec_from("""
        name: data-sensor-status
        steps:
          wait: {image: i, command: ["true"], sensor: {interval: 1m}}
    """)
    plan, _ = new_run(store, spec)
    engine = Engine(store, dispatcher)
    engine.start(plan.run_id, "wait", 1, host="h", pid=1, worker="w", lease=30)
    engine.poke(plan.run_id, "wait", 1, interval=60.0, timeout=None, since=0.0, record={"exit_code": 100})
    env = {"REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    shown = CliRunner().invoke(app, ["status", plan.run_id, "-o", "json"], env=env)
    [step] = json.loads(shown.stdout)["steps"]
    assert step["state"] == "waiting"
    assert step["attempts"][0]["pokes"] == 1 and step["attempts"][0]["next_poke"] > plan.created_at.isoformat()
    table = CliRunner().invoke(app, ["status", plan.run_id], env=env)
    assert "sensor: 1 poke(s) not ready; next at" in table.stdout
    assert engine.cancel(plan.run_id).state == "cancelled", "a waiting sensor is cancelled at once"
