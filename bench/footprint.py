"""Memory: a worker's PSS per concurrent slot, the scheduler's, and Redis bytes per run, step and attempt
(issue #16).

    .venv/bin/python bench/footprint.py [--slots 1,4,16] [--seconds 8]

1. ``ctl worker --concurrency N`` for each N, against a private redis-server: a fan-out of N steps
   (``sleep``) is triggered and, once all N run at once, the worker process's PSS is read from
   ``/proc/PID/smaps_rollup`` (its threads included; the containers are the engine's, not ours).
   Per extra slot: (PSS at the largest N - PSS at 1) / (N - 1); against a process per slot, which
   costs the whole PSS at 1 for each.
2. ``ctl scheduler`` (leading, one scheduled DAG, metrics off) after it has settled: its PSS.
3. Redis, by ``MEMORY USAGE`` of each key (today's record layout): a queued one-step run (the run
   hash, its step hash, the RQ job hash, and the entries it adds to shared indexes, measured as the
   growth of those keys), a pending step of a 100-step chain, and a finished attempt (attempt hash
   and step growth; its log is counted apart).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scheduler.dispatch import job_id  # noqa: E402
from scheduler.embedded import embedded_redis  # noqa: E402
from scheduler.engine import Engine  # noqa: E402
from scheduler.service import submit_source  # noqa: E402
from scheduler.settings import Settings  # noqa: E402

IMAGE = "conveyor/busybox:local"


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError("no Pss line")


def ctl(*args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def worker_pss(slots: list[int], seconds: float, url: str, env: dict[str, str]) -> list[str]:
    settings = Settings(url, prefix="bench-footprint")
    engine = Engine.connect(settings)
    results: dict[int, int] = {}
    for n in slots:
        name = f"fan{n}"
        text = f"name: {name}\nsteps:\n" + "".join(
            f"  s{i}: {{image: {IMAGE}, command: [sleep, '{seconds}']}}\n" for i in range(n))
        submit_source(engine.store, text.encode(), f"{name}.yaml")
        worker = ctl("worker", "--concurrency", str(n), "--log-level", "WARNING", env=env)
        try:
            time.sleep(2.0)
            run_id = engine.create_run(name, {})
            deadline = time.monotonic() + 120
            while sum(s["state"] == "running" for s in engine.store.step_records(run_id)) < n:
                assert time.monotonic() < deadline and worker.poll() is None, "the steps did not all start"
                time.sleep(0.2)
            time.sleep(0.5)
            results[n] = pss_kb(worker.pid)
            while engine.store.run_record(run_id)["state"] not in {"success", "failed", "cancelled"}:
                time.sleep(0.2)
        finally:
            stop(worker)
    lines = [f"worker PSS with {n:2} slot(s) running steps: {kb / 1024:6.1f} MB" for n, kb in results.items()]
    low, high = min(results), max(results)
    if high > low:
        per_slot = (results[high] - results[low]) / (high - low) / 1024
        lines.append(f"per extra slot: {per_slot:.2f} MB PSS (target <= 10); a process per slot would cost "
                     f"{results[low] / 1024:.1f} MB each")
    return lines


def scheduler_pss(url: str, env: dict[str, str]) -> str:
    settings = Settings(url, prefix="bench-footprint")
    engine = Engine.connect(settings)
    submit_source(engine.store, b"name: hourly\nschedule: {cron: '0 * * * *'}\nsteps:\n"
                                b"  a: {image: conveyor/busybox:local, command: ['true']}\n", "hourly.yaml")
    daemon = ctl("scheduler", "--log-level", "WARNING", env=env)
    try:
        time.sleep(5.0)
        return f"scheduler PSS (leading, one DAG): {pss_kb(daemon.pid) / 1024:.1f} MB"
    finally:
        stop(daemon)


def usage(client: redis.Redis, *keys: str) -> int:
    return sum(client.memory_usage(k, samples=0) or 0 for k in keys)


def redis_bytes(url: str) -> list[str]:
    settings = Settings(url, prefix="bench-bytes")
    engine = Engine.connect(settings)
    store, keys, client = engine.store, engine.store.keys, redis.Redis.from_url(url)
    submit_source(store, b"name: one\nsteps:\n  only: {image: conveyor/busybox:local, command: [echo, hi]}\n",
                  "one.yaml")
    shared = [keys.runs(), keys.dag_runs("one"), keys.queued(), keys.events(), "rq:queue:high"]
    for _ in range(20):  # the shared indexes' fixed overhead first
        engine.create_run("one", {})
    before = usage(client, *shared)
    count = 200
    run_ids = [engine.create_run("one", {}) for _ in range(count)]
    index_bytes = (usage(client, *shared) - before) / count
    rid = run_ids[-1]
    run_hash = usage(client, keys.run(rid))
    step_hash = usage(client, keys.step(rid, "only"))
    job = usage(client, f"rq:job:{job_id(rid, 'only', 1)}")
    total = run_hash + step_hash + job + index_bytes
    lines = [f"queued one-step run: {total:,.0f} B = run hash {run_hash:,} + step hash {step_hash:,} + RQ job "
             f"{job:,} + index entries {index_bytes:,.0f} (target <= 1,500: lean records come later)"]
    chain = "name: chain\nsteps:\n" + "".join(
        f"  s{i}: {{image: conveyor/busybox:local, command: [echo, '{i}']{f', depends_on: [s{i - 1}]' if i else ''}}}\n"
        for i in range(100))
    submit_source(store, chain.encode(), "chain.yaml")
    crid = engine.create_run("chain", {})
    pending = usage(client, *[keys.step(crid, f"s{i}") for i in range(1, 100)]) / 99
    lines.append(f"pending step (100-step chain): {pending:,.0f} B (target <= 300: lean records come later)")
    before_step = usage(client, keys.step(crid, "s0"))
    store.start_attempt(crid, "s0", 1, host="bench", pid=1, worker="bench")
    store.append_log(crid, "s0", 1, b"0\n")
    store.finish_attempt(crid, "s0", 1, "success", {"exit_code": 0, "image": IMAGE, "image_id": "sha256:" + "0" * 64,
                                                      "container_id": "0" * 64, "engine_version": "20.10",
                                                      "container_seconds": 0.4})
    attempt = usage(client, keys.attempt(crid, "s0", 1)) + usage(client, keys.step(crid, "s0")) - before_step
    log = usage(client, keys.log(crid, "s0", 1))
    lines.append(f"finished attempt: {attempt:,} B (attempt hash + step growth; its 2-byte log key {log:,} B "
                 f"apart) (target <= 700: lean records come later)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(), embedded_redis() as url:
        env = {**os.environ, "REDIS_URL": url, "CONVEYOR_PREFIX": "bench-footprint", "PYTHONPATH": str(ROOT)}
        lines = worker_pss([int(n) for n in args.slots.split(",")], args.seconds, url, env)
        lines.append(scheduler_pss(url, env))
        lines += redis_bytes(url)
    print(f"when: {datetime.now(UTC).isoformat(timespec='seconds')}; load average {os.getloadavg()[0]:.1f}")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
