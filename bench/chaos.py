"""Chaos: steps keep their promise while workers and the leading scheduler are killed with SIGKILL.

    .venv/bin/python bench/chaos.py [--steps 200] [--workers 3] [--kill-every 4] [--lease 3]
                                    [--runtime docker|kubernetes]

A run of ``--steps`` independent steps (each sleeps 0.1-1.5 s, then reports "done STEP" over TCP
to a listener in this process) runs on ``--workers`` ``ctl worker`` processes and two
``ctl scheduler`` processes, against a private redis-server. Every ``--kill-every`` seconds a
random worker is killed with SIGKILL and a new one started; the leading scheduler is killed once.

It prints, from the store: steps that succeeded exactly once, steps lost (never succeeded),
steps with more than one successful attempt (must be 0: attempt fencing); from the steps' own TCP
reports: steps whose container ran more than once (a killed worker's container is adopted by
another worker, issue #15, so none should: before adoption, 24 of 200 did); the adoptions, and the
worst time from a worker's kill to the adoption of its attempt (target: the lease + 2 s). Target:
200 / 0 / 0, and 0 containers run twice.

``--runtime kubernetes`` runs the workers against the kmock emulator of ``tests/kube_emulator.py``
served from this process (an emulator, not a cluster): its fake kubelet keeps each Pod running
whatever happens to the worker that created it, and "a container that ran twice" is a step whose
Pods the kubelet started more than once.
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


def kubernetes_cluster(tmp: Path, namespace: str, rng: random.Random, reports: Counter):
    """The kmock emulator and a fake kubelet in this process, and a kubeconfig for the workers."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.kube_emulator import Emulator, FakeKubelet, Script

    emulator = Emulator().__enter__()
    kubelet = FakeKubelet(emulator, namespace).__enter__()
    durations: dict[str, float] = {}

    def script(run) -> Script:  # each Pod started counts as one run of its step's container
        step = run.pod["metadata"]["annotations"].get("dev.conveyor.step", "")
        reports[step] += 1
        return Script(output=f"{step}\n".encode(), seconds=durations.setdefault(step, rng.uniform(0.1, 1.5)))

    kubelet.script = script
    config = tmp / "kubeconfig"
    config.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: kmock, cluster: {{server: "{emulator.url}"}}}}]
contexts: [{{name: kmock, context: {{cluster: kmock, user: kmock}}}}]
users: [{{name: kmock, user: {{}}}}]
current-context: kmock
""")
    env = {"CONVEYOR_RUNTIME": "kubernetes", "KUBECONFIG": str(config), "CONVEYOR_K8S_NAMESPACE": namespace}
    return env, (kubelet, emulator)


def adoption_delays(steps: list[dict], kills: dict[str, float]) -> list[float]:
    """Seconds from each adopted attempt's holder's kill to its adoption (``adoption_history``)."""
    delays = []
    for step in steps:
        for attempt in step["attempts"]:
            for entry in filter(None, (attempt.get("adoption_history") or "").split(";")):
                previous, rest = entry.split(">", 1)
                at = rest.split("@", 1)[1]
                if previous in kills:
                    delays.append(datetime.fromisoformat(at).timestamp() - kills[previous])
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, default=4.0)
    parser.add_argument("--lease", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runtime", choices=["docker", "kubernetes"], default="docker")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped bench still stops what it started
    rng = random.Random(args.seed)
    reports: Counter = Counter()
    port = listen(reports) if args.runtime == "docker" else 0
    lines = ["name: chaos", "steps:"]
    for i in range(args.steps):
        seconds = rng.uniform(0.1, 1.5)
        lines.append(f"  s{i}: {{image: conveyor/busybox:local, retries: 10, retry_backoff: {{initial: 1s, jitter: 0}},"
                     f" command: [sh, -c, 'sleep {seconds:.2f}; echo s{i} | nc -w 5 {BRIDGE} {port}']}}")
    kills: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, embedded_redis() as url:
        runtime_env, cluster = (kubernetes_cluster(Path(tmp), "chaos", rng, reports) if args.runtime == "kubernetes"
                                else ({}, None))
        dag = Path(tmp) / "chaos.yaml"
        dag.write_text("\n".join(lines) + "\n")
        settings = Settings(url, prefix="chaos")
        store = RunStore.connect(settings)
        dispatcher = Dispatcher(settings.connect(decode=False), settings.prefix)
        submit_file(store, dag)
        env = {**os.environ, "REDIS_URL": url, "CONVEYOR_PREFIX": "chaos", "CONVEYOR_ATTEMPT_LEASE": str(args.lease),
               **runtime_env}
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
            if cluster is not None:
                for part in cluster:
                    part.__exit__(None, None, None)
        steps = store.step_records(run_id)
        final = store.run_record(run_id)["state"]
    succeeded = [s for s in steps if s["state"] == "success"]
    multi_success = [s for s in steps if sum(a["state"] == "success" for a in s["attempts"]) > 1]
    lost_attempts = [(s["name"], a) for s in steps for a in s["attempts"] if a.get("reason") == "lost"]
    adopted = [a for s in steps for a in s["attempts"] if a.get("adopted_by")]
    delays = adoption_delays(steps, kills)
    twice = [name for name, count in reports.items() if count > 1]
    print(f"runtime: {args.runtime}; steps: {len(steps)}; the run ended {final}")
    print(f"workers killed: {len(kills)} (SIGKILL), "
          f"leading scheduler killed: {'yes' if scheduler_killed else 'no'}; wall time {elapsed:.0f} s")
    print(f"succeeded exactly once / lost / duplicated (store): {len(succeeded) - len(multi_success)} / "
          f"{len(steps) - len(succeeded)} / {len(multi_success)}  (target {args.steps} / 0 / 0)")
    print(f"attempts adopted: {len(adopted)} ({sum(int(a.get('adoptions') or 0) for a in adopted)} adoptions); "
          f"attempts declared lost: {len(lost_attempts)}")
    if delays:
        print(f"kill to adoption: worst {max(delays):.1f} s, median {sorted(delays)[len(delays) // 2]:.1f} s "
              f"(target <= lease + 2 s = {args.lease + 2:g} s)")
    what = "containers (TCP reports)" if args.runtime == "docker" else "Pods started by the fake kubelet"
    print(f"{what}: {sum(reports.values())} for {len(reports)} steps; steps whose container ran more than once: "
          f"{len(twice)}  (target 0){': ' + ', '.join(sorted(twice)[:10]) if twice else ''}")

if __name__ == "__main__":
    main()
