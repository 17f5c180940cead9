"""The scheduler under many schedules: delay from due time to run handed to the workers, CPU, memory.

    .venv/bin/python bench/schedule_scale.py [--dags 10000] [--minutes 2] [--lookahead 60] [--distinct]

Submits ``--dags`` DAGs that each fire every minute (``* * * * *``, one step) to a private
redis-server and runs one real ``ctl scheduler`` process over ``--minutes`` minute boundaries (the
first one at least 30 s after it started). A run counts as created when it exists and its first step
is on an RQ queue, where a worker would take it: this process watches the queue's length around
each boundary (a read every ~0.3 ms) and reports, for every run, when the queue first held it:
- the delay from due time to run created, p50 / p99 / max, over all runs of all boundaries;
- how many runs each boundary created (one per DAG is expected) and how far ahead they were staged;
- the daemon's CPU seconds per minute and its peak RSS;
- baselines measured in the same run on the same Redis: one pipelined RQ enqueue per DAG (what the
  scheduler did at the boundary before runs were staged) and one bulk RPUSH of as many ids (the
  floor: what reaching the queue costs at all), with the ratios.
With ``--lookahead 0`` the daemon creates every run at its due time (no staging), for comparison;
with ``--distinct`` no two DAGs share a schedule (the daemon walks each equal schedule once per pass).
No containers run: this measures the scheduler. Targets (issue #3): p99 <= 20 ms, RSS < 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from rq import Queue

from scheduler.agenda import Agenda
from scheduler.daemon import DEFAULT_LOOKAHEAD
from scheduler.embedded import embedded_redis
from scheduler.settings import Settings
from scheduler.store import RunStore

PREFIX = "scale"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def submit(store: RunStore, count: int, distinct: bool) -> None:
    agenda = Agenda(store)
    now = datetime.now(UTC)
    for i in range(count):
        name = f"dag{i:05d}"
        # --distinct: a schedule of its own per DAG (max_catchup differs), so no cron walk is shared
        schedule = {"cron": "* * * * *", **({"max_catchup": 1000 + i} if distinct else {})}
        document = {"name": name, "schedule": schedule,
                    "steps": {"s": {"image": "conveyor/busybox:local", "command": ["echo", "{{ ds }}"]}}}
        store.submit_dag(name, json.dumps(document).encode(), document)
        agenda.schedule_now(name, now=now)


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


def baseline(settings: Settings, count: int) -> tuple[float, float]:
    """Seconds for ``count`` bare RQ enqueues in one pipeline, and for one RPUSH of ``count`` ids."""
    connection = settings.connect(decode=False)
    queue = Queue("baseline", connection=connection)
    began = time.perf_counter()
    with connection.pipeline() as pipe:
        for i in range(count):
            queue.enqueue_call("runner.job.run_attempt", args=("r", "s", 1, PREFIX), job_id=f"base-{i}",
                               pipeline=pipe)
        pipe.execute()
    enqueues = time.perf_counter() - began
    ids = [f"bulk-{i}" for i in range(count)]
    began = time.perf_counter()
    connection.rpush("baseline-bulk", *ids)
    return enqueues, time.perf_counter() - began


def watch_boundary(connection, key: str, boundary: float, expected: int, limit: float = 20.0) -> list[float]:
    """Milliseconds after ``boundary`` (epoch) at which the queue first held 1, 2, ... ``expected`` more ids."""
    while time.time() < boundary - 0.5:
        time.sleep(0.05)
    base = connection.llen(key)
    while time.time() < boundary - 0.002:
        base = connection.llen(key)
    delays: list[float] = []
    while len(delays) < expected and time.time() < boundary + limit:
        seen = connection.llen(key) - base
        at = (time.time() - boundary) * 1000
        while len(delays) < seen:
            delays.append(at)
        time.sleep(0.0002)  # a read every ~0.3 ms, leaving the CPU to Redis and the daemon
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dags", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=2)
    parser.add_argument("--lookahead", type=float, default=DEFAULT_LOOKAHEAD)
    parser.add_argument("--distinct", action="store_true",
                        help="give every DAG its own schedule object (the daemon shares walks of equal schedules)")
    args = parser.parse_args()
    with embedded_redis() as url:
        settings = Settings(url, prefix=PREFIX)
        store = RunStore.connect(settings)
        began = time.perf_counter()
        submit(store, args.dags, args.distinct)
        print(f"submitted {args.dags} DAGs in {time.perf_counter() - began:.1f} s", file=sys.stderr)
        base_enqueue, base_push = baseline(settings, args.dags)
        env = {**os.environ, "REDIS_URL": url, "CONVEYOR_PREFIX": PREFIX}
        daemon = subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", "scheduler", "--log-level", "WARNING",
                                   "--lookahead", str(args.lookahead)], env=env)
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                samples.append(proc_stats(daemon.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        watcher = settings.connect(decode=False)
        queue_key = Queue("default", connection=watcher).key
        delays: list[float] = []
        per_boundary: list[int] = []
        try:
            start_cpu, _ = proc_stats(daemon.pid)
            started = time.time()
            first = (int(started + 30) // 60 + 1) * 60
            for k in range(args.minutes):
                got = watch_boundary(watcher, queue_key, first + 60 * k, args.dags)
                per_boundary.append(len(got))
                delays += got
            cpu, _ = proc_stats(daemon.pid)
            elapsed_min = (time.time() - started) / 60
        finally:
            stop.set()
            daemon.terminate()
            daemon.wait(timeout=30)
        ahead = []
        for rid in store.run_ids(None, 10_000_000)[: 2 * args.dags]:
            record = store.run_record(rid)
            if record.get("staged_at"):
                ahead.append((datetime.fromisoformat(record["created_at"])
                              - datetime.fromisoformat(record["staged_at"])).total_seconds())
    peak_rss = max(rss for _, rss in samples)
    print(f"when: {datetime.now(UTC).isoformat(timespec='seconds')}; lookahead {args.lookahead:g} s")
    kind = "'* * * * *'" + (", distinct schedules" if args.distinct else "")
    print(f"DAGs: {args.dags} (each {kind}); runs on the queue per boundary: {per_boundary}")
    if delays:
        p99 = pct(delays, .99)
        print(f"delay due -> run created (its first step on the queue): p50 {statistics.median(delays):.1f} ms, "
              f"p99 {p99:.1f} ms, max {max(delays):.1f} ms (target p99 <= 20 ms)")
        print(f"baselines: {args.dags} pipelined RQ enqueues {base_enqueue * 1000:.0f} ms, one RPUSH of "
              f"{args.dags} ids {base_push * 1000:.1f} ms; p99 / enqueues = {p99 / (base_enqueue * 1000):.3f}, "
              f"p99 / RPUSH = {p99 / (base_push * 1000):.1f}")
    if ahead:
        print(f"staged ahead of the due time: min {min(ahead):.1f} s, median {statistics.median(ahead):.1f} s")
    print(f"daemon CPU: {(cpu - start_cpu) / elapsed_min:.1f} s per minute; peak RSS {peak_rss / 2**20:.0f} MB "
          f"(target < 150 MB)")


if __name__ == "__main__":
    main()
