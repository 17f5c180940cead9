"""Step outputs and fan-out items cross Redis, so they are signed like plans (scheduler/signing.py,
scheduler/output_trust.py): a Redis writer without the key who changes one cannot make a real worker
render it into a container. Each case tampers with an honest run's recorded data, then reruns the step
that reads it: the attempt fails with ``output_signature`` before any container exists (the canary a
tampered value would create on a host mount stays absent) and the worker keeps serving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scheduler import signing
from scheduler.engine import Engine
from scheduler.output_trust import lua_array
from scheduler.service import plan_rerun, submit_file
from tests.conftest import Workers, wait_for_run
from tests.helpers import write_dag
from tests.test_hostile_redis import assert_serves_real_attempts, ok_dag

EVIL = "x; touch /out/pwned"

DAG = """
name: sigout-data
params:
  names: {type: string, default: '["p0", "p1"]'}
defaults:
  image: conveyor/busybox:local
  mounts: [{source: HOSTDIR, target: /out, read_only: false}]
steps:
  make:
    command: [sh, -c, 'echo hello > $CONVEYOR_OUTPUTS/word; echo "[\\"a\\", \\"b\\"]" > $CONVEYOR_OUTPUTS/list']
    outputs: [word, list]
  each:
    command: [sh, -c, 'echo {{ item }} >> /out/each; echo got-{{ item }} > $CONVEYOR_OUTPUTS/got']
    for_each: "{{ steps.make.outputs.list }}"
    outputs: [got]
    depends_on: [make]
  byparam:
    command: [sh, -c, 'echo {{ item }} >> /out/byparam']
    for_each: "{{ params.names }}"
  literal:
    command: [sh, -c, 'echo {{ item }} >> /out/literal']
    for_each: [l0, l1]
  use:
    command: [sh, -c, 'echo {{ steps.make.outputs.word }} {{ steps.each.outputs.got }} >> /out/use']
    depends_on: [make, each]
"""


@pytest.fixture
def honest_run(tmp_path: Path, store, dispatcher, workers: Workers) -> tuple[str, Path]:
    """An ended, successful run of DAG (with its host folder /out), and one worker that may mount it."""
    out = tmp_path / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    submit_file(store, write_dag(tmp_path, DAG.replace("HOSTDIR", str(out))))
    ok_dag(tmp_path, store)
    workers.start(1, "--allow-mount", str(out))
    run_id = Engine(store, dispatcher).create_run("sigout-data", {})
    assert wait_for_run(store, run_id, timeout=90)["state"] == "success", workers.output()[-3000:]
    return run_id, out


def step(store, run_id: str, name: str) -> dict:
    return next(s for s in store.step_records(run_id) if s["name"] == name)


def rerun(store, dispatcher, run_id: str, name: str) -> dict:
    Engine(store, dispatcher).rerun(plan_rerun(store, run_id, step=name, downstream=False))
    wait_for_run(store, run_id, timeout=60)
    return step(store, run_id, name)["attempts"][-1]


def test_the_honest_path_signs_renders_gathers_and_reruns(honest_run, store, dispatcher, workers) -> None:
    run_id, out = honest_run
    key = store.signing_key
    make = step(store, run_id, "make")
    attempt = make["attempts"][0]
    assert json.loads(make["outputs"]) == {"word": "hello", "list": '["a", "b"]'}
    assert make["outputs_sig"] == attempt["outputs_sig"] and make["outputs_sig"].startswith("1:")
    assert signing.verify_outputs(key, run_id, "make", make["outputs"], make["outputs_sig"])
    assert not signing.verify_outputs(key, run_id, "each[0]", make["outputs"], make["outputs_sig"])  # bound to step
    assert not signing.verify_outputs(key, run_id, "make", make["outputs"], "2" + make["outputs_sig"][1:])  # attempt
    instance = step(store, run_id, "each[1]")
    assert signing.verify_outputs(key, run_id, "each[1]", instance["outputs"], instance["outputs_sig"])
    gathered = json.loads(step(store, run_id, "each")["outputs"])
    assert gathered == {"got": lua_array(["got-a", "got-b"])}  # the worker rebuilds it byte for byte
    assert (out / "use").read_text() == 'hello [got-a,got-b]\n'  # through sh: quotes gone
    assert sorted((out / "each").read_text().split()) == ["a", "b"]
    assert sorted((out / "byparam").read_text().split()) == ["p0", "p1"]
    assert sorted((out / "literal").read_text().split()) == ["l0", "l1"]
    # Reruns read the recorded (signed) outputs and items again.
    assert rerun(store, dispatcher, run_id, "use")["state"] == "success"
    assert rerun(store, dispatcher, run_id, "each[1]")["state"] == "success"
    assert rerun(store, dispatcher, run_id, "byparam[0]")["state"] == "success"
    assert rerun(store, dispatcher, run_id, "literal[1]")["state"] == "success"
    assert (out / "use").read_text().splitlines() == ['hello [got-a,got-b]'] * 2
    assert not (out / "pwned").exists()


def _tamper_gathered(store, run_id: str, values: list[str]) -> None:
    store.r.hset(store.keys.step(run_id, "each"), "outputs", json.dumps({"got": lua_array(values)}))


CASES = {
    # case: (what the writer changes, the step rerun that reads it)
    "output_value": "use",
    "output_signature": "use",
    "signature_removed": "use",
    "signature_of_another_step": "use",
    "mapped_items": "each[0]",
    "param_items": "byparam[0]",
    "literal_items": "literal[0]",
    "gathered_outputs": "use",
    "instance_outputs": "use",
}


@pytest.mark.parametrize("case", list(CASES))
def test_tampered_outputs_and_items_are_never_rendered(honest_run, store, dispatcher, workers, case: str) -> None:
    run_id, out = honest_run
    r, keys = store.r, store.keys
    make = keys.step(run_id, "make")
    outputs = json.loads(r.hget(make, "outputs"))
    if case == "output_value":
        r.hset(make, "outputs", json.dumps({**outputs, "word": EVIL}))
    elif case == "output_signature":
        sig = r.hget(make, "outputs_sig")
        r.hset(make, "outputs_sig", sig[:-1] + ("0" if sig[-1] != "0" else "1"))
    elif case == "signature_removed":
        r.hset(make, "outputs", json.dumps({**outputs, "word": EVIL}))
        r.hdel(make, "outputs_sig")
    elif case == "signature_of_another_step":  # a genuine signature, moved from an instance's outputs
        r.hset(make, "outputs", r.hget(keys.step(run_id, "each[0]"), "outputs"))
        r.hset(make, "outputs_sig", r.hget(keys.step(run_id, "each[0]"), "outputs_sig"))
    elif case == "mapped_items":
        r.hset(keys.step(run_id, "each"), "items", json.dumps([EVIL, "b"]))
    elif case == "param_items":
        r.hset(keys.run(run_id), "params", json.dumps({"names": json.dumps([EVIL])}))
        r.hset(keys.step(run_id, "byparam"), "items", json.dumps([EVIL]))
    elif case == "literal_items":
        r.hset(keys.step(run_id, "literal"), "items", json.dumps([EVIL, "l1"]))
    elif case == "gathered_outputs":
        _tamper_gathered(store, run_id, [EVIL, "got-b"])
    elif case == "instance_outputs":  # the instance's and the gathered outputs agree, unsigned
        r.hset(keys.step(run_id, "each[0]"), "outputs", json.dumps({"got": EVIL}))
        _tamper_gathered(store, run_id, [EVIL, "got-b"])
    before = {p.name: p.read_text() for p in out.iterdir()}
    attempt = rerun(store, dispatcher, run_id, CASES[case])
    assert store.run_record(run_id)["state"] == "failed"
    assert attempt["state"] == "failed" and attempt["reason"] == "output_signature", attempt
    assert not attempt.get("container_id") and not attempt.get("exit_code")
    assert not (out / "pwned").exists()
    assert {p.name: p.read_text() for p in out.iterdir()} == before  # nothing ran at all
    assert "refused" in workers.output()
    assert workers.processes[0].poll() is None
    assert_serves_real_attempts(store, dispatcher)


def test_a_worker_without_a_key_signs_nothing_and_renders_as_before(tmp_path, store, dispatcher, workers,
                                                                     monkeypatch) -> None:
    """Without CONVEYOR_SIGNING_KEY a worker neither signs outputs nor checks them (as it runs unsigned plans)."""
    monkeypatch.setenv("CONVEYOR_SIGNING_KEY", "")
    submit_file(store, write_dag(tmp_path, """
        name: sigout-keyless
        defaults: {image: conveyor/busybox:local}
        steps:
          make: {command: [sh, -c, 'echo "[\\"a\\"]" > $CONVEYOR_OUTPUTS/list'], outputs: [list]}
          each: {command: [echo, "{{ item }}"], for_each: "{{ steps.make.outputs.list }}", depends_on: [make]}
    """))
    workers.start(1)
    run_id = Engine(store, dispatcher).create_run("sigout-keyless", {})
    assert wait_for_run(store, run_id, timeout=60)["state"] == "success", workers.output()[-3000:]
    make = step(store, run_id, "make")
    assert make["outputs"] == '{"list": "[\\"a\\"]"}' and "outputs_sig" not in make
    assert "outputs_sig" not in make["attempts"][0]
    assert store.read_log(run_id, "each[0]", 1) == b"a\n"
