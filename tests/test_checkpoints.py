"""Checkpoints: a step writes $CONVEYOR_CHECKPOINT while it runs, the worker saves it (while it runs and at
exit), and the step's next attempt finds it in place: a retry resumes, ``ctl rerun --resume`` resumes, a
plain rerun starts clean. Real containers on the Docker runtime."""

from __future__ import annotations

import json
import time

from typer.testing import CliRunner

from scheduler.cli.main import app
from scheduler.dispatch import Dispatcher
from scheduler.engine import Engine
from scheduler.results import StartStatus
from scheduler.service import plan_rerun, submit_file
from scheduler.store import RunStore
from tests.conftest import Workers, wait_for_run
from tests.helpers import write_dag
from tests.test_outputs import steps_of, store_url

# Counts to 10, one a 0.2 s, writing its progress to the checkpoint (write, then rename: never half a
# file); started without a checkpoint it fails at 5. It records where it started as an output.
COUNTER = """
    name: ckpt-counter
    defaults: {image: conveyor/busybox:local}
    steps:
      count:
        retries: 1
        retry_backoff: {initial: 0s, jitter: 0}
        outputs: [start]
        command:
          - sh
          - -c
          - |
            start=$(cat "$CONVEYOR_CHECKPOINT" 2>/dev/null || echo 0)
            echo "from $start"
            echo "$start" > "$CONVEYOR_OUTPUTS/start"
            i=$start
            while [ "$i" -lt 10 ]; do
              i=$((i + 1))
              echo "$i" > /conveyor/checkpoint/next && mv /conveyor/checkpoint/next "$CONVEYOR_CHECKPOINT"
              if [ "$start" = 0 ] && [ "$i" = 5 ]; then echo "failing at 5"; exit 3; fi
              sleep 0.2
            done
            echo "done at $i"
"""


def attempts_of(store: RunStore, run_id: str) -> list[dict]:
    return steps_of(store, run_id)["count"]["attempts"]


def test_a_retry_resumes_from_the_checkpoint_and_a_rerun_starts_clean_unless_resumed(
        tmp_path, store: RunStore, dispatcher: Dispatcher, workers: Workers) -> None:
    submit_file(store, write_dag(tmp_path, COUNTER))
    workers.start(1)
    engine = Engine(store, dispatcher)
    run_id = engine.create_run("ckpt-counter", {})
    assert wait_for_run(store, run_id)["state"] == "success", attempts_of(store, run_id)
    first, retry = attempts_of(store, run_id)
    assert first["state"] == "failed" and store.read_log(run_id, "count", 1) == b"from 0\nfailing at 5\n"
    assert retry["state"] == "success" and json.loads(retry["outputs"]) == {"start": "5"}  # resumed
    assert store.read_log(run_id, "count", 2) == b"from 5\ndone at 10\n"
    assert store.checkpoint(run_id, "count") == b"10\n"  # saved at exit too

    cli, env = CliRunner(), {"REDIS_URL": store_url(store), "CONVEYOR_PREFIX": store.prefix}
    shown = cli.invoke(app, ["status", run_id, "-o", "json"], env=env)
    assert shown.exit_code == 0, shown.output
    [step] = json.loads(shown.stdout)["steps"]
    assert step["checkpoint_bytes"] == 3 and step["checkpoint_at"].startswith(time.strftime("%Y-", time.gmtime()))
    table = cli.invoke(app, ["status", run_id], env={**env, "COLUMNS": "250"})
    assert "checkpoint 3 B, saved" in table.stdout

    # A plain rerun starts clean: no checkpoint in place, so it fails at 5 again and its retry resumes.
    engine.rerun(plan_rerun(store, run_id, step="count"))
    assert wait_for_run(store, run_id)["state"] == "success"
    assert store.read_log(run_id, "count", 3) == b"from 0\nfailing at 5\n"
    assert json.loads(attempts_of(store, run_id)[3]["outputs"]) == {"start": "5"}

    # ctl rerun --resume: the step finds its last checkpoint (10) and has nothing left to count.
    resumed = cli.invoke(app, ["rerun", run_id, "--step", "count", "--resume", "--wait"], env=env)
    assert resumed.exit_code == 0, resumed.output
    assert store.read_log(run_id, "count", 5) == b"from 10\ndone at 10\n"
    assert json.loads(attempts_of(store, run_id)[4]["outputs"]) == {"start": "10"}


def test_the_checkpoint_is_saved_while_the_step_runs(tmp_path, store: RunStore, dispatcher: Dispatcher,
                                                     workers: Workers) -> None:
    """Saved while the container still runs (what a lost attempt's retry gets), not only at its exit."""
    submit_file(store, write_dag(tmp_path, """
        name: ckpt-running
        defaults: {image: conveyor/busybox:local}
        steps:
          long: {command: [sh, -c, 'echo 7 > "$CONVEYOR_CHECKPOINT"; sleep 8']}
    """))
    workers.start(1)
    run_id = Engine(store, dispatcher).create_run("ckpt-running", {})
    deadline = time.monotonic() + 30
    while store.checkpoint(run_id, "long") is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.checkpoint(run_id, "long") == b"7\n"
    assert steps_of(store, run_id)["long"]["state"] == "running"  # saved before the container ended
    assert wait_for_run(store, run_id)["state"] == "success"


def test_a_save_is_fenced_by_the_attempt_and_deleting_the_run_deletes_the_checkpoint(
        tmp_path, store: RunStore, dispatcher: Dispatcher) -> None:
    submit_file(store, write_dag(tmp_path, """
        name: ckpt-fenced
        defaults: {image: conveyor/busybox:local}
        steps:
          a: {command: ["true"]}
    """))
    engine = Engine(store, dispatcher)
    run_id = engine.create_run("ckpt-fenced", {})
    assert engine.start(run_id, "a", 1, host="h", pid=1, worker="w1", lease=30).status is StartStatus.OK
    assert store.save_checkpoint(run_id, "a", 1, b"one", holder="w1")
    assert not store.save_checkpoint(run_id, "a", 1, b"stale", holder="w2")  # not the holder
    assert not store.save_checkpoint(run_id, "a", 2, b"future", holder="w1")  # not the current attempt
    assert store.checkpoint(run_id, "a") == b"one"
    engine.finish(run_id, "a", 1, "success", {"exit_code": 0}, holder="w1")
    assert not store.save_checkpoint(run_id, "a", 1, b"late", holder="w1")  # the attempt has ended
    assert store.checkpoint(run_id, "a") == b"one"
    assert store.delete_run(run_id)
    assert store.checkpoint(run_id, "a") is None
