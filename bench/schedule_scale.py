"""The scheduler under many schedules: delay from due time to run created, CPU and memory.

    .venv/bin/python bench/schedule_scale.py [--dags 10000] [--minutes 2]

Submits ``--dags`` DAGs that each fire every minute (``* * * * *``, one step) to a private
redis-server, runs one real ``ctl scheduler`` process for ``--minutes`` minute boundaries, and
reports, from the runs it created (each records its due time and creation time):
- the delay from due time to run created, p50 / p99 / max;
- the daemon's CPU seconds per minute and its peak RSS;
- as a baseline measured in the same run: the time the same Redis takes for the bare minimum of
  that work, one pipelined RQ enqueue per DAG (no run state at all), and the ratio.
No containers run: this measures the scheduler. Targets (issue #3): p99 <= 20 ms, RSS < 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rq import Queue

from scheduler.agenda import Agenda
from scheduler.embedded import embedded_redis
from scheduler.settings import Settings
from scheduler.store import RunStore

PREFIX = "scale"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def submit(store: RunStore, count: int) -> None:
    agenda = Agenda(store)
    now = datetime.now(UTC)
    for i in range(count):
        name = f"dag{i:05d}"
        text = (f"name: {name}\nschedule: {{cron: '* * * * *'}}\n"
                f"steps:\n  s: {{image: conveyor/busybox:local, command: [echo, '{{{{ ds }}}}']}}\n")
        document = {"name": name, "schedule": {"cron": "* * * * *"},
                    "steps": {"s": {"image": "conveyor/busybox:local", "command": ["echo", "{{ ds }}"]}}}
        store.submit_dag(name, text.encode(), document)
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


def baseline(settings: Settings, count: int) -> float:
    """Seconds for ``count`` bare RQ enqueues in one pipeline: the least work that hands runs to workers."""
    connection = settings.connect(decode=False)
    queue = Queue("baseline", connection=connection)
    began = time.perf_counter()
    with connection.pipeline() as pipe:
        for i in range(count):
            queue.enqueue_call("runner.job.run_attempt", args=("r", "s", 1, PREFIX), job_id=f"base-{i}",
                               pipeline=pipe)
        pipe.execute()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dags", type=int, default=10_000)
    parser.add_argument("--minutes", type=int, default=2)
    args = parser.parse_args()
    with embedded_redis() as url:
        settings = Settings(url, prefix=PREFIX)
        store = RunStore.connect(settings)
        began = time.perf_counter()
        submit(store, args.dags)
        print(f"submitted {args.dags} DAGs in {time.perf_counter() - began:.1f} s", file=sys.stderr)
        base = baseline(settings, args.dags)
        env = {**os.environ, "REDIS_URL": url, "CONVEYOR_PREFIX": PREFIX}
        daemon = subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", "scheduler", "--log-level", "WARNING"],
                                  env=env)
        samples = []
        try:
            start_cpu, _ = proc_stats(daemon.pid)
            first = datetime.now(UTC)
            # Run through --minutes minute boundaries, plus time for the last one to be handled.
            end = first.timestamp() - first.second - first.microsecond / 1e6 + 60 * args.minutes + 50
            while time.time() < end:
                samples.append(proc_stats(daemon.pid))
                time.sleep(1)
            cpu, _ = proc_stats(daemon.pid)
            elapsed_min = (time.time() - first.timestamp()) / 60
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
        delays = []
        for rid in store.run_ids(None, 10_000_000):
            record = store.run_record(rid)
            due = json.loads(record["provenance"]).get("due_at")
            if due:
                delays.append((datetime.fromisoformat(record["created_at"]) - datetime.fromisoformat(due))
                              .total_seconds() * 1000)
    peak_rss = max(rss for _, rss in samples)
    print(f"when: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"DAGs: {args.dags} (each '* * * * *'), runs created: {len(delays)} over {args.minutes} minute(s)")
    if delays:
        print(f"delay due -> run created: p50 {statistics.median(delays):.0f} ms, p99 {pct(delays, .99):.0f} ms, "
              f"max {max(delays):.0f} ms (target p99 <= 20 ms)")
        print(f"baseline: {args.dags} bare pipelined RQ enqueues take {base * 1000:.0f} ms here; "
              f"p99 delay / baseline = {pct(delays, .99) / (base * 1000):.2f}")
    print(f"daemon CPU: {(cpu - start_cpu) / elapsed_min:.1f} s per minute; peak RSS {peak_rss / 2**20:.0f} MB "
          f"(target < 150 MB)")


if __name__ == "__main__":
    main()
