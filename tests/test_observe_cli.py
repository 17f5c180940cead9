"""``ctl graph``, ``ctl stats``, the runs grid, ``ctl status --watch``, and the scheduler's
``--metrics-port``/``--log-format`` as users run them (no containers: runs are driven through the store)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scheduler import logs
from scheduler.cli.main import app
from scheduler.service import submit_file
from scheduler.settings import Settings
from scheduler.store import RunStore
from tests.conftest import ROOT, free_port
from tests.helpers import new_run, spec_from, write_dag

DIAMOND = """
name: diamond
defaults: {image: conveyor/busybox:local}
steps:
  a: {command: [a], tags: {vendor: acme}}
  b: {command: [b], depends_on: [a], retries: 1}
  c: {command: [c], depends_on: [a], tags: {vendor: zen}}
  d: {command: [d], depends_on: [b, c]}
"""


@pytest.fixture
def cli(settings: Settings):
    runner = CliRunner()
    env = {"REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    return lambda *args: runner.invoke(app, list(args), env=env)


def drive(store: RunStore, run_id: str, fail: str | None = None, t: datetime | None = None) -> None:
    """Run every step of a diamond run in order through the store; ``fail`` fails that step for good."""
    t = t or datetime(2026, 11, 20, 12, tzinfo=UTC)
    for i, step in enumerate("abcd"):
        state = {s["name"]: s for s in store.step_records(run_id)}[step]
        if state["state"] not in {"queued", "retrying"}:
            continue
        n = int(state["attempt"])
        while True:
            store.start_attempt(run_id, step, n, host=f"host-{step}", pid=1, worker="w",
                                now=t + timedelta(seconds=10 * i))
            outcome = "failed" if step == fail else "success"
            done = store.finish_attempt(run_id, step, n, outcome, {"exit_code": int(outcome == "failed")},
                                        now=t + timedelta(seconds=10 * i + 2))
            if done.state != "retrying":
                break
            n += 1


def test_graph_formats_from_a_file_and_a_submitted_dag(cli, store: RunStore, tmp_path: Path) -> None:
    path = write_dag(tmp_path, DIAMOND)
    ascii_ = cli("graph", str(path))
    assert ascii_.exit_code == 0, ascii_.output
    assert ascii_.stdout == ("diamond (4 steps, 4 dependencies)\n"
                             "a\n"
                             "+-- b\n"
                             "|   `-- d  <- b, c\n"
                             "`-- c\n"
                             "    `-- d (*)\n")
    submit_file(store, path)
    dot = cli("graph", "diamond", "--format", "dot")
    assert dot.exit_code == 0 and "    b -> d;\n    c -> d;\n" in dot.stdout and dot.stdout.startswith("digraph")
    mermaid = cli("graph", "diamond", "-f", "mermaid")
    assert "flowchart LR" in mermaid.stdout and '    s0["a"]' in mermaid.stdout and "s2 --> s3" in mermaid.stdout


def test_graph_errors_exit_1_without_traceback(tmp_path: Path, settings: Settings) -> None:
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    run = lambda *a: subprocess.run([sys.executable, "-m", "scheduler.cli.main", *a],  # noqa: E731
                                    capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    missing = run("graph", "nope")
    assert missing.returncode == 1 and "no DAG named 'nope'" in missing.stderr and "Traceback" not in missing.stderr
    bad = run("graph", str(write_dag(tmp_path, "name: x\nsteps: {a: {image: i, command: [c], depends_on: [z]}}\n")))
    assert bad.returncode == 1 and "'z'" in bad.stderr
    assert run("stats", "--by", "colour").returncode == 2


def test_stats_json_and_table(cli, store: RunStore) -> None:
    spec = spec_from(DIAMOND)
    for i in range(3):
        plan, _ = new_run(store, spec)
        drive(store, plan.run_id, fail="c" if i == 2 else None)
    result = cli("stats", "--since", "1h", "-o", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["runs"] == 3 and data["run_states"] == {"failed": 1, "success": 2}
    assert data["groups"][0] == {"key": "diamond", "count": 3, "failed": 1, "failure_rate": 0.3333, "retries": 0,
                                 "p50_seconds": 32.0, "p95_seconds": 32.0}
    assert data["failing_hosts"] == [{"host": "host-c", "failures": 1, "attempts": 3, "failure_rate": 0.3333}]
    assert data["failing_tags"][0] == {"tag": "vendor", "value": "zen", "failures": 1, "steps": 3,
                                       "failure_rate": 0.3333}
    by_tag = json.loads(cli("stats", "diamond", "--by", "tag:vendor", "-o", "json").stdout)
    assert [(g["key"], g["failed"]) for g in by_tag["groups"]] == [("zen", 1), ("acme", 0)]
    table = cli("stats", "--by", "step")
    assert table.exit_code == 0 and "diamond.c" in table.stdout and "33.3%" in table.stdout
    assert "hosts with the most failed attempts" in table.stdout
    old = json.loads(cli("stats", "--since", "2000-01-01", "-o", "json").stdout)
    assert old["runs"] == 3
    none = json.loads(cli("stats", "--since", datetime.now(UTC).replace(year=2100).isoformat(), "-o", "json").stdout)
    assert none["runs"] == 0 and none["groups"] == []


def test_runs_grid_and_json(cli, store: RunStore) -> None:
    spec = spec_from(DIAMOND)
    ids = []
    for fail in (None, "b", None):
        plan, _ = new_run(store, spec)
        drive(store, plan.run_id, fail=fail)
        ids.append(plan.run_id)
    new_run(store, spec)  # still queued
    grid = cli("runs", "diamond")
    assert grid.exit_code == 0, grid.output
    cells = [line.replace("\u2502", " ").split() for line in grid.stdout.splitlines()]
    rows = {cell[0]: cell[1:] for cell in cells if cell and cell[0] in {"run", "a", "b", "c", "d"}}
    assert rows["run"] == ["s", "F", "s", "q"]  # oldest first
    assert rows["b"] == ["s", "F", "s", "."]
    assert rows["d"] == ["s", "U", "s", "."]
    assert all(rid in grid.stdout for rid in ids) and "F failed" in grid.stdout
    listed = json.loads(cli("runs", "diamond", "-o", "json").stdout)
    assert [r["run_id"] for r in listed][1:] == ids[::-1] and all("steps" not in r for r in listed)


def test_status_watch_follows_until_the_end(cli, store: RunStore) -> None:
    plan, _ = new_run(store, spec_from(DIAMOND))
    later = threading.Timer(0.5, drive, args=(store, plan.run_id))
    later.start()
    try:
        watched = cli("status", plan.run_id, "--watch", "-o", "json")
    finally:
        later.join()
    assert watched.exit_code == 0, watched.output
    assert json.loads(watched.stdout)["state"] == "success"
    assert f"{plan.run_id} a: queued" in watched.stderr and f"{plan.run_id} d: success" in watched.stderr
    failed, _ = new_run(store, spec_from(DIAMOND))
    drive(store, failed.run_id, fail="a")
    result = cli("status", failed.run_id, "--watch")
    assert result.exit_code == 1 and "upstream_failed" in result.stdout


def test_json_log_lines_carry_the_attempt() -> None:
    stream = io.StringIO()
    handler = logs.setup("DEBUG", "json", stream=stream)
    try:
        log = logging.getLogger("conveyor.test")
        log.info("outside")
        with logs.attempt_context("r1", None, "load", 2):
            logs.bind(dag="etl")
            log.warning("inside %s", "\x1b[32mgreen\x1b[39;49;00m")
            try:
                raise ValueError("boom")
            except ValueError:
                log.exception("failed")
        log.info("explicit", extra={"run_id": "r9", "step": "x"})
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    assert lines[0].keys() == {"time", "level", "logger", "message"} and lines[0]["message"] == "outside"
    assert lines[1] == {**lines[1], "level": "WARNING", "logger": "conveyor.test", "message": "inside green",
                        "run_id": "r1", "dag": "etl", "step": "load", "attempt": 2}
    assert lines[2]["message"] == "failed" and "ValueError: boom" in lines[2]["exc"] and lines[2]["attempt"] == 2
    assert lines[3]["run_id"] == "r9" and "attempt" not in lines[3]
    assert datetime.fromisoformat(lines[0]["time"]).tzinfo is not None
    assert len(stream.getvalue().splitlines()) == 4  # the traceback stays inside its JSON object


def test_text_log_lines_show_the_attempt() -> None:
    record = logging.LogRecord("conveyor.runner", logging.INFO, __file__, 1, "started %s", ("x",), None)
    with logs.attempt_context("r1", "etl", "load", 1):
        line = logs.TextFormatter().format(record)
    assert line.endswith("INFO conveyor.runner: started x [run_id=r1 dag=etl step=load attempt=1]")
    assert logs.TextFormatter().format(record).endswith("started x")
    with pytest.raises(ValueError, match="json"):
        logs.formatter("xml")


def test_scheduler_serves_metrics_and_logs_json(settings: Settings, store: RunStore) -> None:
    port = free_port()
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix,
           "CONVEYOR_METRICS_PORT": str(port)}
    process = subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", "scheduler", "--log-format", "json"],
                               env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    text = response.read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
                time.sleep(0.1)
        assert "conveyor_redis_up 1.0" in text and 'conveyor_queue_depth{queue="high"} 0.0' in text
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert lines and all(line["logger"] for line in lines)
    assert any("scheduler" in line["message"] and "started" in line["message"] for line in lines)


LINEAGE = {
    "lg-orders": "name: lg-orders\nsteps: {pull: {image: i, command: [c], produces: [lg.orders]}}\n",
    "lg-prices": ("name: lg-prices\nsteps: {a: {image: i, command: [c], produces: [lg.prices]},\n"
                  "  b: {image: i, command: [c], produces: [lg.prices], depends_on: [a]}}\n"),
    "lg-report": ("name: lg-report\nschedule: {on: [lg.orders, lg.prices]}\n"
                  "steps: {sum: {image: i, command: [c], produces: [lg.summary]}}\n"),
    "lg-alone": "name: lg-alone\nsteps: {x: {image: i, command: [c]}}\n",
}


def test_graph_datasets_draws_producer_dag_dataset_consumer_dag(cli, store: RunStore, tmp_path: Path) -> None:
    for name, text in LINEAGE.items():
        submit_file(store, write_dag(tmp_path, text, f"{name}.yaml"))
    plain = cli("graph", "--datasets")
    assert plain.exit_code == 0, plain.output
    assert plain.stdout == ("lg-orders (pull) --> [lg.orders] --> lg-report\n"
                            "lg-prices (a, b) --> [lg.prices] --> lg-report\n"
                            "lg-report (sum) --> [lg.summary] --> (no consumer)\n")
    dot = cli("graph", "--datasets", "-f", "dot")
    assert dot.exit_code == 0 and dot.stdout.startswith("digraph datasets {")
    assert '    "dag:lg-prices" -> "dataset:lg.prices" [label="a, b"];\n' in dot.stdout
    assert '    "dataset:lg.prices" -> "dag:lg-report";\n' in dot.stdout
    assert '"dataset:lg.summary" [label="lg.summary", shape=cylinder];' in dot.stdout
    assert "lg-alone" not in dot.stdout  # no dataset: not drawn
    mermaid = cli("graph", "--datasets", "--format", "mermaid")
    lines = mermaid.stdout.splitlines()
    ids = {line.split("[")[0].strip(): line for line in lines if "[" in line and "--" not in line}
    dag = {n: i for i, line in ids.items() for n in ("lg-orders", "lg-report") if f'["{n}"]' in line}
    data = next(i for i, line in ids.items() if '[("lg.orders")]' in line)
    assert f'    {dag["lg-orders"]} -->|"pull"| {data}' in lines and f"    {data} --> {dag['lg-report']}" in lines
    around = cli("graph", "lg-orders", "--datasets")
    assert around.stdout == "lg-orders (pull) --> [lg.orders] --> lg-report\n"
    missing = cli("graph", "lg-nope", "--datasets")
    assert missing.exit_code == 1 and "no DAG 'lg-nope'" in str(missing.exception)
    assert cli("graph").exit_code == 1
