"""Datasets: producer steps record events in finish.lua; a DAG with schedule: {on: [...]} gets one run when
every dataset it lists has a new event, exactly once with two schedulers, with {{ trigger }} and {{ datasets }}."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from typer.testing import CliRunner

from scheduler.cli.main import app
from scheduler.datasets import DatasetTriggers
from scheduler.engine import Engine
from scheduler.service import submit_file
from tests.conftest import Workers, wait_for_run
from tests.helpers import spec_from, write_dag

PRODUCER = """
name: data2-{name}
defaults: {{image: conveyor/busybox:local}}
steps:
  write: {{command: [true], produces: [data2.{name}]}}
"""

CONSUMER = """
name: data2-consumer
defaults: {image: conveyor/busybox:local}
schedule: {on: [data2.orders, data2.prices]}
steps:
  read: {command: [sh, -c, 'echo "$T"; echo "$D"'], env: {T: "{{ trigger }}", D: "{{ datasets }}"}}
"""


def runs_of(store, dag: str) -> list[str]:
    return store.run_ids(dag)


def test_a_chain_of_three_dags_with_two_producers(tmp_path, store, dispatcher, workers: Workers) -> None:
    for name in ("orders", "prices"):
        submit_file(store, write_dag(tmp_path, PRODUCER.format(name=name), f"{name}.yaml"))
    submit_file(store, write_dag(tmp_path, CONSUMER, "consumer.yaml"))
    engine = Engine(store, dispatcher)
    triggers = [DatasetTriggers(engine), DatasetTriggers(engine)]  # two schedulers
    workers.start(1)
    orders = engine.create_run("data2-orders", {})
    assert wait_for_run(store, orders)["state"] == "success"
    assert [t.check(datetime.now(UTC)) for t in triggers] == [[], []]  # prices has no event yet
    assert store.dataset_last_events(["data2.orders"])["data2.orders"]["run"] == orders
    prices = engine.create_run("data2-prices", {})
    assert wait_for_run(store, prices)["state"] == "success"
    first, second = (t.check(datetime.now(UTC)) for t in triggers)
    assert len(first) == 1 and second == []  # once, whichever scheduler looks first
    assert runs_of(store, "data2-consumer") == first
    record = wait_for_run(store, first[0])
    assert record["state"] == "success" and record["trigger"] == "dataset"
    trigger, events = store.read_log(first[0], "read", 1).decode().splitlines()
    assert trigger == "dataset"
    assert {(e["dataset"], e["run"], e["step"]) for e in json.loads(events)} == {
        ("data2.orders", orders, "write"), ("data2.prices", prices, "write")}
    # One new event of one dataset is not enough; both are, and an external event counts.
    again = engine.create_run("data2-orders", {})
    assert wait_for_run(store, again)["state"] == "success"
    assert triggers[0].check(datetime.now(UTC)) == []
    result = CliRunner().invoke(app, ["dataset", "emit", "data2.prices", "--payload", '{"rows": 3}'],
                                env=workers.env())
    assert result.exit_code == 0, result.output
    [second_run] = triggers[1].check(datetime.now(UTC))
    assert len(runs_of(store, "data2-consumer")) == 2
    assert wait_for_run(store, second_run)["state"] == "success"
    listed = CliRunner().invoke(app, ["dataset", "list", "-o", "json"], env=workers.env())
    rows = {row["dataset"]: row for row in json.loads(listed.stdout)}
    assert rows["data2.prices"]["producers"] == ["data2-prices.write"]
    assert rows["data2.prices"]["consumers"] == ["data2-consumer"]
    assert rows["data2.prices"]["last_event"]["payload"] == {"rows": 3}


def test_a_scheduler_killed_between_the_run_and_the_mark_triggers_once(store, dispatcher) -> None:
    engine = Engine(store, dispatcher)
    spec = spec_from(CONSUMER)
    assert spec.schedule == {"on": ["data2.orders", "data2.prices"]}
    engine.emit_dataset("data2.orders")
    engine.emit_dataset("data2.prices")
    store.submit_dag("data2-consumer", CONSUMER.encode(), spec.document)
    marks = []
    original = engine.consume_datasets
    engine.consume_datasets = lambda dag, seen: marks.append(seen)  # killed before the mark: nothing recorded
    [run] = DatasetTriggers(engine).check(datetime.now(UTC))
    engine.consume_datasets = original
    [same] = DatasetTriggers(engine).check(datetime.now(UTC))  # the next scheduler finds the same run
    assert same == run and store.run_ids("data2-consumer") == [run]
    assert DatasetTriggers(engine).check(datetime.now(UTC)) == []
