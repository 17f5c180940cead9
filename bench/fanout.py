"""Fan-out: N mapped instances of `true` against the same N steps written out statically, in one run.

    .venv/bin/python bench/fanout.py [--steps 1000] [--workers 2]

One DAG, one run on ``--workers`` forked ``ctl worker`` processes (private redis-server, real
containers): ``static`` is N independent steps; ``gate`` waits for all of them; ``mapped`` runs over a
list of N elements after ``gate`` (``for_each``), so the two halves never compete for the workers.
Each half's rate is steps per second from its first start to its last end; the ratio mapped / static
is the target (issue #14: at least 0.95). Expansion time is measured on the store alone: creating a
run whose root is a mapped step of N items (expanded in the same script) against one with N static
roots.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from scheduler.cli.local import worker_processes
from scheduler.dispatch import Dispatcher
from scheduler.embedded import embedded_redis
from scheduler.engine import Engine
from scheduler.plan import plan_run
from scheduler.service import submit_file
from scheduler.settings import Settings
from scheduler.spec import load_bytes
from scheduler.store import RunStore

IMAGE = "conveyor/busybox:local"


def dag_text(steps: int) -> str:
    static = "".join(f"  s{i}: {{command: ['true']}}\n" for i in range(steps))
    gate = "  gate: {command: ['true'], depends_on: [" + ", ".join(f"s{i}" for i in range(steps)) + "]}\n"
    mapped = (f"  mapped: {{command: ['true'], for_each: {json.dumps(list(range(steps)))}, "
              f"max_items: {steps}, depends_on: [gate]}}\n")
    return f"name: fanbench\ndefaults: {{image: {IMAGE}}}\nsteps:\n{static}{gate}{mapped}"


def rate(records: list[dict]) -> float:
    starts = [datetime.fromisoformat(s["attempts"][0]["started_at"]) for s in records]
    ends = [datetime.fromisoformat(s["attempts"][0]["ended_at"]) for s in records]
    return len(records) / (max(ends) - min(starts)).total_seconds()


def in_containers(steps: int, workers: int, folder: Path) -> tuple[float, float]:
    path = folder / "fanbench.yaml"
    path.write_text(dag_text(steps))
    with embedded_redis() as url:
        settings = Settings(url, prefix="bench")
        store = RunStore.connect(settings)
        submit_file(store, path)
        with worker_processes(settings, workers):
            time.sleep(0.5)
            run_id = Engine(store, Dispatcher(settings.connect(decode=False), "bench")).create_run("fanbench", {})
            while store.run_record(run_id)["state"] not in {"success", "failed", "cancelled"}:
                time.sleep(0.2)
            records = store.step_records(run_id)
    assert all(s["state"] == "success" for s in records), {s["name"]: s["state"] for s in records}
    static = [s for s in records if s["name"].startswith("s")]
    mapped = [s for s in records if s.get("parent") == "mapped"]
    assert len(static) == len(mapped) == steps
    return rate(static), rate(mapped)


def creation(steps: int, mapped: bool) -> float:
    """Seconds to create (and, mapped, expand) a run of N ready steps, on the store alone."""
    if mapped:
        text = f"name: one\nsteps:\n  m: {{image: x, command: ['true'], for_each: {list(range(steps))}, " \
               f"max_items: {steps}}}\n"
    else:
        text = "name: one\nsteps:\n" + "".join(f"  s{i}: {{image: x, command: ['true']}}\n" for i in range(steps))
    spec = load_bytes(text, "one.yaml")
    with embedded_redis() as url:
        store = RunStore.connect(Settings(url, prefix="bench"))
        store.submit_dag("one", text.encode(), spec.document)
        plan = plan_run(spec, version=1, params={}, now=datetime.now(UTC))
        began = time.perf_counter()
        created = store.create_run(plan)
        elapsed = time.perf_counter() - began
    assert len(created.ready) == steps
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    expand = creation(args.steps, mapped=True)
    static_create = creation(args.steps, mapped=False)
    with tempfile.TemporaryDirectory() as tmp:
        static, mapped = in_containers(args.steps, args.workers, Path(tmp))
    print(f"when: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"expansion of {args.steps} instances (one Lua transition): {expand * 1000:.1f} ms "
          f"(creating {args.steps} static steps: {static_create * 1000:.1f} ms)")
    print(f"static: {args.steps} steps on {args.workers} workers: {static:.2f} steps/s")
    print(f"mapped: {args.steps} instances on {args.workers} workers: {mapped:.2f} steps/s")
    print(f"ratio mapped / static: {mapped / static:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
