"""The runtime contract against Docker (the real engine) and Kubernetes (the kmock *emulator* with a fake
kubelet: not a cluster, see tests/kube_emulator.py), then what only the Kubernetes runtime has: the Pod
manifest (checked with ``kubernetes-validate --strict``), its name and labels, and how Pod ends map to
outcomes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from runner.containers import DockerRuntime, labels_for
from runner.kubernetes import KubernetesRuntime, label_value, pod_manifest, pod_name
from tests.kube_emulator import IMAGE_ID, Emulator, Exec, FakeKubelet, Script
from tests.runtime_contract import PREFIX, RuntimeContract, plan, run

NAMESPACE = "conveyor-test"


class DockerHarness:
    def __init__(self, client: docker.DockerClient, image: str):
        self.client = client
        self.runtime = DockerRuntime(client)
        self.image = image
        self.image_id = client.images.get(image).id

    def script(self, script: Callable[[Exec], Script]) -> None:
        pass  # the engine runs the real argv

    def live(self) -> list[dict[str, str]]:
        found = self.client.containers.list(all=True, filters={"label": f"dev.conveyor.prefix={PREFIX}"})
        return [c.labels for c in found]

    def remove_behind_its_back(self, run_id: str) -> None:
        for c in self.client.containers.list(all=True, filters={"label": f"dev.conveyor.run={run_id}"}):
            c.remove(force=True)


class KubernetesHarness:
    """The Kubernetes runtime against the kmock emulator; the fake kubelet plays each case's script."""

    def __init__(self, emulator: Emulator, kubelet: FakeKubelet):
        self.kubelet = kubelet
        self.runtime = KubernetesRuntime(emulator.api_client(), NAMESPACE, poll_seconds=0.05)
        self.image = "conveyor/busybox:local"
        self.image_id = IMAGE_ID

    def script(self, script: Callable[[Exec], Script]) -> None:
        self.kubelet.script = script

    def live(self) -> list[dict[str, str]]:
        return [pod.metadata.labels for pod in self.runtime.core.list_namespaced_pod(NAMESPACE).items]

    def remove_behind_its_back(self, run_id: str) -> None:
        for pod in self.runtime.core.list_namespaced_pod(NAMESPACE).items:
            if pod.metadata.annotations.get("dev.conveyor.run") == run_id:
                self.runtime.core.delete_namespaced_pod(pod.metadata.name, NAMESPACE)


@pytest.fixture
def cluster() -> Iterator[tuple[Emulator, FakeKubelet]]:
    with Emulator() as emulator, FakeKubelet(emulator, NAMESPACE) as kubelet:
        yield emulator, kubelet


@pytest.fixture
def k8s(cluster: tuple[Emulator, FakeKubelet]) -> Iterator[KubernetesHarness]:
    harness = KubernetesHarness(*cluster)
    yield harness
    harness.runtime.api_client.close()


class TestDockerRuntime(RuntimeContract):
    @pytest.fixture
    def harness(self, docker_client: docker.DockerClient, image: str) -> DockerHarness:
        return DockerHarness(docker_client, image)


class TestKubernetesRuntime(RuntimeContract):
    @pytest.fixture
    def harness(self, k8s: KubernetesHarness) -> KubernetesHarness:
        return k8s

    def test_engine_version_is_the_api_servers(self, k8s: KubernetesHarness) -> None:
        assert k8s.runtime.engine_version() == "v1.32.0-kmock"

    def test_the_pod_it_creates(self, k8s: KubernetesHarness) -> None:
        step = plan(k8s.image, ["true"], env={"A": "1"}, working_dir="/w", cpus=0.5, memory=64 * 2**20,
                    timeout=2.5, pull="if-not-present")
        outcome, _ = run(k8s.runtime, step)
        assert outcome.ok
        (pod,) = k8s.kubelet.pods_seen
        assert outcome.container_id == pod["metadata"]["name"]
        container = pod["spec"]["containers"][0]
        assert container["command"] == ["true"] and "args" not in container
        assert container["env"] == [{"name": "A", "value": "1"}] and container["workingDir"] == "/w"
        assert container["resources"] == {"limits": {"cpu": "500m", "memory": str(64 * 2**20)},
                                          "requests": {"cpu": "500m", "memory": str(64 * 2**20)}}
        assert container["imagePullPolicy"] == "IfNotPresent"
        assert pod["spec"]["activeDeadlineSeconds"] == 3 and pod["spec"]["restartPolicy"] == "Never"

    def test_oom_killed(self, k8s: KubernetesHarness) -> None:
        k8s.script(lambda x: Script(exit_code=137, reason="OOMKilled"))
        outcome, _ = run(k8s.runtime, plan(k8s.image, ["sh", "-c", "eat"], memory=16 * 2**20))
        assert (outcome.exit_code, outcome.reason) == (137, "oom_killed") and "16 MiB" in outcome.error

    @pytest.mark.parametrize("waiting", ["ImagePullBackOff", "ErrImagePull", "InvalidImageName"])
    def test_pull_failures_are_image_not_found(self, k8s: KubernetesHarness, waiting: str) -> None:
        k8s.script(lambda x: Script(waiting=waiting))
        outcome, _ = run(k8s.runtime, plan("registry.invalid/x:1", ["true"], pull="always"))
        assert outcome.reason == "image_not_found" and waiting in outcome.error

    def test_create_container_config_error(self, k8s: KubernetesHarness) -> None:
        k8s.script(lambda x: Script(waiting="CreateContainerConfigError"))
        outcome, _ = run(k8s.runtime, plan(k8s.image, ["true"]))
        assert outcome.reason == "create_failed" and "CreateContainerConfigError" in outcome.error

    def test_evicted(self, k8s: KubernetesHarness) -> None:
        k8s.script(lambda x: Script(seconds=0.2, exit_code=137, reason="Error", pod_reason="Evicted"))
        outcome, _ = run(k8s.runtime, plan(k8s.image, ["sleep", "9"]))
        assert outcome.reason == "evicted"

    def test_a_pod_that_never_starts(self, cluster: tuple[Emulator, FakeKubelet]) -> None:
        emulator, kubelet = cluster
        kubelet.script = lambda x: Script(waiting="ContainerCreating")
        runtime = KubernetesRuntime(emulator.api_client(), NAMESPACE, poll_seconds=0.05, start_timeout=0.5)
        outcome, _ = run(runtime, plan("conveyor/busybox:local", ["true"]))
        assert outcome.reason == "start_timeout" and "0.5s" in outcome.error
        assert runtime.core.list_namespaced_pod(NAMESPACE).items == []

    def test_a_second_pod_for_the_same_attempt_is_refused(self, k8s: KubernetesHarness) -> None:
        step = plan(k8s.image, ["true"])
        manifest = pod_manifest(step, labels_for(step, 1, PREFIX), NAMESPACE)
        k8s.kubelet.script = lambda x: Script(waiting="ContainerCreating")
        k8s.runtime.core.create_namespaced_pod(NAMESPACE, manifest)
        outcome, _ = run(k8s.runtime, step)
        assert outcome.reason == "create_failed" and "already exists" in outcome.error

    def test_docker_pullable_image_ids_become_digests(self, k8s: KubernetesHarness) -> None:
        k8s.script(lambda x: Script(image_id="docker-pullable://reg.example/busybox@sha256:" + "ab" * 32))
        outcome, _ = run(k8s.runtime, plan(k8s.image, ["true"]))
        assert outcome.image_digest == outcome.image_id == "reg.example/busybox@sha256:" + "ab" * 32
        k8s.script(lambda x: Script(image_id="sha256:" + "cd" * 32))  # a kind-loaded image: no repo digest
        outcome, _ = run(k8s.runtime, plan(k8s.image, ["true"], step="s2"))
        assert outcome.image_id == "sha256:" + "cd" * 32 and outcome.image_digest is None


# Pure parts: names, labels and the manifest.

LONG_RUN = "a-dag-with-a-rather-long-name-for-its-runs-20261120T170000-3fa9c1"


@pytest.mark.parametrize(("run_id", "step", "attempt"), [
    ("etl-20261120T170000-3fa9c1", "load", 1),
    (LONG_RUN, "Transform_Step.v2", 12),
    ("__", "__", 1),
])
def test_pod_names_are_dns_labels(run_id: str, step: str, attempt: int) -> None:
    import re

    name = pod_name(PREFIX, run_id, step, attempt)
    assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
    assert name != pod_name("other", run_id, step, attempt) != pod_name(PREFIX, run_id, step, attempt + 1)


def test_label_values_are_safe_and_distinct() -> None:
    assert label_value("etl") == "etl"
    long = label_value(LONG_RUN + "x")
    assert len(long) <= 63 and long != label_value(LONG_RUN + "y")
    assert label_value("a b/c") != "a b/c" and label_value("-") != ""


def _manifests() -> list[dict]:
    weird = plan("reg.example:5000/team/img@sha256:" + "ab" * 32, ["python", "-m", "job", "--x=1"],
                 run_id=LONG_RUN, step="Transform_Step.v2", env={"A": "1", "EMPTY": ""}, working_dir="/srv",
                 timeout=0.2, cpus=2.25, memory=3 * 2**30, pull="always")
    simple = plan("conveyor/busybox:local", ["true"])
    producer = plan("conveyor/busybox:local", ["true"], outputs=("rows", "path"), env={"A": "1"})
    return [pod_manifest(p, labels_for(p, n, prefix), "default")
            for p, n, prefix in ((simple, 1, "conveyor"), (weird, 40, "a prefix/with:odd chars"),
                                 (producer, 2, "conveyor"))]


def test_pod_manifests_pass_kubernetes_validate_strict(tmp_path: Path) -> None:
    binary = shutil.which("kubernetes-validate") or str(Path(__file__).resolve().parent.parent
                                                         / ".venv/bin/kubernetes-validate")
    files = []
    for i, manifest in enumerate(_manifests()):
        path = tmp_path / f"pod-{i}.json"
        path.write_text(json.dumps(manifest))
        files.append(str(path))
    done = subprocess.run([binary, "--strict", "-k", "1.32.0", *files], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" passed ") == len(files), done.stdout
    bad = _manifests()[0]
    bad["spec"]["containers"][0]["securityContext"]["dropCapabilities"] = ["ALL"]  # not a field: strict says so
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    done = subprocess.run([binary, "--strict", "-k", "1.32.0", str(tmp_path / "bad.json")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and "dropCapabilities" in done.stdout + done.stderr


def test_pod_manifest_security_and_labels() -> None:
    simple, weird, _ = _manifests()
    container = simple["spec"]["containers"][0]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "privileged": False,
                                             "capabilities": {"drop": ["ALL"]}}
    assert "runAsNonRoot" not in json.dumps(simple)  # the image decides its user
    assert simple["spec"]["automountServiceAccountToken"] is False
    assert "activeDeadlineSeconds" not in simple["spec"] and "resources" not in container
    assert weird["spec"]["activeDeadlineSeconds"] == 1  # whole seconds, at least one
    assert weird["metadata"]["annotations"]["dev.conveyor.run"] == LONG_RUN
    assert weird["metadata"]["labels"]["dev.conveyor.run"] == label_value(LONG_RUN) != LONG_RUN
    assert weird["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "2250m", "memory": str(3 * 2**30)}


def test_worker_context_selects_the_runtime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from runner.context import WorkerContext
    from scheduler.settings import Settings

    settings = Settings("redis://127.0.0.1:1/0", prefix=PREFIX)
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.setenv("CONVEYOR_RUNTIME", "kubernetes")
    monkeypatch.setenv("CONVEYOR_K8S_NAMESPACE", "steps")
    runtime = WorkerContext(settings).runtime
    assert isinstance(runtime, KubernetesRuntime) and runtime.namespace == "steps"
    assert runtime.api_client.configuration.host == "https://127.0.0.1:6443"
    runtime.api_client.close()
    monkeypatch.delenv("CONVEYOR_K8S_NAMESPACE")
    monkeypatch.setenv("POD_NAMESPACE", "conveyor")  # what the chart gives its workers
    runtime = WorkerContext(settings).runtime
    assert runtime.namespace == "conveyor"
    runtime.api_client.close()
    monkeypatch.delenv("POD_NAMESPACE")
    runtime = WorkerContext(settings).runtime
    assert runtime.namespace == "default"
    runtime.api_client.close()
    monkeypatch.setenv("CONVEYOR_RUNTIME", "podman")
    with pytest.raises(ValueError, match="podman"):
        _ = WorkerContext(settings).runtime
    monkeypatch.delenv("CONVEYOR_RUNTIME")
    assert isinstance(WorkerContext(settings).runtime, DockerRuntime)

