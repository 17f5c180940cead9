"""Throughput: a fan-out of independent `true` steps on 2 workers, against bare container runs at the
same concurrency in the same process run; and the store alone, without containers.

    .venv/bin/python bench/throughput.py [--steps 400] [--workers 2] [--transitions 20000]

1. Bare: ``--steps`` runs of ``true`` through ``DockerRuntime.run`` (the runner's own docker SDK
   calls) on ``--workers`` threads: containers per second.
2. Conveyor: one run of ``--steps`` independent steps on ``--workers`` forked ``ctl worker``
   processes through a private redis-server and RQ: steps per second from the first start to the
   last end, and the ratio to (1). Target (issue #5): at least 0.95.
3. The store alone: start and finish attempts of a wide run directly through the Lua scripts
   (two transitions per step): transitions per second (target: at least 6,000) and the Redis
   commands each runs, against plain HSET round trips per second from the same client in the same
   run (what one transition could cost at best).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import redis

from runner.containers import DockerRuntime, labels_for
from scheduler.cli.local import worker_processes
from scheduler.dispatch import Dispatcher
from scheduler.embedded import embedded_redis
from scheduler.engine import Engine
from scheduler.model import Backoff, StepPlan
from scheduler.plan import plan_run
from scheduler.service import submit_file
from scheduler.settings import Settings
from scheduler.spec import load_bytes
from scheduler.store import RunStore

IMAGE = "conveyor/busybox:local"


def bare(steps: int, concurrency: int) -> float:
    runtime = DockerRuntime()
    plan = StepPlan(run_id="bench", dag="bench", step="bare", image=IMAGE, argv=("true",), env={}, working_dir=None,
                    timeout=None, cpus=None, memory=None, pull="never", queue="high", retries=0, backoff=Backoff(),
                    tags={})
    runtime.run(plan, labels_for(plan, 1, "bench"), lambda _: None, lambda: None)  # warm up
    left = [steps]
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            assert runtime.run(plan, labels_for(plan, 1, "bench"), lambda _: None, lambda: None).ok

    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return steps / (time.perf_counter() - began)


def conveyor(steps: int, workers: int, folder: Path) -> float:
    dag = folder / "fan.yaml"
    dag.write_text("name: fan\nsteps:\n" + "".join(f"  s{i}: {{image: {IMAGE}, command: ['true']}}\n"
                                                    for i in range(steps)))
    with embedded_redis() as url:
        settings = Settings(url, prefix="bench")
        store = RunStore.connect(settings)
        submit_file(store, dag)
        with worker_processes(settings, workers):
            time.sleep(0.5)
            run_id = Engine(store, Dispatcher(settings.connect(decode=False), "bench")).create_run("fan", {})
            while store.run_record(run_id)["state"] not in {"success", "failed", "cancelled"}:
                time.sleep(0.1)
            records = store.step_records(run_id)
    assert all(s["state"] == "success" for s in records)
    starts = [datetime.fromisoformat(s["attempts"][0]["started_at"]) for s in records]
    ends = [datetime.fromisoformat(s["attempts"][0]["ended_at"]) for s in records]
    return steps / (max(ends) - min(starts)).total_seconds()


def store_alone(transitions: int) -> tuple[float, float, float]:
    """Transitions/s of the store alone, Redis commands per transition (INFO commandstats: the commands
    the Lua scripts run), and, as the baseline measured in the same run, plain HSET round trips/s."""
    width = transitions // 2
    text = "name: wide\nsteps:\n" + "".join(f"  s{i}: {{image: x, command: ['true']}}\n" for i in range(width))
    spec = load_bytes(text, "wide.yaml")
    with embedded_redis() as url:
        store = RunStore.connect(Settings(url, prefix="bench"))
        store.submit_dag("wide", text.encode(), spec.document)
        plan = plan_run(spec, version=1, params={}, now=datetime.now(UTC))
        store.create_run(plan)
        client = redis.Redis.from_url(url)
        client.config_resetstat()
        began = time.perf_counter()
        for i in range(width):
            store.start_attempt(plan.run_id, f"s{i}", 1, host="h", pid=1, worker="w")
            store.finish_attempt(plan.run_id, f"s{i}", 1, "success", {"exit_code": 0})
        elapsed = time.perf_counter() - began
        calls = {k: v["calls"] for k, v in client.info("commandstats").items()}
        inner = sum(n for k, n in calls.items() if not k.startswith(("cmdstat_eval", "cmdstat_config")))
        assert store.run_record(plan.run_id)["state"] == "success"
        began = time.perf_counter()
        for i in range(transitions):
            store.r.hset("bench:baseline", "f", i)
        baseline = transitions / (time.perf_counter() - began)
    return 2 * width / elapsed, inner / (2 * width), baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--transitions", type=int, default=20_000)
    parser.add_argument("--store-only", action="store_true", help="only the store alone (no containers)")
    args = parser.parse_args()
    if args.store_only:
        transitions, commands, baseline = store_alone(args.transitions)
        print(f"store alone: {transitions:,.0f} transitions/s, {commands:.1f} Redis commands each; {baseline:,.0f} "
              f"HSET round trips/s; ratio {transitions / baseline:.2f}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        bare_rate = bare(args.steps, args.workers)
        ours = conveyor(args.steps, args.workers, Path(tmp))
    transitions, commands, baseline = store_alone(args.transitions)
    print(f"when: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"bare container runs at concurrency {args.workers}: {bare_rate:.2f} /s ({args.steps} runs)")
    print(f"conveyor fan-out of {args.steps} steps on {args.workers} workers: {ours:.2f} steps/s")
    print(f"ratio conveyor / bare: {ours / bare_rate:.3f} (target >= 0.95)")
    print(f"store alone: {transitions:,.0f} step state transitions/s (target >= 6,000), {commands:.1f} Redis "
          f"commands each; baseline: {baseline:,.0f} plain HSET round trips/s from the same client, ratio "
          f"{transitions / baseline:.2f}")


if __name__ == "__main__":
    main()
