"""The Docker runtime against the real engine: every way an attempt can end has a clear reason."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import docker
import pytest

from runner.containers import DockerRuntime, Outcome, labels_for
from scheduler.model import Backoff, StepPlan
from tests.conftest import TEST_PREFIX, free_port


def plan(image: str, argv: list[str], **overrides) -> StepPlan:
    values = dict(run_id="r1", dag="d", step="s", image=image, argv=tuple(argv), env={}, working_dir=None,
                  timeout=None, cpus=None, memory=None, pull="never", queue="default", retries=0,
                  backoff=Backoff(), tags={})
    values.update(overrides)
    return StepPlan(**values)


def run(runtime: DockerRuntime, step: StepPlan, stop=lambda: None) -> tuple[Outcome, bytes]:
    output = bytearray()
    outcome = runtime.run(step, labels_for(step, 1, TEST_PREFIX), output.extend, stop)
    return outcome, bytes(output)


@pytest.fixture
def runtime(docker_client: docker.DockerClient) -> DockerRuntime:
    return DockerRuntime(docker_client)


def test_success_output_env_workdir_and_cleanup(runtime: DockerRuntime, image: str,
                                                docker_client: docker.DockerClient) -> None:
    step = plan(image, ["sh", "-c", 'echo "$GREETING from $(pwd)"; echo err >&2'], env={"GREETING": "hi"},
                working_dir="/tmp")
    outcome, output = run(runtime, step)
    assert outcome.ok and outcome.exit_code == 0 and outcome.reason is None
    assert b"hi from /tmp" in output and b"err" in output
    assert outcome.image_id.startswith("sha256:") and outcome.image_id == docker_client.images.get(image).id
    assert outcome.image_digest is None  # built locally: no registry digest
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(outcome.container_id)


def test_argv_is_not_a_shell(runtime: DockerRuntime, image: str) -> None:
    _outcome, output = run(runtime, plan(image, ["echo", "$(id -u); rm -rf /", "`x`"]))
    assert output == b"$(id -u); rm -rf / `x`\n"


def test_exit_code(runtime: DockerRuntime, image: str) -> None:
    outcome, _ = run(runtime, plan(image, ["sh", "-c", "exit 3"]))
    assert (outcome.exit_code, outcome.reason, outcome.error) == (3, "exit_code", "exited with code 3")


def test_timeout_kills_the_container(runtime: DockerRuntime, image: str) -> None:
    began = time.monotonic()
    outcome, _ = run(runtime, plan(image, ["sleep", "30"], timeout=1.0))
    assert outcome.reason == "timeout" and "timeout of 1s" in outcome.error
    assert time.monotonic() - began < 10


def test_should_stop_cancels(runtime: DockerRuntime, image: str) -> None:
    began = time.monotonic()
    outcome, _ = run(runtime, plan(image, ["sleep", "30"]), stop=lambda: "cancelled" if time.monotonic() - began > 1
                     else None)
    assert outcome.reason == "cancelled"
    assert time.monotonic() - began < 10


def test_command_not_found(runtime: DockerRuntime, image: str) -> None:
    outcome, _ = run(runtime, plan(image, ["no-such-command", "x"]))
    assert outcome.reason == "command_not_found" and "no-such-command" in outcome.error


def test_image_not_found(runtime: DockerRuntime) -> None:
    outcome, _ = run(runtime, plan("conveyor/does-not-exist:1", ["true"]))
    assert outcome.reason == "image_not_found" and "conveyor/does-not-exist:1" in outcome.error


def test_oom_kill(runtime: DockerRuntime, image: str) -> None:
    # Fill a 16 MiB memory limit through a tmpfs-free path: a shell variable growing without bound.
    step = plan(image, ["sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}"],
                memory=16 * 1024 * 1024)
    outcome, _ = run(runtime, step)
    assert outcome.reason == "oom_killed", outcome
    assert "16 MiB" in outcome.error


def test_non_utf8_and_megabytes_of_output(runtime: DockerRuntime, image: str) -> None:
    outcome, output = run(runtime, plan(image, ["sh", "-c", "printf '\\377\\376'; head -c 3000000 /dev/zero"]))
    assert outcome.ok
    assert output.startswith(b"\xff\xfe") and len(output) == 3_000_002


def test_labels_name_run_step_and_attempt(runtime: DockerRuntime, image: str,
                                          docker_client: docker.DockerClient) -> None:
    seen = {}

    def look() -> None:
        for c in docker_client.containers.list(filters={"label": "dev.conveyor.run=r1"}):
            seen.update(c.labels)

    step = plan(image, ["sleep", "2"])
    run(runtime, step, stop=lambda: look())
    assert seen["dev.conveyor.step"] == "s" and seen["dev.conveyor.attempt"] == "1"
    assert seen["dev.conveyor.dag"] == "d" and seen["dev.conveyor.prefix"] == TEST_PREFIX


@pytest.fixture
def registry(tmp_path: Path) -> str:
    """Debian's docker-registry on loopback (the default bridge reaches no other registry)."""
    binary = shutil.which("docker-registry")
    assert binary, "docker-registry is missing: run ./dev setup (apt-get install docker-registry)"
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/data\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    import urllib.request

    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://{address}/v2/", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    yield address
    process.terminate()
    process.wait(timeout=10)


def test_repo_digest_is_recorded_for_a_pulled_image(runtime: DockerRuntime, image: str, registry: str,
                                                    docker_client: docker.DockerClient) -> None:
    ref = f"{registry}/conveyor/busybox:digest-test"
    local = docker_client.images.get(image)
    local.tag(ref)
    for line in docker_client.images.push(ref, stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(ref)
    try:
        outcome, _ = run(runtime, plan(ref, ["true"], pull="if-not-present"))
        assert outcome.ok
        pulled = docker_client.images.get(ref)
        assert outcome.image_digest == f"{registry}/conveyor/busybox@" + pulled.attrs["RepoDigests"][0].split("@")[1]
        assert outcome.image_digest.split("@")[1].startswith("sha256:")
    finally:
        docker_client.images.remove(ref, force=True)
