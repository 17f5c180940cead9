"""How fast ``ctl`` starts, against ``python -c pass`` measured in the same run (issue #16).

    .venv/bin/python bench/cli_start.py [--runs 15] [--run-runs 7]

Each command runs as a separate process, as a person runs it, interleaved round by round with
``python -c pass`` so that both see the same machine load (these machines are shared: read the
ratios and the CPU seconds, the wall times are noisy). Printed per command: median and max wall
time, the median CPU time (user + system, of the process and its children), and the median wall
time divided by the round's ``python -c pass``.

- ``ctl --help``, ``ctl validate examples/etl.yaml``, ``ctl next FILE -n 10`` (a scheduled DAG file
  with a market calendar; no Redis answers on the default address, as on a laptop).
- ``ctl run`` of a one-step DAG (``true``) with its own redis-server and forked workers: wall minus
  the step's own time (started_at to ended_at as recorded), the start-up and shutdown overhead.

Targets: ``--help`` <= 0.15 s, ``validate`` <= 0.3 s, ``next`` <= 0.4 s, ``ctl run`` overhead <= 0.6 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "conveyor/busybox:local"
SCHEDULED = """name: month-end
schedule:
  cron: "0 17 * * *"
  timezone: America/New_York
  calendar: NYSE
  business_day: -1
steps:
  report: {image: conveyor/busybox:local, command: [echo, month end]}
"""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess]:
    """Wall and CPU seconds (the child's and its children's) of one process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--run-runs", type=int, default=7)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "CONVEYOR_PREFIX"}}
    env["PYTHONPATH"] = str(ROOT)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # installed code has its .pyc files: so should this
    ctl = [sys.executable, "-m", "scheduler.cli.main"]
    with tempfile.TemporaryDirectory() as tmp:
        scheduled = Path(tmp) / "month-end.yaml"
        scheduled.write_text(SCHEDULED)
        one = Path(tmp) / "one.yaml"
        one.write_text(f"name: bench-one\nsteps:\n  only: {{image: {IMAGE}, command: ['true']}}\n")
        commands = {
            "ctl --help": ([*ctl, "--help"], 0.15),
            "ctl validate examples/etl.yaml": ([*ctl, "validate", "examples/etl.yaml"], 0.3),
            "ctl next FILE -n 10": ([*ctl, "next", str(scheduled), "-n", "10"], 0.4),
        }
        for argv, _ in commands.values():  # warm the page cache and the compiled-schema cache
            assert timed(argv, env)[2].returncode == 0, argv
        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in ["python -c pass", *commands]}
        for _ in range(args.runs):
            base, base_cpu, _ = timed([sys.executable, "-c", "pass"], env)
            samples["python -c pass"].append((base, base_cpu, 1.0))
            for name, (argv, _) in commands.items():
                wall, cpu, result = timed(argv, env)
                assert result.returncode == 0, result.stderr
                samples[name].append((wall, cpu, wall / base))
        overheads: list[tuple[float, float, float]] = []
        for _ in range(args.run_runs):
            base = timed([sys.executable, "-c", "pass"], env)[0]
            wall, cpu, result = timed([*ctl, "run", str(one), "-o", "json"], env)
            assert result.returncode == 0, result.stderr
            attempt = json.loads(result.stdout)["steps"][0]["attempts"][0]
            step = (datetime.fromisoformat(attempt["ended_at"])
                    - datetime.fromisoformat(attempt["started_at"])).total_seconds()
            overheads.append((wall - step, cpu, (wall - step) / base))
    print(f"when: {datetime.now(UTC).isoformat(timespec='seconds')}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores; {args.runs} rounds ({args.run_runs} for ctl run)")
    targets = {name: target for name, (_, target) in commands.items()}
    targets["ctl run overhead (wall - step)"] = 0.6
    for name, rows in [*samples.items(), ("ctl run overhead (wall - step)", overheads)]:
        walls = [r[0] for r in rows]
        target = f"  target <= {targets[name]:.2f} s" if name in targets else ""
        print(f"{name:34} wall median {statistics.median(walls):.3f} s, max {max(walls):.3f} s; "
              f"cpu median {statistics.median(r[1] for r in rows):.3f} s; "
              f"x python -c pass: {statistics.median(r[2] for r in rows):.1f}{target}")


if __name__ == "__main__":
    main()
