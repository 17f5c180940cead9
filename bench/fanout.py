"""Fan-out: N mapped instances of `true` against the same N steps written out statically, in one run.

    .venv/bin/python bench/fanout.py [--steps 1000] [--workers 2] [--rounds 4] [--network none]
                                     [--quiet-load 2] [--wait-quiet 600]

Each round is one DAG run on ``--workers`` forked ``ctl worker`` processes (private redis-server, real
containers) with two halves that never compete for the workers: ``static`` (N independent steps) and
``mapped`` (one step with ``for_each`` over a list of N elements), joined by a ``gate`` step that waits
for the first half. Rounds alternate which half goes first (static then mapped, mapped then static, ...)
so that a drift of the machine during a round (another process, Redis growing, the engine's state)
weighs on both halves alike; the figure is the median of the rounds' ratios. Each half's rate is steps
per second from its first start to its last end; the ratio mapped / static is the target (issue #14: at
least 0.95). Before each round the bench waits (up to ``--wait-quiet`` seconds) for the machine's
1-minute load average to fall below ``--quiet-load``, and prints the load around each round: a figure
taken on a busy shared machine says little.

Why the first version gave no figure on a busy machine: every call to the engine has the docker SDK's
60 s read timeout, and at a load average of 25 (other suites on the same engine) some call of an
attempt (most likely a start on Docker's default bridge network: veth pair, iptables, libnetwork's
setkey hook) waited longer than that; the attempt failed, with no retries so did the run, and the bench
printed nothing (not reproduced since: the engine's log of that day is gone). Two workers create at most
two containers at a time, so it was the machine's load, not the bench's concurrency. Now the steps run
with ``network: none`` (measured here: ~210 ms of engine calls per container instead of ~330 ms on the
bridge, and less work for a loaded engine) and ``retries: 2``: an engine hiccup costs a retry, which the
bench counts and prints with its reason, not the figure.

Expansion time is measured on the store alone: creating a run whose root is a mapped step of N items
(expanded in the same script) against one with N static roots.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
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


def dag_text(name: str, steps: int, network: str, mapped_first: bool) -> str:
    """The two halves, the first one's end gating the second one's start."""
    first, second = ("mapped", "static") if mapped_first else ("static", "mapped")
    after = {first: "", second: ", depends_on: [gate]"}
    static = "".join(f"  s{i}: {{command: ['true']{after['static']}}}\n" for i in range(steps))
    gate_on = ["mapped"] if mapped_first else [f"s{i}" for i in range(steps)]
    gate = "  gate: {command: ['true'], depends_on: [" + ", ".join(gate_on) + "]}\n"
    mapped = (f"  mapped: {{command: ['true'], for_each: {json.dumps(list(range(steps)))}, "
              f"max_items: {steps}{after['mapped']}}}\n")
    defaults = (f"{{image: {IMAGE}, network: {network}, retries: 2, "
                "retry_backoff: {initial: 1s, factor: 1, jitter: 0}}")
    return f"name: {name}\ndefaults: {defaults}\nsteps:\n{static}{gate}{mapped}"


def rate(records: list[dict]) -> float:
    """Steps per second from the first attempt's start to the last successful attempt's end."""
    starts = [datetime.fromisoformat(s["attempts"][0]["started_at"]) for s in records]
    ends = [datetime.fromisoformat(s["attempts"][-1]["ended_at"]) for s in records]
    return len(records) / (max(ends) - min(starts)).total_seconds()


def hop(records: list[dict]) -> float:
    """Median seconds from one attempt's end to the next start on the same worker: Conveyor's own cost
    per step (record, enqueue, dequeue, claim, render), apart from the container's, which is the same
    work in both halves and where a shared machine's noise lands."""
    spans: dict[str, list[tuple[datetime, datetime]]] = {}
    for step in records:
        for attempt in step["attempts"]:
            spans.setdefault(attempt["worker"], []).append(
                (datetime.fromisoformat(attempt["started_at"]), datetime.fromisoformat(attempt["ended_at"])))
    gaps = [(b[0] - a[1]).total_seconds() for worker in spans.values()
            for a, b in zip(sorted(worker), sorted(worker)[1:], strict=False)]
    return statistics.median(gaps)


@dataclass
class Round:
    mapped_first: bool
    static: float
    mapped: float
    hops: tuple[float, float]  # hop() of the static and the mapped half
    retried: dict[str, int]  # reason -> attempts retried
    load: tuple[float, float]  # 1-minute load average before and after

    @property
    def ratio(self) -> float:
        return self.mapped / self.static


def wait_quiet(limit: float, patience: float) -> float:
    """Wait until the 1-minute load average is below ``limit`` (at most ``patience`` s); returns it."""
    deadline = time.monotonic() + patience
    while (load := os.getloadavg()[0]) >= limit and time.monotonic() < deadline:
        time.sleep(5)
    return load


def one_round(store: RunStore, dispatcher: Dispatcher, folder: Path, index: int, args: argparse.Namespace) -> Round:
    mapped_first = index % 2 == 1
    name = f"fanbench{index}"
    path = folder / f"{name}.yaml"
    path.write_text(dag_text(name, args.steps, args.network, mapped_first))
    submit_file(store, path)
    before = wait_quiet(args.quiet_load, args.wait_quiet)
    run_id = Engine(store, dispatcher).create_run(name, {})
    while store.run_record(run_id)["state"] not in {"success", "failed", "cancelled"}:
        time.sleep(0.5)
    after = os.getloadavg()[0]
    records = store.step_records(run_id)
    failed = {s["name"]: s["state"] for s in records if s["state"] != "success"}
    assert not failed, f"round {index}: steps did not succeed: {dict(list(failed.items())[:10])}"
    static = [s for s in records if s["name"].startswith("s")]
    mapped = [s for s in records if s.get("parent") == "mapped"]
    assert len(static) == len(mapped) == args.steps
    retried: dict[str, int] = {}
    for step in records:
        for attempt in step["attempts"][:-1]:
            reason = attempt.get("reason") or "?"
            retried[reason] = retried.get(reason, 0) + 1
    return Round(mapped_first, rate(static), rate(mapped), (hop(static), hop(mapped)), retried, (before, after))


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
    parser.add_argument("--rounds", type=int, default=4, help="runs, alternating which half goes first")
    parser.add_argument("--network", default="none", help="the steps' network: none (default) or bridge")
    parser.add_argument("--quiet-load", type=float, default=2.0, help="wait for a load average below this")
    parser.add_argument("--wait-quiet", type=float, default=600.0, help="at most this long (seconds)")
    args = parser.parse_args()
    expand = statistics.median(creation(args.steps, mapped=True) for _ in range(3))
    static_create = statistics.median(creation(args.steps, mapped=False) for _ in range(3))
    print(f"when: {datetime.now(UTC).isoformat(timespec='seconds')}; {os.cpu_count()} cores; "
          f"{args.steps} steps per half on {args.workers} workers, network {args.network}", flush=True)
    print(f"expansion of {args.steps} instances (one Lua transition): {expand * 1000:.1f} ms "
          f"(creating {args.steps} static steps: {static_create * 1000:.1f} ms)", flush=True)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp, embedded_redis() as url:
        settings = Settings(url, prefix="bench")
        store = RunStore.connect(settings)
        dispatcher = Dispatcher(settings.connect(decode=False), "bench")
        with worker_processes(settings, args.workers):
            time.sleep(0.5)
            for index in range(args.rounds):
                done = one_round(store, dispatcher, Path(tmp), index, args)
                rounds.append(done)
                order = "mapped first" if done.mapped_first else "static first"
                retried = ", ".join(f"{n} {r}" for r, n in sorted(done.retried.items())) or "none"
                print(f"round {index + 1} ({order}; load {done.load[0]:.2f} -> {done.load[1]:.2f}): "
                      f"static {done.static:.2f} steps/s, mapped {done.mapped:.2f} steps/s, "
                      f"ratio {done.ratio:.3f}; hop {done.hops[0] * 1000:.1f} / {done.hops[1] * 1000:.1f} ms; "
                      f"attempts retried: {retried}", flush=True)
    print(f"static: median {statistics.median(r.static for r in rounds):.2f} steps/s; "
          f"mapped: median {statistics.median(r.mapped for r in rounds):.2f} steps/s")
    hops = [statistics.median(r.hops[i] for r in rounds) * 1000 for i in (0, 1)]
    print(f"hop (end of one attempt to the next start on a worker): static {hops[0]:.1f} ms, "
          f"mapped {hops[1]:.1f} ms (medians)")
    for first in (False, True):
        ratios = [r.ratio for r in rounds if r.mapped_first == first]
        if ratios:
            print(f"ratio, rounds with {'mapped' if first else 'static'} first: median {statistics.median(ratios):.3f}")
    print(f"ratio mapped / static: median {statistics.median(r.ratio for r in rounds):.3f} over {len(rounds)} "
          f"round(s) (target >= 0.95)")


if __name__ == "__main__":
    main()
