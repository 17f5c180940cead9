"""Outputs between steps: declared, written to $CONVEYOR_OUTPUTS, collected at success, read downstream
in command, env and when:, shown by ctl status and ctl outputs; reruns read the recorded values."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from runner.outputs import Found, OutputFailure, judge, output_cap, parse_dump
from scheduler import outputs as late
from scheduler.cli.main import app
from scheduler.dispatch import Dispatcher
from scheduler.engine import Engine
from scheduler.errors import SpecError
from scheduler.service import plan_rerun, submit_file
from scheduler.store import RunStore
from tests.conftest import Workers, wait_for_run
from tests.helpers import spec_from, write_dag

HOSTILE = "$(touch /pwned) `id` {{ run_id }} {{ steps.a.outputs.x }} 'q' \"d\""

PRODUCER = """
    name: data-outputs
    defaults: {image: conveyor/busybox:local}
    steps:
      produce:
        command: [sh, -c, 'printf "%s" "$VALUE" > $CONVEYOR_OUTPUTS/text; echo go > $CONVEYOR_OUTPUTS/flag']
        env: {VALUE: "{{ params.value }}"}
        outputs: [text, flag]
      argv:
        command: [echo, "got {{ steps.produce.outputs.text }}"]
        depends_on: [produce]
      env:
        command: [sh, -c, 'printf "%s|" "$GOT"']
        env: {GOT: "{{ steps.produce.outputs.text }}"}
        depends_on: [argv]
      when_yes:
        command: ["true"]
        depends_on: [produce]
        when: steps.produce.outputs.flag == "go"
      when_no:
        command: ["true"]
        depends_on: [produce]
        when: steps.produce.outputs.flag == "stop"
    params: {value: {type: string}}
"""


def steps_of(store: RunStore, run_id: str) -> dict[str, dict]:
    return {s["name"]: s for s in store.step_records(run_id)}


# --- validation -------------------------------------------------------------------------------------


def test_a_reference_must_name_an_upstream_steps_declared_output() -> None:
    text = """
        name: refs
        defaults: {image: conveyor/busybox:local}
        steps:
          a: {command: ["true"], outputs: [x]}
          b: {command: [echo, "{{ steps.a.outputs.y }}"], depends_on: [a]}
          c: {command: [echo, "{{ steps.d.outputs.x }}"]}
          d: {command: ["true"], outputs: [x]}
          e: {command: ["true"], depends_on: [b], env: {V: "{{ steps.a.outputs.x }}"}, when: steps.c.outputs.x == "1"}
    """
    with pytest.raises(SpecError) as caught:
        spec_from(text)
    lines = str(caught.value).splitlines()
    assert any("steps.b.command[1]" in line and "declares no output 'y'; its outputs: x" in line for line in lines)
    assert any("steps.c.command[1]" in line and "step 'd' is not upstream of 'c'" in line for line in lines)
    assert any("steps.e.when" in line and "step 'c' is not upstream" in line for line in lines)
    assert not any("steps.e.env" in line for line in lines), "a transitive upstream's output is readable"


def test_the_plan_keeps_output_templates_for_the_worker_and_renders_them_in_one_pass() -> None:
    from datetime import UTC, datetime

    from scheduler.plan import plan_run

    spec = spec_from("""
        name: late
        params: {p: {type: string}}
        steps:
          a: {image: i, command: ["true"], outputs: [x]}
          b:
            image: i
            command: [echo, "{{ params.p }}/{{ steps.a.outputs.x }}", "{{ run_id }}"]
            env: {V: "{{ steps.a.outputs.x }}", W: "{{ params.p }}"}
            depends_on: [a]
    """)
    plan = plan_run(spec, version=1, params={"p": "{{ steps.a.outputs.x }}"}, now=datetime.now(UTC), run_id="r1")
    b = plan.steps["b"]
    assert b.deferred == {"argv.1": "{{ params.p }}/{{ steps.a.outputs.x }}", "env.V": "{{ steps.a.outputs.x }}"}
    assert b.argv[2] == "r1" and b.env["W"] == "{{ steps.a.outputs.x }}"  # a param value is data
    rendered = late.render(b, {"a": {"x": HOSTILE}})
    assert rendered.argv == ("echo", "{{ steps.a.outputs.x }}/" + HOSTILE, "r1")
    assert rendered.env == {"V": HOSTILE, "W": "{{ steps.a.outputs.x }}"}
    with pytest.raises(late.OutputUnavailable, match="step 'a' has no output 'x'"):
        late.render(b, {"a": {}})


def test_judging_collected_outputs() -> None:
    assert judge(["a", "b"], {"a": Found(3, b"x y\n"), "b": Found(0, b"")}, 10) == {"a": "x y", "b": ""}
    for found, reason in [({"a": Found(None)}, "output_missing"), ({"a": Found(11)}, "output_too_large"),
                          ({"a": Found(2, b"\xff\xfe")}, "output_invalid"), ({"a": Found(0, None, False)},
                                                                              "output_invalid")]:
        with pytest.raises(OutputFailure) as caught:
            judge(["a"], found, 10)
        assert caught.value.reason == reason
    assert output_cap({"CONVEYOR_OUTPUT_CAP": "64k"}) == 65536
    assert output_cap({}) == 1024 * 1024


def test_the_reader_dump_runs_under_busybox_sh(tmp_path) -> None:
    """The Kubernetes reader sidecar's script, run for real by busybox sh and stopped with SIGTERM."""
    import shutil
    import signal
    import subprocess
    import time

    from runner.outputs import READER_SCRIPT

    busybox = shutil.which("busybox")
    assert busybox, "busybox-static is missing (apt-get install busybox-static)"
    (tmp_path / "a").write_bytes(b"line one\n\x00binary\n")
    (tmp_path / "big").write_bytes(b"x" * 50)
    (tmp_path / "dir").mkdir()
    process = subprocess.Popen([busybox, "sh", "-c", READER_SCRIPT, "reader", "20", "a", "big", "dir", "gone"],
                               env={"CONVEYOR_OUTPUTS": str(tmp_path), "PATH": "/usr/bin:/bin"},
                               stdout=subprocess.PIPE)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=10)
    assert process.returncode == 0
    found = parse_dump(out.decode())
    assert found == {"a": Found(17, b"line one\n\x00binary\n"), "big": Found(50), "dir": Found(0, None, False),
                     "gone": Found(None)}
    assert parse_dump(out.decode()[:-25]) is None  # cut short: not trusted


# --- end to end, Docker ---------------------------------------------------------------------------


def test_outputs_reach_command_env_and_when_verbatim(tmp_path, store: RunStore, dispatcher: Dispatcher,
                                                     workers: Workers) -> None:
    submit_file(store, write_dag(tmp_path, PRODUCER))
    workers.start(2)
    engine = Engine(store, dispatcher)
    run_id = engine.create_run("data-outputs", {"value": HOSTILE})
    assert wait_for_run(store, run_id)["state"] == "success"
    steps = steps_of(store, run_id)
    assert {n: s["state"] for n, s in steps.items()} == {
        "produce": "success", "argv": "success", "env": "success", "when_yes": "success", "when_no": "skipped"}
    produced = steps["produce"]["attempts"][0]
    assert json.loads(produced["outputs"]) == {"text": HOSTILE, "flag": "go"}
    assert store.read_log(run_id, "argv", 1) == f"got {HOSTILE}\n".encode()
    assert store.read_log(run_id, "env", 1) == f"{HOSTILE}|".encode()
    recorded = steps["argv"]["attempts"][0]
    assert json.loads(recorded["argv"]) == ["echo", f"got {HOSTILE}"]  # what it ran with, for reproducibility
    assert store.step_plan(run_id, "argv").argv[1] == "got {{ steps.produce.outputs.text }}"  # kept as written

    cli = CliRunner()
    env = {"REDIS_URL": store_url(store), "CONVEYOR_PREFIX": store.prefix}
    shown = cli.invoke(app, ["status", run_id, "-o", "json"], env=env)
    assert shown.exit_code == 0, shown.output
    status = {s["name"]: s for s in json.loads(shown.stdout)["steps"]}
    assert status["produce"]["attempts"][0]["outputs"] == {"text": HOSTILE, "flag": "go"}
    assert status["when_no"]["attempts"] == []
    listed = cli.invoke(app, ["outputs", run_id, "produce", "-o", "json"], env=env)
    assert listed.exit_code == 0 and json.loads(listed.stdout) == {"text": HOSTILE, "flag": "go"}
    missing = cli.invoke(app, ["outputs", run_id, "produce", "--attempt", "2"], env=env)
    assert missing.exit_code == 1 and "has no attempt 2" in str(missing.exception)


def store_url(store: RunStore) -> str:
    kwargs = store.r.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def test_missing_and_oversized_outputs_fail_the_attempt(tmp_path, store, dispatcher, workers, monkeypatch) -> None:
    submit_file(store, write_dag(tmp_path, """
        name: data-bad-outputs
        defaults: {image: conveyor/busybox:local}
        steps:
          silent: {command: ["true"], outputs: [x]}
          chatty: {command: [sh, -c, 'head -c 2000 /dev/zero > $CONVEYOR_OUTPUTS/x'], outputs: [x]}
          fits: {command: [sh, -c, 'head -c 1000 /dev/zero | tr "\\0" a > $CONVEYOR_OUTPUTS/x'], outputs: [x]}
    """))
    monkeypatch.setenv("CONVEYOR_OUTPUT_CAP", "1k")
    workers.start(2)
    run_id = Engine(store, dispatcher).create_run("data-bad-outputs", {})
    assert wait_for_run(store, run_id)["state"] == "failed"
    steps = steps_of(store, run_id)
    assert steps["silent"]["attempts"][0]["reason"] == "output_missing"
    assert "did not write $CONVEYOR_OUTPUTS/x" in steps["silent"]["attempts"][0]["error"]
    assert steps["chatty"]["attempts"][0]["reason"] == "output_too_large"
    assert steps["chatty"]["attempts"][0]["exit_code"] == "0"
    assert steps["fits"]["state"] == "success"
    assert json.loads(steps["fits"]["attempts"][0]["outputs"]) == {"x": "a" * 1000}


def test_a_rerun_reads_the_upstreams_latest_successful_outputs(tmp_path, store, dispatcher, workers) -> None:
    submit_file(store, write_dag(tmp_path, """
        name: data-rerun
        defaults: {image: conveyor/busybox:local}
        steps:
          make: {command: [sh, -c, 'date +%s%N > $CONVEYOR_OUTPUTS/stamp'], outputs: [stamp]}
          use: {command: [echo, "{{ steps.make.outputs.stamp }}"], depends_on: [make]}
    """))
    workers.start(1)
    engine = Engine(store, dispatcher)
    run_id = engine.create_run("data-rerun", {})
    assert wait_for_run(store, run_id)["state"] == "success"
    stamp = json.loads(steps_of(store, run_id)["make"]["attempts"][0]["outputs"])["stamp"]
    engine.rerun(plan_rerun(store, run_id, step="use"))
    assert wait_for_run(store, run_id)["state"] == "success"
    assert store.read_log(run_id, "use", 2) == f"{stamp}\n".encode()
