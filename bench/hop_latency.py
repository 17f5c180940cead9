"""Per-hop overhead of a chain of steps, against bare container runs measured in the same process run.

    .venv/bin/python bench/hop_latency.py [--steps 20] [--chains 3] [--startup-runs 5] [--network none]

1. Baseline: ``--steps`` bare runs of ``true`` in the busybox image through the same docker SDK calls
   the runner makes (``DockerRuntime.run``: inspect image, create, attach, start, wait, inspect, remove).
2. Conveyor: a chain of ``--steps`` steps of ``true`` through a private redis-server, 2 forked
   ``ctl worker`` processes, RQ and the Lua state machine; ``--chains`` times.
   A hop is the time from one step's end (as the store recorded it) to the next one's end; its
   overhead is that minus the median bare container run of the same round (rounds interleave
   bare runs and chains, since these machines are noisy). The exact orchestration cost is also
   printed: each hop minus the time its step spent inside ``DockerRuntime.run`` (recorded by the
   runner as ``container_seconds``), which does not depend on how long containers took.
3. Start-up: ``ctl run`` of a one-step DAG as a separate process: wall time minus the step's own time.
4. The container's own critical path (issue #16), with the SDK's low-level calls: create, start, wait
   and remove of ``true``, median of each, on the default bridge and with ``--network none``. Workers
   now remove a container in the background once its result is recorded, so a hop is create + start
   + wait (the runner's ``container_seconds`` no longer includes the removal). Creating the next
   step's container while its upstream runs could save at most the create time of each hop: printed
   as a share of the hop, which is what decides whether that is worth its complexity.
Chains and bare runs use ``--network`` (default ``none``; ``bridge`` for the default network).
Targets (issue #2): median overhead <= 10 ms per hop, p99 <= 30 ms; start-up <= 1.5 s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from runner.containers import DockerRuntime, labels_for
from scheduler.cli.local import worker_processes
from scheduler.dispatch import Dispatcher
from scheduler.embedded import embedded_redis
from scheduler.engine import Engine
from scheduler.model import Backoff, StepPlan
from scheduler.service import submit_file
from scheduler.settings import Settings
from scheduler.store import RunStore

IMAGE = "conveyor/busybox:local"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def bare_runs(count: int, runtime: DockerRuntime, network: str = "none") -> list[float]:
    """The runner's own calls, as a worker makes them (its runtime removes containers after the result)."""
    plan = StepPlan(run_id="bench", dag="bench", step="bare", image=IMAGE, argv=("true",), env={}, working_dir=None,
                    timeout=None, cpus=None, memory=None, pull="never", queue="high", retries=0, backoff=Backoff(),
                    tags={}, network=network)
    times = []
    for _ in range(count):
        began = time.perf_counter()
        outcome = runtime.run(plan, labels_for(plan, 1, "bench"), lambda _: None, lambda: None, keep=True)
        times.append(time.perf_counter() - began)
        assert outcome.ok, outcome
        runtime.reap_later([outcome.container_id])
    runtime.drain()
    return times


def phases(count: int, network: str) -> dict[str, float]:
    """Median milliseconds of create, start, wait and remove of ``true`` through the low-level API."""
    import docker

    api = docker.from_env().api
    image = api.inspect_image(IMAGE)["Id"]
    found: dict[str, list[float]] = {"create": [], "start": [], "wait": [], "remove": []}
    for _ in range(count):
        t0 = time.perf_counter()
        cid = api.create_container(image, ["true"], labels={"dev.conveyor.prefix": "bench"},
                                   host_config=api.create_host_config(network_mode=network))["Id"]
        t1 = time.perf_counter()
        api.start(cid)
        t2 = time.perf_counter()
        api.wait(cid)
        t3 = time.perf_counter()
        api.remove_container(cid, force=True)
        t4 = time.perf_counter()
        for key, value in zip(found, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            found[key].append(value * 1000)
    return {key: statistics.median(values) for key, values in found.items()}


def interleaved(steps: int, chains: int, folder: Path, network: str) -> tuple[list[float], ...]:
    """Rounds of (bare runs, then one chain), so both see the same machine load; returns (bare times,
    hop times, per-hop overheads against the round's bare median, per-hop time outside the container
    calls, chain wall times)."""
    lines = ["name: chain", "steps:"]
    for i in range(steps):
        deps = f", depends_on: [s{i - 1}]" if i else ""
        lines.append(f"  s{i}: {{image: {IMAGE}, command: ['true'], network: {network}{deps}}}")
    dag = folder / "chain.yaml"
    dag.write_text("\n".join(lines) + "\n")
    bare: list[float] = []
    hops: list[float] = []
    overheads: list[float] = []
    exact: list[float] = []
    walls: list[float] = []
    runtime = DockerRuntime()
    bare_runs(2, runtime, network)  # warm the client and the engine's caches
    with embedded_redis() as url:
        settings = Settings(url, prefix="bench")
        store = RunStore.connect(settings)
        dispatcher = Dispatcher(settings.connect(decode=False), settings.prefix)
        submit_file(store, dag)
        with worker_processes(settings, 2):
            time.sleep(0.5)  # workers up and blocking on their queues
            for _ in range(chains):
                round_bare = bare_runs(steps, runtime, network)
                bare += round_bare
                began = time.perf_counter()
                run_id = Engine(store, dispatcher).create_run("chain", {})
                while store.run_record(run_id)["state"] not in {"success", "failed", "cancelled"}:
                    time.sleep(0.05)
                walls.append(time.perf_counter() - began)
                records = store.step_records(run_id)
                assert all(s["state"] == "success" for s in records), records
                ends = [datetime.fromisoformat(s["attempts"][0]["ended_at"]) for s in records]
                inside = [float(s["attempts"][0]["container_seconds"]) for s in records]
                round_hops = [(b - a).total_seconds() for a, b in itertools.pairwise(ends)]
                hops += round_hops
                overheads += [(h - statistics.median(round_bare)) * 1000 for h in round_hops]
                exact += [(h - c) * 1000 for h, c in zip(round_hops, inside[1:], strict=True)]
    return bare, hops, overheads, exact, walls


def startup(runs: int, folder: Path) -> list[float]:
    dag = folder / "one.yaml"
    dag.write_text(f"name: one\nsteps:\n  only: {{image: {IMAGE}, command: ['true']}}\n")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    overheads = []
    for _ in range(runs):
        began = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "scheduler.cli.main", "run", str(dag), "-o", "json"],
                                capture_output=True, text=True, env=env, check=True)
        wall = time.perf_counter() - began
        attempt = json.loads(result.stdout)["steps"][0]["attempts"][0]
        step = (datetime.fromisoformat(attempt["ended_at"]) - datetime.fromisoformat(attempt["started_at"]))
        overheads.append(wall - step.total_seconds())
    return overheads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--chains", type=int, default=5)
    parser.add_argument("--startup-runs", type=int, default=5)
    parser.add_argument("--network", default="none", help="none or bridge, for the chains and bare runs")
    args = parser.parse_args()
    split = {network: phases(10, network) for network in ("bridge", "none")}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bare, hops, overhead, exact, walls = interleaved(args.steps, args.chains, folder, args.network)
        starts = startup(args.startup_runs, folder)
    bare_median = statistics.median(bare)
    print(f"when: {datetime.now(UTC).isoformat(timespec='seconds')}; load average {os.getloadavg()[0]:.1f}; "
          f"network {args.network}")
    for network, ms in split.items():
        total = sum(ms.values())
        print(f"container phases ({network:6}, median of 10): create {ms['create']:.0f} ms, "
              f"start {ms['start']:.0f} ms, wait {ms['wait']:.0f} ms, remove {ms['remove']:.0f} ms "
              f"(total {total:.0f}; now on a hop's path: {total - ms['remove']:.0f})")
    ms = split[args.network]
    print(f"pre-creating the next container could save at most its create, {ms['create']:.0f} ms: "
          f"{ms['create'] / (statistics.median(hops) * 1000):.1%} of a median hop")
    print(f"bare container run (same SDK calls): median {bare_median * 1000:.1f} ms, p99 {pct(bare, .99) * 1000:.1f} ms"
          f" ({len(bare)} runs)")
    print(f"conveyor hop (step end -> next step end): median {statistics.median(hops) * 1000:.1f} ms, "
          f"p99 {pct(hops, .99) * 1000:.1f} ms ({len(hops)} hops in {args.chains} chains of {args.steps})")
    print(f"per-hop overhead: median {statistics.median(overhead):.1f} ms (target <= 10), "
          f"p99 {pct(overhead, .99):.1f} ms (target <= 30)")
    print(f"per-hop time outside the container calls (hop - the step's own DockerRuntime.run time): "
          f"median {statistics.median(exact):.1f} ms, p99 {pct(exact, .99):.1f} ms")
    print(f"ratio conveyor hop / bare run: median {statistics.median(hops) / bare_median:.3f}")
    print(f"chain wall time: {statistics.median(walls):.2f} s for {args.steps} steps "
          f"(bare sum {sum(bare):.2f} s)")
    print(f"ctl run start-up + shutdown overhead (wall - step time): median {statistics.median(starts):.2f} s, "
          f"max {max(starts):.2f} s (target <= 1.5 s; {len(starts)} runs)")


if __name__ == "__main__":
    main()
