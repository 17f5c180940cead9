"""Memory: a worker's PSS per concurrent slot, the scheduler's, and Redis bytes per run, step and attempt
(issue #16).

    .venv/bin/python bench/footprint.py [--slots 1,4,16] [--seconds 8] [--redis-only]

1. ``ctl worker --concurrency N`` for each N, against a private redis-server: a fan-out of N steps
   (``sleep``) is triggered and, once all N run at once, the worker process's PSS is read from
   ``/proc/PID/smaps_rollup`` (its threads included; the containers are the engine's, not ours).
   Per extra slot: (PSS at the largest N - PSS at 1) / (N - 1); against a process per slot, which
   costs the whole PSS at 1 for each.
2. ``ctl scheduler`` (leading, one scheduled DAG, metrics off) after it has settled: its PSS.
3. Redis, by ``MEMORY USAGE`` of each key (the lean layout of scheduler/records.py, plans signed),
   with Conveyor's Redis setting (``hash-max-ziplist-value 256``) and with Redis's default (64): a
   queued one-step run (the run hash, its step hash, the RQ job hash, and the entries it adds to shared
   indexes, measured as the growth of those keys), a pending step of a 100-step chain, a finished
   attempt (attempt hash and step growth; its log is counted apart), and a finished one-step run as
   history.
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
from scheduler.records import COMPACT_HASHES  # noqa: E402
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


def growth(client: redis.Redis, keys: list[str], make) -> float:
    """Bytes the shared ``keys`` grow by per call of ``make`` (200 calls, after 20 to warm them up)."""
    for _ in range(20):
        make()
    before = usage(client, *keys)
    for _ in range(200):
        make()
    return (usage(client, *keys) - before) / 200


def redis_bytes(url: str, compact: bool) -> list[str]:
    """Bytes per record, with Conveyor's Redis setting (``compact``: hash values up to 256 bytes stay
    listpacks) or Redis's default (64)."""
    client = redis.Redis.from_url(url)
    client.flushall()
    client.config_set("hash-max-ziplist-value", COMPACT_HASHES[1] if compact else "64")
    settings = Settings(url, prefix="bench-bytes", signing_key=b"bench-signing-key")
    engine = Engine.connect(settings)
    store, keys = engine.store, engine.store.keys
    shared = [keys.runs(), keys.dag_runs("one"), keys.queued(), "rq:queue:high"]
    submit_source(store, b"name: one\nsteps:\n  only: {image: conveyor/busybox:local, command: [echo, hi]}\n",
                  "one.yaml")
    index_bytes = growth(client, shared, lambda: engine.create_run("one", {}))
    run_indexes = growth(client, shared[:2], lambda: engine.create_run("one", {}))  # kept with the history
    events = growth(client, [keys.events()], lambda: engine.create_run("one", {}))
    rid = engine.create_run("one", {})
    run_hash, step_hash = usage(client, keys.run(rid)), usage(client, keys.step(rid, "only"))
    job = usage(client, f"rq:job:{job_id(rid, 'only', 1)}")
    plan = usage(client, keys.plan(client.hget(keys.step(rid, "only"), "plan").decode()))
    total = run_hash + step_hash + job + index_bytes
    setting = f"hash-max-ziplist-value {COMPACT_HASHES[1]} (Conveyor's Redis)" if compact else \
        "hash-max-ziplist-value 64 (Redis's default)"
    lines = [f"-- {setting}",
             f"queued one-step run: {total:,.0f} B = run hash {run_hash:,} + step hash {step_hash:,} + RQ job "
             f"{job:,} + index entries {index_bytes:,.0f} (runs, DAG runs, queued, RQ queue) (target <= 1,500); "
             f"its plan ({plan:,} B) is shared by every run of the DAG version that renders it alike; "
             f"the event stream is capped (10,000 events, ~{events / 2:,.0f} B each: a fixed cost)"]
    submit_source(store, b"name: templated\nsteps:\n  only: {image: conveyor/busybox:local, command: [echo, "
                         b"'{{ run_id }}']}\n", "templated.yaml")
    own_plan = growth(client, [keys.plan_refs()], lambda: engine.create_run("templated", {})) + plan
    lines.append(f"a step whose command renders differently in every run ({{{{ run_id }}}}, {{{{ ds }}}}) adds its own "
                 f"plan: ~{own_plan:,.0f} B per run")
    chain = "name: chain\nsteps:\n" + "".join(
        f"  s{i}: {{image: conveyor/busybox:local, command: [echo, '{i}']{f', depends_on: [s{i - 1}]' if i else ''}}}\n"
        for i in range(100))
    submit_source(store, chain.encode(), "chain.yaml")
    crid = engine.create_run("chain", {})
    pending = usage(client, *[keys.step(crid, f"s{i}") for i in range(1, 100)]) / 99
    lines.append(f"pending step (100-step chain): {pending:,.0f} B (target <= 300)")
    before_step = usage(client, keys.step(crid, "s0"))
    store.start_attempt(crid, "s0", 1, host="worker-7f9c", pid=4242, worker="worker-7f9c-4242",
                        engine_id="docker:75WU:RSC7:QGAC:Q7VD:SAEJ:KVUH:7U26:YY3D:MC2F:UDMA:SHIP:6K75")
    store.append_log(crid, "s0", 1, b"0\n")
    store.finish_attempt(crid, "s0", 1, "success", {"exit_code": 0, "image": IMAGE, "image_id": "sha256:" + "0" * 64,
                                                      "image_digest": None, "container_id": "0" * 64,
                                                      "engine_version": "20.10.24+dfsg1", "reason": None,
                                                      "error": None, "container_seconds": 0.5518})
    attempt = usage(client, keys.attempt(crid, "s0", 1)) + usage(client, keys.step(crid, "s0")) - before_step
    log = usage(client, keys.log(crid, "s0", 1))
    lines.append(f"finished attempt: {attempt:,} B (attempt hash + step growth; its 2-byte log key {log:,} B "
                 f"apart) (target <= 700)")
    history = run_hash + usage(client, keys.step(crid, "s0")) - before_step + step_hash + attempt + log + run_indexes
    lines.append(f"a finished one-step run kept as history: ~{history:,.0f} B (run, step, attempt, log, the runs "
                 f"and DAG runs index entries); 100,000 a day for 30 days: "
                 f"{history * 100_000 * 30 / 1e9:.1f} GB")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--redis-only", action="store_true", help="only the Redis bytes (no processes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(), embedded_redis() as url:
        env = {**os.environ, "REDIS_URL": url, "CONVEYOR_PREFIX": "bench-footprint", "PYTHONPATH": str(ROOT)}
        lines = [] if args.redis_only else worker_pss([int(n) for n in args.slots.split(",")], args.seconds, url, env)
        if not args.redis_only:
            lines.append(scheduler_pss(url, env))
        lines += redis_bytes(url, compact=True)
        lines += redis_bytes(url, compact=False)
    print(f"when: {datetime.now(UTC).isoformat(timespec='seconds')}; load average {os.getloadavg()[0]:.1f}")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
