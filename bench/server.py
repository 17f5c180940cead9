"""``ctl server`` under load: API latency against the same operations in-process, big pages, memory.

    .venv/bin/python bench/server.py [--requests 400] [--clients 20] [--dags 1000] [--steps 1000]

1. ``POST /api/v1/dags/{dag}/runs`` and ``GET /api/v1/runs/{id}`` from ``--clients`` concurrent clients
   (keep-alive connections of bench/loadgen.py, a process of its own so that it does not share the
   server's interpreter lock) against a ``ctl server`` process, and the same two operations through the
   engine in this process (``create_run`` / ``status_object``) from as many threads, in the same run; the
   ratio API/engine of each percentile is printed beside it. No workers: runs stay queued, so this
   measures the server and Redis only.
2. The DAG list page with ``--dags`` DAGs, and the run page of a ``--steps``-step run (10 layers), each
   fetched 5 times after one warm-up request (the server caches validated DAG versions).
3. The server's RSS afterwards.

Latency on a shared 2-core machine depends on whatever else runs (see ``uptime``'s load average, printed
first); the server's CPU time per request, printed beside the API figures, does not.
Targets (issue #13): API p99 <= 25 ms for status, <= 50 ms for trigger; both pages <= 300 ms; RSS < 150 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from scheduler.dispatch import Dispatcher
from scheduler.embedded import embedded_redis
from scheduler.engine import Engine
from scheduler.runview import status_object
from scheduler.service import submit_file
from scheduler.settings import Settings
from scheduler.store import RunStore

SMALL = "name: {name}\nsteps:\n  a: {{image: conveyor/busybox:local, command: ['true']}}\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * q / 100))] * 1000


def hammer(clients: int, total: int, make: Callable[[], Callable[[int], None]]) -> list[float]:
    """``total`` calls spread over ``clients`` threads, each with its own callable; latencies in seconds."""
    latencies: list[float] = []
    lock = threading.Lock()

    def work(share: int) -> None:
        call = make()
        mine = []
        for i in range(share):
            began = time.perf_counter()
            call(i)
            mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(total // clients,)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def load(base: str, method: str, path: str, total: int, clients: int, body: str = "",
         ids: list[str] | None = None) -> tuple[list[float], list]:
    """``total`` requests from ``clients`` connections of bench/loadgen.py (its own process)."""
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("loadgen.py")), base, method, path,
                           str(total), str(clients), body], input="\n".join(ids or []), capture_output=True,
                          text=True, check=False)
    if done.returncode:
        raise SystemExit(f"loadgen failed: {done.stderr.strip()}")
    result = json.loads(done.stdout)
    return result["latencies"], result["bodies"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: what a request costs the server, whatever else runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(name: str, values: list[float], baseline: list[float] | None = None, cpu: float | None = None) -> None:
    ratio = (f"   (x{pct(values, 50) / pct(baseline, 50):.1f} / x{pct(values, 99) / pct(baseline, 99):.1f} "
             "the engine's)") if baseline else ""
    cost = f"   server CPU {cpu * 1000 / len(values):.2f} ms/request" if cpu is not None else ""
    print(f"  {name:34} p50 {pct(values, 50):7.2f} ms   p99 {pct(values, 99):7.2f} ms   (n={len(values)}){ratio}{cost}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--dags", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=1000)
    args = parser.parse_args()
    with embedded_redis() as url, tempfile.TemporaryDirectory() as folder:
        settings = Settings(url, prefix="bench")
        store = RunStore.connect(settings)
        dispatcher = Dispatcher(settings.connect(decode=False), settings.prefix)
        path = Path(folder) / "small.yaml"
        path.write_text(SMALL.format(name="small"))
        submit_file(store, path)
        port = free_port()
        env = {**os.environ, "REDIS_URL": url, "CONVEYOR_PREFIX": "bench"}
        env.pop("CONVEYOR_TOKENS_FILE", None)
        server = subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", "server", "--port", str(port),
                                   "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            def engine_trigger() -> Callable[[int], None]:
                return lambda i: Engine(store, dispatcher).create_run("small", {})

            run_ids: list[str] = []

            def engine_status() -> Callable[[int], None]:
                return lambda i: status_object(store, run_ids[i % len(run_ids)])

            print(f"{args.clients} concurrent clients, {args.requests} requests each kind; load average "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
            load(base, "POST", "/api/v1/dags/small/runs", args.clients * 2, args.clients, "{}")  # warm-up
            began = cpu_seconds(server.pid)
            api_trigger, bodies = load(base, "POST", "/api/v1/dags/small/runs", args.requests, args.clients, "{}")
            trigger_cpu = cpu_seconds(server.pid) - began
            run_ids += [b["run_id"] for b in bodies]
            in_process = hammer(args.clients, args.requests, engine_trigger)
            report("API    POST /dags/{dag}/runs", api_trigger, in_process, trigger_cpu)
            report("engine create_run (in-process)", in_process)
            began = cpu_seconds(server.pid)
            api_status, _ = load(base, "GET", "/api/v1/runs/{id}", args.requests, args.clients, ids=run_ids)
            status_cpu = cpu_seconds(server.pid) - began
            in_process = hammer(args.clients, args.requests, engine_status)
            report("API    GET /runs/{id}", api_status, in_process, status_cpu)
            report("engine status_object (in-process)", in_process)

            for n in range(args.dags):
                (Path(folder) / "many.yaml").write_text(SMALL.format(name=f"dag_{n:04d}"))
                submit_file(store, Path(folder) / "many.yaml")
            layer = max(1, args.steps // 10)
            steps = {f"s{i:04d}": ({"image": "conveyor/busybox:local", "command": ["true"]}
                                   | ({"depends_on": [f"s{i - layer:04d}"]} if i >= layer else {}))
                     for i in range(args.steps)}
            (Path(folder) / "wide.yaml").write_text(json.dumps({"name": "wide", "steps": steps}))
            submit_file(store, Path(folder) / "wide.yaml")
            wide = Engine(store, dispatcher).create_run("wide", {})
            with httpx.Client(base_url=base, timeout=120) as client:
                for label, url_path in ((f"DAG list page ({args.dags + 2} DAGs)", "/"),
                                        (f"run page ({args.steps} steps)", f"/runs/{wide}")):
                    client.get(url_path).raise_for_status()
                    times = []
                    for _ in range(5):
                        began = time.perf_counter()
                        client.get(url_path).raise_for_status()
                        times.append(time.perf_counter() - began)
                    print(f"  {label:34} median {statistics.median(times) * 1000:7.1f} ms   "
                          f"max {max(times) * 1000:7.1f} ms")
            rss = next(int(line.split()[1]) for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
            print(f"  server RSS {rss / 1024:.1f} MB")
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
