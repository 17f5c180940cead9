"""Large DAGs: validate, submit, trigger and Redis memory for generated chains and fan-outs, a 50,000-step
run driven to its end, and a no-op run on the Docker runtime (issue #16).

    .venv/bin/python bench/large_dag.py [--sizes 5000,50000] [--docker-steps 1000] [--workers 2]

1. For each size, a chain (each step depends on the one before) and a fan-out (one root, every other
   step depends on it), generated as YAML: ``ctl validate``, ``ctl submit``, ``ctl submit`` again
   (identical content: a no-op), ``ctl trigger``, each a separate process against a private
   redis-server; wall time and CPU seconds. Redis: the bytes the run added (``used_memory`` before and
   after the trigger) and the longest single command while it was created (``SLOWLOG``: no script
   may hold Redis for long; large runs are written in chunks).
2. The largest chain run to its end with no-op steps and no containers: every step started and
   finished through the store's transitions, as a worker would (0 seconds of work each).
3. ``--docker-steps`` no-op steps (``true``: a root and a fan-out) on the Docker runtime with
   ``--workers`` forked workers, against bare container runs at the same concurrency measured in the
   same process run; per step, the time outside its container calls (orchestration), and the ratio
   of the run's throughput to bare containers'.
Targets: 5,000 steps validate <= 0.5 s, submit <= 0.7 s, trigger <= 1 s; 50,000 validate <= 5 s,
trigger <= 8 s, and the run completes. The machine is shared: CPU seconds are the steadier figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from throughput import bare  # noqa: E402  (bench/, beside this script)

from scheduler.cli.local import worker_processes  # noqa: E402
from scheduler.embedded import embedded_redis  # noqa: E402
from scheduler.engine import Engine  # noqa: E402
from scheduler.settings import Settings  # noqa: E402
from scheduler.store import RunStore  # noqa: E402

IMAGE = "conveyor/busybox:local"


def dag_text(name: str, steps: int, shape: str, command: str = "[echo, 'step {i} of {{{{ run_id }}}}']") -> str:
    lines = [f"name: {name}", f"defaults: {{image: {IMAGE}, retries: 1}}", "steps:"]
    for i in range(steps):
        up = "" if i == 0 else f", depends_on: [s{i - 1 if shape == 'chain' else 0}]"
        lines.append(f"  s{i}: {{command: {command.format(i=i)}{up}}}")
    return "\n".join(lines) + "\n"


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert result.returncode == 0, result.stderr[-2000:]
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), result.stdout


def cli_phases(sizes: list[int], folder: Path, url: str) -> list[str]:
    env = {**os.environ, "REDIS_URL": url, "CONVEYOR_PREFIX": "bench", "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    ctl = [sys.executable, "-m", "scheduler.cli.main"]
    client = redis.Redis.from_url(url)
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 100_000)
    lines = []
    for size in sizes:
        for shape in ("chain", "fanout"):
            name = f"{shape}-{size}"
            path = folder / f"{name}.yaml"
            path.write_text(dag_text(name, size, shape))
            kb = path.stat().st_size / 1024
            validate = timed([*ctl, "validate", str(path)], env)
            submit = timed([*ctl, "submit", str(path)], env)
            again = timed([*ctl, "submit", str(path)], env)
            assert "unchanged" in again[2], again[2]
            used = client.info("memory")["used_memory"]
            client.slowlog_reset()
            trigger = timed([*ctl, "trigger", name], env)
            longest = max((e["duration"] for e in client.slowlog_get(100_000)), default=0) / 1000
            added = client.info("memory")["used_memory"] - used
            lines.append(
                f"{name:13} {kb:6.0f} KB | validate {validate[0]:5.2f} s ({validate[1]:5.2f} cpu) | submit "
                f"{submit[0]:5.2f} s ({submit[1]:5.2f} cpu), again {again[0]:4.2f} s (no-op) | trigger "
                f"{trigger[0]:5.2f} s ({trigger[1]:5.2f} cpu) | run in Redis {added / 1e6:6.1f} MB "
                f"({added / size:,.0f} B/step), longest command {longest:5.0f} ms")
    return lines


def run_without_containers(size: int, url: str) -> str:
    """The chain of ``size`` steps, each started and finished at once through the store (no containers)."""
    from scheduler.plan import plan_run
    from scheduler.spec import load_bytes

    text = dag_text("nooprun", size, "chain")
    spec = load_bytes(text, "nooprun.yaml")
    store = RunStore.connect(Settings(url, prefix="bench-noop"))
    store.submit_dag("nooprun", text.encode(), spec.document)
    began = time.perf_counter()
    plan = plan_run(spec, version=1, params={}, now=datetime.now(UTC))
    store.create_run(plan)
    created = time.perf_counter() - began
    for name in plan.order:
        store.start_attempt(plan.run_id, name, 1, host="bench", pid=1, worker="bench")
        store.finish_attempt(plan.run_id, name, 1, "success", {"exit_code": 0})
    elapsed = time.perf_counter() - began
    state = store.run_record(plan.run_id)["state"]
    assert state == "success", state
    return (f"chain of {size:,} no-op steps run to its end without containers: {state} in {elapsed:.1f} s "
            f"(created in {created:.1f} s; {2 * size / (elapsed - created):,.0f} transitions/s)")


def docker_run(steps: int, workers: int, folder: Path) -> list[str]:
    from scheduler.service import submit_file

    rate = bare(min(steps, 100), workers)  # bench/throughput.py: bare container runs at this concurrency
    path = folder / "noop.yaml"
    path.write_text(dag_text("noop", steps, "fanout", command="['true']"))
    with embedded_redis() as url:
        settings = Settings(url, prefix="bench-docker")
        engine = Engine.connect(settings)
        submit_file(engine.store, path)
        with worker_processes(settings, workers):
            time.sleep(0.5)
            began = time.perf_counter()
            run_id = engine.create_run("noop", {})
            while engine.store.run_record(run_id)["state"] not in {"success", "failed", "cancelled"}:
                time.sleep(0.2)
            wall = time.perf_counter() - began
            records = engine.store.step_records(run_id)
    assert all(s["state"] == "success" for s in records), {s["state"] for s in records}
    attempts = [s["attempts"][0] for s in records]
    outside = [((datetime.fromisoformat(a["ended_at"]) - datetime.fromisoformat(a["started_at"])).total_seconds()
                - float(a["container_seconds"])) * 1000 for a in attempts]
    ours = steps / wall
    return [f"bare containers ({workers} threads, same SDK calls): {rate:.2f} /s",
            f"{steps} no-op steps (fan-out) on {workers} workers: {wall:.1f} s, {ours:.2f} steps/s, "
            f"ratio to bare {ours / rate:.3f}",
            f"per step outside its container calls (start to end minus the container's own time): median "
            f"{statistics.median(outside):.1f} ms, p95 {sorted(outside)[int(0.95 * (len(outside) - 1))]:.1f} ms; "
            f"per step overall beyond bare: {(wall / steps - 1 / rate) * 1000 * workers:.1f} ms of a worker's time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,50000")
    parser.add_argument("--docker-steps", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        with embedded_redis() as url:
            lines = cli_phases(sizes, Path(tmp), url)
            lines.append(run_without_containers(max(sizes), url))
        if args.docker_steps:
            lines += docker_run(args.docker_steps, args.workers, Path(tmp))
    print(f"when: {datetime.now(UTC).isoformat(timespec='seconds')}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
