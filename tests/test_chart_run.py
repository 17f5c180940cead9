"""The Helm chart, run: every ci/*-values.yaml variant is rendered (helm-python-sdk) and each workload's
container spec is then started for real with Docker against a real Redis, the way a kubelet would:

- **image**: the test image ``conveyor/chart-run:<hash of the work tree>`` stands in for ``conveyor:<tag>`` and for the
  bundled Redis's ``redis:7.2`` (set through the chart's own ``image.*``/``redis.image.*`` values, as a
  user would point them at a registry). It is the busybox image of the other tests plus a ``ctl``
  entry point (``ENTRYPOINT ["ctl"]`` like the project image) that runs *this work tree* with the test
  venv's Python; the host's ``/usr`` (glibc, ``redis-server``), the Python and the venv are mounted
  read-only. Why not the project image: it is built only under ``-m image`` (debootstrap, minutes,
  network); this test is about the chart's specs and runs in the default suite. tests/test_image.py
  covers the image itself.
- **command/args**: ``command`` replaces the image's entry point, ``args`` its CMD; ``$(VAR)`` references
  are expanded from the container's env (``$$`` escapes), as the kubelet does.
- **env**: ``value``, ``secretKeyRef`` and ``configMapKeyRef`` from the rendered objects (the generated
  Redis password and signing key included) plus the Secrets a user creates beforehand (the test's
  ``PROVIDED``), ``fieldRef`` for the Pod's name and namespace.
- **securityContext**: ``runAsUser``/``runAsGroup``, ``supplementalGroups`` and ``fsGroup`` as extra
  groups, ``readOnlyRootFilesystem``, dropped capabilities, ``allowPrivilegeEscalation: false``.
- **volumes**: ConfigMaps and Secrets as files (``items`` honoured), emptyDirs and the Redis PVC as
  fresh folders, the Docker socket hostPath as a bind mount; ``workingDir``.
- **probes**: httpGet against the container's address, exec with ``docker exec``.

Then: the schedulers become ready, exactly one leads (``/readyz`` says ``leader``, the other
``standby``), a worker runs the scheduled steps of the DAG mounted from the ConfigMap (sibling
containers through the socket), and every probe answers. The server Pod answers its probes, serves
the scheduled run, and a run triggered through its API with the generated operator token succeeds.

Not covered (no API server, no kubelet here; docs/deploy.md says so too): scheduling, Services and
DNS (a Docker network alias stands in for each Service name), NetworkPolicies (not enforced),
restarts on failed probes, the git-sync containers (their folder is filled by the test, with
git-sync's ``current`` symlink), KEDA/HPA, and the kubernetes runtime's Pods (that variant checks
that both roles start, become ready and lead; tests/test_runtime_contract.py runs Pods on kmock).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import helm_python as helm
import pytest
import yaml

from tests.kube_emulator import Emulator, Exec, FakeKubelet, Script
from tests.redis_servers import make_certificates

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "conveyor"
NAMESPACE = "jobs"
RELEASE = "demo"
# Tagged per work tree: the image's ctl runs the tree that built it, and engineers share one engine.
TEST_IMAGE = f"conveyor/chart-run:{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
STEP_IMAGE = "conveyor/busybox:local"
CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
PYTHON_HOME = Path(os.path.realpath(sys.executable)).parents[1]  # e.g. /root/.pyenv/versions/3.11.7
VENV = Path(sys.prefix)
KUBERNETES_RUNTIME = "kubernetes-runtime"

pytestmark = pytest.mark.timeout(300)

# A DAG that fires every 5 s (six fields, seconds last), so that the leading scheduler itself creates
# runs for the worker: the ConfigMap (or git-sync folder) is the only way it reaches the scheduler.
RUN_DAG = """\
name: chart-run
schedule: {cron: "* * * * * */5"}
defaults: {image: conveyor/busybox:local, timeout: 1m}
steps:
  hello: {command: [sh, -c, 'echo "hello from the chart in $(hostname)"']}
  after: {command: [echo, after], depends_on: [hello]}
"""

# What a user creates before installing a variant (the Secrets its values name). Filled per test.
EXTERNAL_PASSWORD = "external-secret-42"
KEDA_PASSWORD = "keda-secret-42"


# --- the image -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_image(image: str, docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox + a ``ctl`` entry point running this work tree with the test venv (mounted at run time)."""
    context = tmp_path_factory.mktemp("chart-run-image")
    (context / "ctl").write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {VENV}/bin/python -m scheduler.cli.main \"$@\"\n")
    (context / "ctl").chmod(0o755)
    (context / "Dockerfile").write_text(f'FROM {image}\nCOPY ctl /bin/ctl\nENTRYPOINT ["ctl"]\nCMD ["worker"]\n')
    docker_client.images.build(path=str(context), tag=TEST_IMAGE, rm=True)
    return TEST_IMAGE


def runtime_mounts() -> dict[str, dict[str, str]]:
    """What the test image needs from the host, read-only: glibc and redis-server, Python, the venv, the code."""
    mounts = {"/usr": "/usr", "/usr/lib": "/lib", "/usr/lib64": "/lib64", str(PYTHON_HOME): str(PYTHON_HOME),
              str(VENV): str(VENV), str(ROOT): str(ROOT)}
    return {host: {"bind": target, "mode": "ro"} for host, target in mounts.items()}


# --- the objects a kubelet would read ----------------------------------------------------------


@dataclass
class Cluster:
    """The rendered objects plus the Secrets the user made beforehand."""

    objects: list[dict[str, Any]]

    def find(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.objects:
            if obj["kind"] == kind and obj["metadata"]["name"] == name:
                return obj
        raise AssertionError(f"{kind} {name!r} does not exist: neither rendered nor provided")

    def secret(self, name: str) -> dict[str, bytes]:
        obj = self.find("Secret", name)
        data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
        return data

    def config_map(self, name: str) -> dict[str, bytes]:
        return {k: v.encode() for k, v in (self.find("ConfigMap", name).get("data") or {}).items()}

    def workloads(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in {"Deployment", "StatefulSet"}]


def secret_object(name: str, **data: str | bytes) -> dict[str, Any]:
    encoded = {k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode() for k, v in data.items()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NAMESPACE},
            "data": encoded}


REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: known names are replaced, unknown ones kept, ``$$`` is ``$``."""
    return REFERENCE.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def resolve_env(container: dict[str, Any], cluster: Cluster, pod_name: str) -> dict[str, str]:
    assert "envFrom" not in container, "envFrom is not emulated"
    env: dict[str, str] = {}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        source = item["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[name] = cluster.secret(ref["name"])[ref["key"]].decode()
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[name] = cluster.config_map(ref["name"])[ref["key"]].decode()
        elif "fieldRef" in source:
            env[name] = {"metadata.namespace": NAMESPACE, "metadata.name": pod_name}[source["fieldRef"]["fieldPath"]]
        else:
            raise AssertionError(f"{name}: valueFrom {source} is not emulated")
    return env


# --- the kubelet -------------------------------------------------------------------------------


@dataclass
class Pod:
    name: str
    workload: str
    container: Any  # docker container
    spec: dict[str, Any]  # the main container's spec
    env: dict[str, str]

    def address(self) -> str:
        self.container.reload()
        networks = self.container.attrs["NetworkSettings"]["Networks"]
        return next(iter(networks.values()))["IPAddress"]

    def logs(self) -> str:
        return self.container.logs().decode(errors="replace")

    def exec(self, *argv: str) -> tuple[int, str]:
        code, output = self.container.exec_run(list(argv), environment=self.env)
        return code, output.decode(errors="replace")

    def probe(self, kind: str) -> tuple[bool, str]:
        """Run the container's liveness/readiness probe once, as the kubelet would."""
        probe = self.spec[kind]
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = get["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in self.spec["ports"] if p["name"] == port)
            url = f"http://{self.address()}:{port}{get['path']}"
            try:
                with urllib.request.urlopen(url, timeout=probe.get("timeoutSeconds", 1) + 2) as response:
                    return 200 <= response.status < 400, response.read().decode()
            except urllib.error.HTTPError as exc:
                return False, exc.read().decode()
            except (urllib.error.URLError, OSError) as exc:
                return False, str(exc)
        if "exec" in probe:
            code, output = self.exec(*probe["exec"]["command"])
            return code == 0, output
        raise AssertionError(f"{self.name}: probe {probe} is not emulated")


@dataclass
class Kubelet:
    client: docker.DockerClient
    cluster: Cluster
    network: str
    folder: Path
    token: str
    prepare_volume: dict[str, Any] = field(default_factory=dict)  # volume name -> callable(folder)
    extra_env: dict[str, dict[str, str]] = field(default_factory=dict)  # component -> env the test adds
    pods: list[Pod] = field(default_factory=list)
    cleanups: list[Any] = field(default_factory=list)
    fake_kubelet: FakeKubelet | None = None

    def start(self, workload: dict[str, Any], index: int, aliases: tuple[str, ...] = ()) -> Pod:
        kind, name = workload["kind"], workload["metadata"]["name"]
        pod_name = f"{name}-{index}" if kind == "StatefulSet" else f"{name}-{uuid.uuid4().hex[:5]}-{index}"
        spec = workload["spec"]["template"]["spec"]
        (container,) = spec["containers"][:1]  # the main container; sidecars are the git-sync ones
        assert all(c["name"].startswith("git-sync") for c in spec["containers"][1:] + spec.get("initContainers", []))
        env = resolve_env(container, self.cluster, pod_name)
        component = workload["metadata"]["labels"].get("app.kubernetes.io/component", "")
        env.update(self.extra_env.get(component, {}))
        volumes = self._volumes(pod_name, spec, workload)
        binds = dict(runtime_mounts())
        if "KUBECONFIG" in env:
            binds[str(Path(env["KUBECONFIG"]).parent)] = {"bind": str(Path(env["KUBECONFIG"]).parent), "mode": "ro"}
        for mount in container.get("volumeMounts", []):
            source = volumes[mount["name"]]
            if mount.get("subPath"):
                source = source / mount["subPath"]
            binds[str(source)] = {"bind": mount["mountPath"], "mode": "ro" if mount.get("readOnly") else "rw"}
        pod_sc, sc = spec.get("securityContext", {}), container.get("securityContext", {})
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        gid = sc.get("runAsGroup", pod_sc.get("runAsGroup", uid))
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            assert uid not in (None, 0), f"{name}: runAsNonRoot needs a numeric non-root runAsUser"
        groups = [str(g) for g in pod_sc.get("supplementalGroups", [])]
        if "fsGroup" in pod_sc:
            groups.append(str(pod_sc["fsGroup"]))
        command = [expand(a, env) for a in container.get("command", [])] or None
        args = [expand(a, env) for a in container.get("args", [])] or None
        endpoint = self.client.api.create_endpoint_config(aliases=list(aliases)) if aliases else None
        started = self.client.containers.run(
            container["image"], command=args, entrypoint=command, environment=env, detach=True,
            name=f"chartrun-{self.token}-{pod_name}"[:120], hostname=pod_name[:63],
            user=f"{uid}:{gid}" if uid is not None else None, group_add=groups or None,
            read_only=bool(sc.get("readOnlyRootFilesystem")), cap_drop=sc.get("capabilities", {}).get("drop"),
            security_opt=["no-new-privileges:true"] if sc.get("allowPrivilegeEscalation") is False else None,
            working_dir=container.get("workingDir"), volumes=binds, network=self.network,
            networking_config={self.network: endpoint} if endpoint else None,
            labels={"dev.conveyor.chart-run": self.token, "app.kubernetes.io/component":
                    workload["metadata"]["labels"].get("app.kubernetes.io/component", "")},
        )
        pod = Pod(pod_name, name, started, container, env)
        self.pods.append(pod)
        return pod

    def _volumes(self, pod_name: str, spec: dict[str, Any], workload: dict[str, Any]) -> dict[str, Path]:
        made: dict[str, Path] = {}
        claims = [c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])]
        for volume in spec.get("volumes", []) + [{"name": c, "persistentVolumeClaim": {}} for c in claims]:
            name = volume["name"]
            folder = self.folder / pod_name / name
            folder.mkdir(parents=True)
            if "emptyDir" in volume or "persistentVolumeClaim" in volume:
                folder.chmod(0o1777)
                if name in self.prepare_volume:
                    self.prepare_volume[name](folder)
            elif "configMap" in volume:
                self._files(folder, self.cluster.config_map(volume["configMap"]["name"]), volume["configMap"])
            elif "secret" in volume:
                self._files(folder, self.cluster.secret(volume["secret"]["secretName"]), volume["secret"])
            elif "hostPath" in volume:
                folder = Path(volume["hostPath"]["path"])
            else:
                raise AssertionError(f"{pod_name}: volume {volume} is not emulated")
            made[name] = folder
        return made

    @staticmethod
    def _files(folder: Path, data: dict[str, bytes], source: dict[str, Any]) -> None:
        items = source.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            path = folder / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data[item["key"]])
            path.chmod(0o444)  # the kubelet makes them readable through fsGroup; any uid here
        folder.chmod(0o755)

    def stop(self) -> None:
        for pod in self.pods:
            with contextlib.suppress(docker.errors.NotFound):
                pod.container.remove(force=True)
        for cleanup in reversed(self.cleanups):
            cleanup()


# --- rendering a variant -----------------------------------------------------------------------


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def values_for(variant: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The variant, pointed at the test image, with a unique prefix and the host's Docker socket group."""
    overlay: dict[str, Any] = {
        "image": {"repository": TEST_IMAGE.split(":")[0], "tag": TEST_IMAGE.split(":")[1], "pullPolicy": "Never"},
        "redis": {"image": {"repository": TEST_IMAGE.split(":")[0], "tag": TEST_IMAGE.split(":")[1],
                            "pullPolicy": "Never"}},
        "config": {"prefix": prefix},
        "worker": {"dockerSocket": {"groupId": os.stat("/var/run/docker.sock").st_gid}},
    }
    if not variant.get("dags", {}).get("gitSync", {}).get("enabled"):
        overlay["dags"] = {"files": {"chart-run.yaml": RUN_DAG}}
    return deep_merge(variant, overlay)


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [doc for path, text in sorted(files.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# --- the test ----------------------------------------------------------------------------------


@pytest.fixture
def kubelet(tmp_path: Path, docker_client: docker.DockerClient, test_image: str) -> Iterator[Kubelet]:
    token = uuid.uuid4().hex[:8]
    network = docker_client.networks.create(f"chartrun-{token}", driver="bridge")
    node = Kubelet(docker_client, Cluster([]), network.name, tmp_path / "pods", token)
    yield node
    node.stop()
    for leftover in docker_client.containers.list(all=True, filters={"label": f"dev.conveyor.prefix=cr{token}"}):
        leftover.remove(force=True)
    for _attempt in range(20):  # the engine may still be detaching removed containers
        try:
            network.remove()
            break
        except docker.errors.APIError:
            time.sleep(0.25)
    shutil.rmtree(tmp_path / "pods", ignore_errors=True)


def external_redis(kubelet: Kubelet, values: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    """The variant's external Redis as a user would run it: TLS with a private CA on the URL's host and
    port, the ACL user of docs/deploy.md, the password in the Secret the values name."""
    url = values["externalRedis"]["url"]
    host, port = re.match(r"rediss://([^:/]+):(\d+)/", url).groups()
    certificates = make_certificates(folder / "tls", names=(host,), addresses=())
    acl = re.search(r"^user .*$", (ROOT / "docs" / "deploy.md").read_text(), re.M).group(0)
    acl = acl.replace("PASSWORD", EXTERNAL_PASSWORD).replace("~conveyor:*", f"~{values['config']['prefix']}:*")
    ca_secret = values["externalRedis"]["tls"]["caSecret"]
    provided = [secret_object(values["externalRedis"]["existingSecret"],
                              **{values["externalRedis"]["existingSecretPasswordKey"]: EXTERNAL_PASSWORD}),
                secret_object(ca_secret, **{values["externalRedis"]["tls"].get("caKey", "ca.crt"):
                                          certificates.ca.read_bytes()})]
    tls = {str(certificates.cert.parent): {"bind": "/tls", "mode": "ro"}}
    args = ["--port", "0", "--tls-port", port, "--tls-cert-file", "/tls/tls.crt", "--tls-key-file", "/tls/tls.key",
            "--tls-ca-cert-file", "/tls/ca.crt", "--tls-auth-clients", "no", "--save", "", "--dir", "/tmp",
            "--user", "default", "off", "--user", *acl.split()[1:]]
    container = kubelet.client.containers.run(
        TEST_IMAGE, entrypoint=["redis-server"], command=args, detach=True, user="10001:10001",
        name=f"chartrun-{kubelet.token}-external-redis", volumes={**runtime_mounts(), **tls}, tmpfs={"/tmp": ""},
        network=kubelet.network, labels={"dev.conveyor.chart-run": kubelet.token},
        networking_config={kubelet.network: kubelet.client.api.create_endpoint_config(aliases=[host])})
    kubelet.pods.append(Pod("external-redis", "external-redis", container, {}, {}))
    return provided


@pytest.mark.parametrize("values_file", CI_FILES, ids=lambda p: p.name.removesuffix("-values.yaml"))
def test_chart_workloads_run(values_file: Path, kubelet: Kubelet, tmp_path: Path) -> None:
    variant = yaml.safe_load(values_file.read_text()) or {}
    prefix = f"cr{kubelet.token}"
    values = values_for(variant, prefix)
    objects = render(values)
    provided: list[dict[str, Any]] = []
    if not values.get("redis", {}).get("enabled", True):
        provided += external_redis(kubelet, values, tmp_path)
    elif values.get("redis", {}).get("auth", {}).get("existingSecret"):
        auth = values["redis"]["auth"]
        provided.append(secret_object(auth["existingSecret"],
                                      **{auth.get("existingSecretPasswordKey", "redis-password"): KEDA_PASSWORD}))
    kubelet.cluster = Cluster(objects + provided)
    if values.get("config", {}).get("runtime") == "kubernetes":
        kubelet.extra_env["worker"] = kube_api(kubelet, tmp_path)
    if values.get("dags", {}).get("gitSync", {}).get("enabled"):
        kubelet.prepare_volume["dags"] = lambda folder: git_sync_checkout(folder, values["dags"]["gitSync"]["subPath"])

    by_component = {w["metadata"]["labels"]["app.kubernetes.io/component"]: w for w in kubelet.cluster.workloads()}
    try:
        run_variant(kubelet, by_component, values, prefix, values_file.name)
    except BaseException:
        for pod in kubelet.pods:
            print(f"--- {pod.name}\n{pod.logs()[-3000:]}", file=sys.stderr)
        raise


def kube_api(kubelet: Kubelet, folder: Path) -> dict[str, str]:
    """A kmock API server on all interfaces and a kubeconfig for it, in place of the in-cluster config
    (the real kubelet injects KUBERNETES_SERVICE_HOST and the ServiceAccount token; kmock speaks plain
    HTTP, so the worker gets ``KUBECONFIG`` instead). Its fake kubelet plays every step Pod as a
    container printing one line."""
    emulator = Emulator(host="0.0.0.0").__enter__()
    fake = FakeKubelet(emulator, NAMESPACE).__enter__()

    def play(run: Exec) -> Script:
        return Script(output=f"hello from the chart in {run.pod['metadata']['name']}\n".encode())

    fake.script = play
    # Run in reverse: the fake kubelet stops before the API it polls.
    kubelet.cleanups += [lambda: emulator.__exit__(None, None, None), lambda: fake.__exit__(None, None, None)]
    kubelet.fake_kubelet = fake
    gateway = kubelet.client.networks.get(kubelet.network).attrs["IPAM"]["Config"][0]["Gateway"]
    port = emulator.url.rsplit(":", 1)[1]
    config = folder / "kube" / "config"
    config.parent.mkdir(parents=True)
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": f"http://{gateway}:{port}"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "namespace": NAMESPACE}}],
        "users": [{"name": "kmock", "user": {}}]}))
    config.parent.chmod(0o755)
    config.chmod(0o644)
    return {"KUBECONFIG": str(config)}


def git_sync_checkout(folder: Path, sub_path: str) -> None:
    """What git-sync leaves in its root: a worktree and the ``current`` symlink to it."""
    worktree = folder / ".worktrees" / "0123abc"
    (worktree / sub_path).mkdir(parents=True)
    (worktree / sub_path / "chart-run.yaml").write_text(RUN_DAG)
    (folder / "current").symlink_to(".worktrees/0123abc")
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def run_variant(kubelet: Kubelet, workloads: dict[str, dict[str, Any]], values: dict[str, Any], prefix: str,
                variant: str) -> None:
    if "redis" in workloads:
        sts = workloads["redis"]
        service = sts["spec"]["serviceName"]
        redis = kubelet.start(sts, 0, aliases=(service,))
        wait_for(lambda: redis.probe("readinessProbe")[0], 30, "the bundled Redis's readiness probe")
        ok, output = redis.probe("livenessProbe")
        assert ok and "PONG" in output, output
        # The generated password is required: a client without it is refused.
        code, output = redis.exec("sh", "-c", "REDISCLI_AUTH= redis-cli -p 6379 set probe 1")
        assert "NOAUTH" in output, output

    schedulers = [kubelet.start(workloads["scheduler"], i) for i in range(workloads["scheduler"]["spec"]["replicas"])]
    worker = kubelet.start(workloads["worker"], 0)
    for pod in [*schedulers, worker]:
        wait_for(lambda pod=pod: pod.probe("readinessProbe")[0], 60, f"{pod.name} ready")
        ok, output = pod.probe("livenessProbe")
        assert ok and output == "ok\n", (pod.name, output)
        assert pod.env["CONVEYOR_SIGNING_KEY"], "the signing key reached the container"
        assert "$(" not in pod.env["REDIS_URL"], "the kubelet expanded the password reference"
    roles = sorted(json.loads(pod.probe("readinessProbe")[1])["checks"]["loop:scheduler"]["state"]
                   for pod in schedulers)
    assert roles == ["leader"] + ["standby"] * (len(schedulers) - 1), roles
    assert sum("leading (fencing token" in pod.logs() for pod in schedulers) == 1

    # The DAG came from the mounted ConfigMap (or git-sync folder) and the leader schedules it.
    leader = next(p for p in schedulers if "leading (fencing token" in p.logs())
    # Whichever scheduler synced the folder first submitted it (the other found the same content).
    assert any(re.search(r"chart-run\.yaml: chart-run version \d+", pod.logs()) for pod in schedulers), \
        [pod.logs() for pod in schedulers]
    if values["config"].get("runtime") == "kubernetes":
        pass  # the steps run as Pods on the kmock emulator (a scripted container: no Docker)

    def succeeded() -> dict | None:
        code, output = leader.exec("ctl", "runs", "chart-run", "-o", "json")
        if code != 0:
            return None
        runs = [r for r in json.loads(output) if r["trigger"] == "schedule" and r["state"] == "success"]
        return runs[0] if runs else None

    run = wait_for(succeeded, 90, f"{variant}: a scheduled run of chart-run to succeed")
    code, output = leader.exec("ctl", "status", run["run_id"], "-o", "json")
    assert code == 0, output
    steps = {s["name"]: s for s in json.loads(output)["steps"]}
    assert {name: s["state"] for name, s in steps.items()} == {"hello": "success", "after": "success"}
    assert steps["hello"]["attempts"][0]["host"] == worker.name, "the worker Pod ran the step"
    if kubelet.fake_kubelet is not None:
        assert kubelet.fake_kubelet.pods_seen, "the steps ran as Pods created through the API"
    code, output = leader.exec("ctl", "logs", run["run_id"], "hello")
    assert "hello from the chart in" in output, output
    if "server" in workloads:
        serve(kubelet, workloads["server"], run, json.loads(leader.exec("ctl", "status", run["run_id"], "-o",
                                                                          "json")[1]))
    helm_test(kubelet)


def serve(kubelet: Kubelet, workload: dict[str, Any], scheduled: dict[str, Any], status: dict[str, Any]) -> None:
    """The server Pod: its probes answer, it refuses a request without a token, shows the scheduled run as
    ``ctl status`` does, and a run triggered through it with the generated operator token (so with the
    signing key the worker checks) succeeds."""
    server = kubelet.start(workload, 0)
    wait_for(lambda: server.probe("readinessProbe")[0], 60, f"{server.name} ready")
    assert json.loads(server.probe("readinessProbe")[1]) == {"ready": True}
    ok, output = server.probe("livenessProbe")
    assert ok and json.loads(output) == {"ok": True}, output
    (volume,) = [v for v in workload["spec"]["template"]["spec"]["volumes"] if v["name"] == "tokens"]
    tokens = kubelet.cluster.secret(volume["secret"]["secretName"])[volume["secret"]["items"][0]["key"]].decode()
    token = next(line.split()[1] for line in tokens.splitlines() if line.startswith("operator "))
    port = next(p["containerPort"] for p in server.spec["ports"] if p["name"] == "http")
    base = f"http://{server.address()}:{port}/api/v1"

    def call(method: str, path: str, body: dict | None = None, auth: bool = True) -> tuple[int, Any]:
        request = urllib.request.Request(f"{base}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {token}"} if auth else {})})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert call("GET", "/runs", auth=False)[0] == 401
    assert call("GET", f"/runs/{scheduled['run_id']}") == (200, status)
    code, created = call("POST", "/dags/chart-run/runs", {"params": {}})
    assert code == 201, created

    def ended() -> dict | None:
        found = call("GET", f"/runs/{created['run_id']}")[1]
        return found if found["state"] in {"success", "failed", "cancelled"} else None

    done = wait_for(ended, 90, "the run triggered through the server to end")
    assert done["state"] == "success" and done["trigger"] == "manual", done
    assert token not in server.logs()


def helm_test(kubelet: Kubelet) -> None:
    """``helm test``: the hook Pod runs to completion and exits 0 against the release's Redis."""
    (pod,) = [o for o in kubelet.cluster.objects if o["kind"] == "Pod" and
              o["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    as_workload = {**pod, "spec": {"template": {"spec": pod["spec"]}}}
    started = kubelet.start(as_workload, 0)
    result = started.container.wait(timeout=60)
    assert result["StatusCode"] == 0, started.logs()
