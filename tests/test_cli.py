"""``ctl`` as users run it: separate processes, stdout for data, stderr for talk, documented exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker

from tests.conftest import ROOT, Workers
from tests.helpers import write_dag

ONE_STEP = "name: one\nsteps:\n  only: {image: conveyor/busybox:local, command: [echo, '{{ params.word }}']}\n" \
           "params: {word: {type: string, default: hello}}\n"


def ctl(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scheduler.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=ROOT)


def test_validate_ok_and_bad(tmp_path: Path) -> None:
    good = write_dag(tmp_path, ONE_STEP, "good.yaml")
    bad = write_dag(tmp_path, "name: bad\nsteps:\n  a: {image: x, comand: [y]}\n", "bad.yaml")
    ok = ctl("validate", str(good))
    assert ok.returncode == 0 and "ok (one, 1 steps)" in ok.stdout
    result = ctl("validate", str(good), str(bad))
    assert result.returncode == 1
    assert f"{bad}:3:17: steps.a.comand: unknown field 'comand'; did you mean 'command'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert ctl("trigger").returncode == 2
    assert ctl("no-such-command").returncode == 2
    result = ctl("trigger", "x", "--param", "novalue")
    assert result.returncode == 2 and "KEY=VALUE" in result.stderr


def test_redis_unreachable_is_one_clear_line(tmp_path: Path) -> None:
    result = ctl("runs", env={"REDIS_URL": "redis://:s3cret@127.0.0.1:1/0"})
    assert result.returncode == 1
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in result.stderr
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_submit_trigger_status_runs_logs(tmp_path: Path, settings, workers: Workers) -> None:
    env = {"REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    path = write_dag(tmp_path, ONE_STEP)
    first = json.loads(ctl("submit", str(path), "-o", "json", env=env).stdout)
    again = json.loads(ctl("submit", str(path), "-o", "json", env=env).stdout)
    assert (first[0]["version"], first[0]["created"]) == (1, True)
    assert (again[0]["version"], again[0]["created"]) == (1, False)
    workers.start(1)
    triggered = ctl("trigger", "one", "--param", "word=$(reboot)", "-o", "json", env=env)
    run_id = json.loads(triggered.stdout)["run_id"]
    waited = ctl("trigger", "one", "--wait", "-o", "json", env=env)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["state"] == "success"
    deadline = time.monotonic() + 30
    while json.loads(ctl("status", run_id, "-o", "json", env=env).stdout)["state"] != "success":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    status = json.loads(ctl("status", run_id, "-o", "json", env=env).stdout)
    assert status["params"] == {"word": "$(reboot)"} and status["trigger"] == "manual"
    assert ctl("logs", run_id, "only", env=env).stdout == "$(reboot)\n"
    runs = json.loads(ctl("runs", "one", "-o", "json", env=env).stdout)
    assert {r["run_id"] for r in runs} >= {run_id} and "steps" not in runs[0]
    table = ctl("runs", env=env)
    assert run_id in table.stdout
    missing = ctl("status", "nope", env=env)
    assert missing.returncode == 1 and "no run 'nope'" in missing.stderr
    unknown = ctl("trigger", "onee", env=env)
    assert unknown.returncode == 1 and "did you mean 'one'" in unknown.stderr
    bad_param = ctl("trigger", "one", "--param", "wrod=x", env=env)
    assert bad_param.returncode == 1 and "unknown param 'wrod'; did you mean 'word'?" in bad_param.stderr


def test_ctl_run_local_leaves_nothing_behind(tmp_path: Path, image: str, docker_client: docker.DockerClient) -> None:
    path = write_dag(tmp_path, ONE_STEP)
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    before = set(Path("/tmp").glob("conveyor-redis-*"))
    result = subprocess.run([sys.executable, "-m", "scheduler.cli.main", "run", str(path), "-p", "word=hi",
                             "-o", "json"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["state"] == "success" and data["steps"][0]["attempts"][0]["exit_code"] == 0
    assert set(Path("/tmp").glob("conveyor-redis-*")) == before
    assert _processes_mentioning(str(path)) == []
    failed = ctl("run", str(write_dag(tmp_path, "name: f\nsteps:\n  x: {image: conveyor/busybox:local, "
                                                "command: [sh, -c, 'exit 4']}\n", "f.yaml")))
    assert failed.returncode == 1


def test_ctrl_c_cancels_ctl_run_and_cleans_up(tmp_path: Path, image: str, docker_client: docker.DockerClient) -> None:
    path = write_dag(tmp_path, "name: ctrlc-slow\nsteps:\n"
                               "  nap: {image: conveyor/busybox:local, command: [sleep, '60']}\n")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    process = subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", "run", str(path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 30
    while not docker_client.containers.list(filters={"label": "dev.conveyor.dag=ctrlc-slow"}):
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "cancelling run" in stderr and "Traceback" not in stderr
    assert docker_client.containers.list(all=True, filters={"label": "dev.conveyor.dag=ctrlc-slow"}) == []
    assert _processes_mentioning(str(path)) == []


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found
