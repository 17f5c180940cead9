"""A step's ``network:`` (none, bridge, a named network) in both runtimes, and containers removed in the
background once their attempt is recorded (``run(keep=True)`` then ``reap_later``, as workers do)."""

from __future__ import annotations

import time

import docker
import kubernetes
import pytest

from runner.containers import DockerRuntime, labels_for
from runner.kubernetes import NETWORK_LABEL, KubernetesRuntime, pod_manifest
from scheduler.spec import load_bytes
from tests.runtime_contract import PREFIX, plan, run

IMAGE = "conveyor/busybox:local"


def interfaces(runtime: DockerRuntime, network: str) -> tuple[str | None, bytes]:
    outcome, output = run(runtime, plan(IMAGE, ["ls", "/sys/class/net"], network=network))
    return outcome.reason, output


def test_none_leaves_only_loopback_and_bridge_is_the_default(docker_client: docker.DockerClient,
                                                            image: str) -> None:
    runtime = DockerRuntime(docker_client)
    assert interfaces(runtime, "none") == (None, b"lo\n")
    reason, output = interfaces(runtime, "bridge")
    assert reason is None and b"eth0" in output


def test_a_named_network(docker_client: docker.DockerClient, image: str) -> None:
    runtime = DockerRuntime(docker_client)
    network = docker_client.networks.create(f"{PREFIX}-net", labels={"dev.conveyor.prefix": PREFIX})
    try:
        outcome, output = run(runtime, plan(IMAGE, ["ls", "/sys/class/net"], network=network.name))
        assert outcome.ok and b"eth0" in output
    finally:
        network.remove()
    missing, _ = run(runtime, plan(IMAGE, ["true"], network=f"{PREFIX}-no-such-net"))
    assert missing.reason == "start_failed" and f"{PREFIX}-no-such-net" in missing.error  # the engine checks at start


def test_the_spec_carries_it_to_the_plan() -> None:
    spec = load_bytes(f"name: n\ndefaults: {{network: none}}\nsteps:\n  a: {{image: {IMAGE}, command: [x]}}\n"
                      f"  b: {{image: {IMAGE}, command: [x], network: bridge}}\n", "n.yaml")
    assert (spec.steps["a"].network, spec.steps["b"].network) == ("none", "bridge")


def test_kubernetes_labels_none_and_refuses_named_networks() -> None:
    labels = {"dev.conveyor.prefix": PREFIX, "dev.conveyor.attempt": "1"}
    assert pod_manifest(plan(IMAGE, ["true"], network="none"), labels, "ns")["metadata"]["labels"][NETWORK_LABEL] \
        == "none"
    assert NETWORK_LABEL not in pod_manifest(plan(IMAGE, ["true"]), labels, "ns")["metadata"]["labels"]
    runtime = KubernetesRuntime(kubernetes.client.ApiClient(kubernetes.client.Configuration()))  # never called
    outcome, _ = run(runtime, plan(IMAGE, ["true"], network="backend"))
    assert outcome.reason == "network_unsupported" and "backend" in outcome.error


def test_removed_in_the_background_after_the_result(docker_client: docker.DockerClient, image: str) -> None:
    runtime = DockerRuntime(docker_client)
    step = plan(IMAGE, ["true"])
    outcome = runtime.run(step, labels_for(step, 1, PREFIX), lambda _: None, lambda: None, keep=True)
    assert outcome.ok and outcome.kept
    assert docker_client.containers.get(outcome.container_id).status == "exited"  # kept until recorded
    began = time.monotonic()
    runtime.reap_later([outcome.container_id])
    assert time.monotonic() - began < 0.05  # handed over, not waited for
    assert runtime.drain(10)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(outcome.container_id)


def test_removed_at_once_when_the_runtime_fails(docker_client: docker.DockerClient, image: str) -> None:
    runtime = DockerRuntime(docker_client)

    def boom(*_args: object) -> None:
        raise RuntimeError("the runner broke")

    runtime._run_container = boom  # type: ignore[method-assign]
    step = plan(IMAGE, ["true"])
    with pytest.raises(RuntimeError):
        runtime.run(step, labels_for(step, 1, PREFIX), lambda _: None, lambda: None, keep=True)
    assert docker_client.containers.list(all=True, filters={"label": f"dev.conveyor.prefix={PREFIX}"}) == []
