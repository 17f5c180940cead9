"""Chaos: steps keep their promise while workers and the leading scheduler are killed with SIGKILL.

    .venv/bin/python bench/chaos.py [--steps 200] [--workers 3] [--kill-every 4] [--lease 3]

A run of ``--steps`` independent steps (each sleeps 0.1-1.5 s, then reports "done STEP" over TCP
to a listener in this process) runs on ``--workers`` ``ctl worker`` processes and two
``ctl scheduler`` processes, against a private redis-server. Every ``--kill-every`` seconds a
random worker is killed with SIGKILL and a new one started; the leading scheduler is killed once.

It prints, from the store: steps that succeeded exactly once, steps lost (never succeeded),
steps with more than one successful attempt (must be 0: attempt fencing); from the TCP reports:
steps whose container finished more than once (a killed worker's container can finish before
the reaper removes it: the side effect happened twice although the step succeeded once, the
at-least-once reality every container scheduler has); and the worst time from a worker's kill
to its attempt being declared lost. Target (issue #4): 200 / 0 / 0.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from scheduler.dispatch import Dispatcher
from scheduler.embedded import embedded_redis
from scheduler.engine import Engine
from scheduler.service import submit_file
from scheduler.settings import Settings
from scheduler.store import RunStore

BRIDGE = "172.17.0.1"  # the host as containers on Docker's default bridge see it


def listen(counter: Counter) -> int:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((BRIDGE, 0))
    server.listen(64)

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            with conn:
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                for line in data.decode().split():
                    if line.startswith("s"):
                        counter[line] += 1

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=4.0)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    reports: Counter = Counter()
    port = listen(reports)
    lines = ["name: chaos", "steps:"]
    for i in range(args.steps):
        seconds = rng.uniform(0.1, 1.5)
        lines.append(f"  s{i}: {{image: conveyor/busybox:local, retries: 10, retry_backoff: {{initial: 1s, jitter: 0}},"
                     f" command: [sh, -c, 'sleep {seconds:.2f}; echo s{i} | nc -w 5 {BRIDGE} {port}']}}")
    kills: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, embedded_redis() as url:
        dag = Path(tmp) / "chaos.yaml"
        dag.write_text("\n".join(lines) + "\n")
        settings = Settings(url, prefix="chaos")
        store = RunStore.connect(settings)
        dispatcher = Dispatcher(settings.connect(decode=False), settings.prefix)
        submit_file(store, dag)
        env = {**os.environ, "REDIS_URL": url, "CONVEYOR_PREFIX": "chaos", "CONVEYOR_ATTEMPT_LEASE": str(args.lease)}
        logs = open(Path(tmp) / "processes.log", "wb")  # noqa: SIM115

        def spawn(*command: str) -> subprocess.Popen:
            return subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", *command], env=env, stdout=logs,
                                    stderr=subprocess.STDOUT)

        workers = {f"w{i}": spawn("worker", "--name", f"w{i}", "--log-level", "WARNING") for i in range(args.workers)}
        schedulers = [spawn("scheduler", "--lease-ttl", "2", "--log-level", "WARNING") for _ in range(2)]
        next_name = args.workers
        time.sleep(1.5)
        began = time.monotonic()
        run_id = Engine(store, dispatcher).create_run("chaos", {})
        scheduler_killed = False
        try:
            while store.run_record(run_id)["state"] not in {"success", "failed", "cancelled"}:
                time.sleep(args.kill_every)
                name = rng.choice(sorted(workers))
                victim = workers.pop(name)
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                kills[name] = time.time()
                workers[f"w{next_name}"] = spawn("worker", "--name", f"w{next_name}", "--log-level", "WARNING")
                next_name += 1
                if not scheduler_killed and time.monotonic() - began > 10:
                    holder = (store.r.get(store.keys.leader()) or "").split("|")[0]
                    for process in schedulers:
                        if f"-{process.pid}-" in holder:
                            process.send_signal(signal.SIGKILL)
                            scheduler_killed = True
                if time.monotonic() - began > 600:
                    break
            elapsed = time.monotonic() - began
            time.sleep(2)  # let late container reports arrive
        finally:
            for process in [*workers.values(), *schedulers]:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in [*workers.values(), *schedulers]:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
            logs.close()
        steps = store.step_records(run_id)
        final = store.run_record(run_id)["state"]
    succeeded = [s for s in steps if s["state"] == "success"]
    multi_success = [s for s in steps if sum(a["state"] == "success" for a in s["attempts"]) > 1]
    lost_attempts = [(s["name"], a) for s in steps for a in s["attempts"] if a.get("reason") == "lost"]
    detection = []
    for _, attempt in lost_attempts:
        killed = kills.get(attempt.get("worker", ""))
        if killed:
            detection.append(datetime.fromisoformat(attempt["ended_at"]).timestamp() - killed)
    twice = [name for name, count in reports.items() if count > 1]
    print(f"steps: {len(steps)}; the run ended {final}")
    print(f"workers killed: {len(kills)} (SIGKILL), "
          f"leading scheduler killed: {'yes' if scheduler_killed else 'no'}; wall time {elapsed:.0f} s")
    print(f"succeeded exactly once / lost / duplicated (store): {len(succeeded) - len(multi_success)} / "
          f"{len(steps) - len(succeeded)} / {len(multi_success)}  (target {args.steps} / 0 / 0)")
    print(f"attempts declared lost: {len(lost_attempts)}; worst detection time after the kill: "
          f"{max(detection):.1f} s (lease {args.lease:g} s)" if detection else "attempts declared lost: 0")
    print(f"side effects reported: {sum(reports.values())} for {len(reports)} steps; steps whose container "
          f"finished more than once: {len(twice)} (a killed worker's container outliving it)")


if __name__ == "__main__":
    main()
