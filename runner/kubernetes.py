"""Running one step attempt as a Kubernetes Pod (the official ``kubernetes`` client).

Each attempt is one Pod with one container named ``step`` and ``restartPolicy: Never``. The runtime
creates it, follows its log into ``on_output``, polls it until it ends, maps the end to an
:class:`~runner.containers.Outcome` and deletes it (zero grace), whatever happened.

What differs from :class:`~runner.containers.DockerRuntime`, on purpose:

- The container runs with ``allowPrivilegeEscalation: false``, every capability dropped and the
  runtime's default seccomp profile. ``runAsNonRoot`` is *not* forced: the image decides its user.
  A step that runs as root still cannot chown files it does not own or bind ports below 1024.
- The timeout is ``activeDeadlineSeconds``, whole seconds, counted by the kubelet from the Pod's
  start (image pull included). The runtime deletes the Pod itself if the kubelet has not ended it
  ``DEADLINE_GRACE_SECONDS`` later.
- stdout and stderr come interleaved through the log API (Docker's attach is the same mix).
- A Pod whose container has not started within ``start_timeout`` (unschedulable, stuck volume...)
  ends as ``start_timeout``.
- Resolved ``secrets:`` never appear in the Pod spec: they go into a Secret made for the attempt (same
  name as the Pod), which the container reads through ``valueFrom.secretKeyRef``. The Secret is made
  first (a Pod whose Secret is missing cannot start), then owned by the Pod (``ownerReferences``, so
  the cluster deletes it with the Pod even if the worker dies), and deleted by the runtime when the
  attempt ends. API verbs used: pods create/get/list/delete, pods/log get, secrets create/patch/delete.

``pod_manifest`` is pure, so every Pod spec can be checked offline with ``kubernetes-validate``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace
from typing import Any

import kubernetes.client
import kubernetes.config
import urllib3.exceptions
import urllib3.util
from kubernetes.client.exceptions import ApiException

from runner import outputs
from runner.containers import (
    DETACH_REASONS,
    LABEL_PREFIX,
    LOG_FLUSH_BYTES,
    AttemptKey,
    Leftover,
    Outcome,
    pump_in_batches,
)
from scheduler.model import StepPlan

CONTAINER = "step"
OUTPUTS_CONTAINER = "outputs"  # the reader sidecar of a step that declares outputs
OUTPUTS_VOLUME = "conveyor-outputs"
OUTPUTS_IMAGE = "busybox:1.36"  # CONVEYOR_K8S_OUTPUTS_IMAGE overrides it (a mirror, a pinned digest)
POLL_SECONDS = 0.5
DEADLINE_GRACE_SECONDS = 10.0
START_TIMEOUT_SECONDS = 600.0
API_ERROR_PATIENCE_SECONDS = 30.0
# Every API call gives up after this long (a read timeout raises like a dropped connection): an API
# server that accepts a request and never answers must not hang a step's poll, nor a worker's reaper
# thread, which would then neither adopt nor judge any expired attempt. A followed log has no read
# timeout (a quiet step sends nothing for minutes); only its connection is bounded.
REQUEST_TIMEOUT_SECONDS = 10.0
# urllib3 would try a timed-out read 3 more times (4 x the timeout per call): a read is tried once, a
# refused connection twice. The callers retry in their own loops (the poll, the next sweep).
RETRIES = urllib3.util.Retry(total=1, connect=1, read=0, redirect=0, status=0, other=0)
PULL_POLICIES = {"never": "Never", "if-not-present": "IfNotPresent", "always": "Always"}
# Waiting reasons that mean the image will not come (the kubelet would only back off and retry).
IMAGE_WAITING_REASONS = frozenset({"ErrImageNeverPull", "ImagePullBackOff", "ErrImagePull", "InvalidImageName"})
# Waiting reasons that mean the container cannot be made from this spec.
CREATE_WAITING_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
MANAGED_BY = {"app.kubernetes.io/managed-by": "conveyor"}
# A Pod has no "no network" switch: a step with ``network: none`` gets this label, and the chart's
# NetworkPolicy (templates/networkpolicy-steps.yaml) denies such Pods all traffic, in and out, where the
# cluster's network plugin enforces NetworkPolicies. ``bridge`` is the Pod network; named networks do
# not exist in Kubernetes and are refused (reason ``network_unsupported``).
NETWORK_LABEL = "dev.conveyor.network"
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_Transport = (urllib3.exceptions.HTTPError, OSError)


def label_value(value: str) -> str:
    """``value`` if Kubernetes accepts it as a label value, else a readable, unique stand-in of ≤ 63 chars.

    The exact values also go into the Pod's annotations (:func:`pod_manifest`).
    """
    if len(value) <= 63 and _LABEL_VALUE.match(value):
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[: 63 - 11].strip("-_.")
    return f"{readable}-{digest}" if readable else digest


def pod_name(prefix: str, run_id: str, step: str, attempt: int | str) -> str:
    """A DNS-1123 label (≤ 63 chars) that reads as ``<run>-<step>-<attempt>`` and ends in a hash of all
    four (the prefix too: two deployments may share a namespace)."""
    digest = hashlib.sha256(f"{prefix}\0{run_id}\0{step}\0{attempt}".encode()).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9]+", "-", f"{run_id}-{step}-{attempt}".lower())
    readable = readable[: 63 - 11].strip("-")
    return f"{readable}-{digest}" if readable else f"cv-{digest}"


def _quantity_cpu(cpus: float) -> str:
    return f"{max(1, round(cpus * 1000))}m"


def secret_key(env_name: str) -> str:
    """A Secret data key for an env var name (keys allow ``[-._a-zA-Z0-9]`` only)."""
    if re.fullmatch(r"[-._a-zA-Z0-9]{1,253}", env_name):
        return env_name
    return "k-" + hashlib.sha256(env_name.encode()).hexdigest()[:16]


def secret_values(plan: StepPlan) -> dict[str, str]:
    """The env vars of a prepared plan that are resolved secrets (``plan.secrets`` names them)."""
    return {name: str(plan.env[name]) for name in plan.secrets if name in plan.env}


def secret_manifest(name: str, values: Mapping[str, str], labels: Mapping[str, str], namespace: str,
                    ) -> dict[str, Any]:
    """The per-attempt Secret holding a step's resolved secrets (pure)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**MANAGED_BY, **{key: label_value(str(value)) for key, value in labels.items()}},
        },
        "type": "Opaque",
        "immutable": True,
        "data": {secret_key(k): base64.b64encode(v.encode()).decode() for k, v in values.items()},
    }


def pod_manifest(plan: StepPlan, labels: Mapping[str, str], namespace: str, *,
                 outputs_image: str = OUTPUTS_IMAGE, output_cap: int = outputs.DEFAULT_CAP) -> dict[str, Any]:
    """The Pod for one attempt, as plain data (pure; ``labels`` as :func:`runner.containers.labels_for` makes them).

    Env vars named in ``plan.secrets`` are references to the attempt's Secret (:func:`secret_manifest`, same
    name as the Pod), never values."""
    attempt = labels.get(f"{LABEL_PREFIX}.attempt", "0")
    name = pod_name(labels.get(f"{LABEL_PREFIX}.prefix", ""), plan.run_id, plan.step, attempt)
    limits: dict[str, str] = {}
    if plan.cpus:
        limits["cpu"] = _quantity_cpu(plan.cpus)
    if plan.memory:
        limits["memory"] = str(int(plan.memory))
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": plan.image,
        "command": list(plan.argv),  # exec form: no shell between the plan and the process
        "imagePullPolicy": PULL_POLICIES.get(plan.pull, "IfNotPresent"),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if plan.env:
        secret = secret_values(plan)
        container["env"] = [
            {"name": str(k), "valueFrom": {"secretKeyRef": {"name": name, "key": secret_key(str(k))}}}
            if k in secret else {"name": str(k), "value": str(v)}
            for k, v in plan.env.items()
        ]
    if plan.working_dir:
        container["workingDir"] = plan.working_dir
    if limits:
        container["resources"] = {"limits": limits, "requests": dict(limits)}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,  # a step has no business with the API server
        "enableServiceLinks": False,  # no *_SERVICE_HOST variables: the env is the plan's
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
    }
    if plan.timeout:
        spec["activeDeadlineSeconds"] = max(1, math.ceil(plan.timeout))
    if plan.outputs:
        add_outputs_reader(spec, container, plan.outputs, outputs_image, output_cap)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**MANAGED_BY, **{key: label_value(str(value)) for key, value in labels.items()},
                       **({NETWORK_LABEL: "none"} if plan.network == "none" else {})},
            "annotations": {key: str(value) for key, value in labels.items()},
        },
        "spec": spec,
    }


def add_outputs_reader(spec: dict[str, Any], container: dict[str, Any], names: Iterable[str], image: str,
                       cap: int) -> None:
    """Outputs on a real cluster, without exec and without API access from the Pod: the step writes to a
    shared ``emptyDir``; a native sidecar (an init container with ``restartPolicy: Always``, Kubernetes
    1.29+) waits beside it, and when the kubelet stops it with SIGTERM after the step's container has
    exited, it prints the declared files, framed (``runner.outputs.READER_SCRIPT``), to its log. The Pod
    ends only after that, so the runtime reads a complete dump before it deletes the Pod."""
    mount = {"name": OUTPUTS_VOLUME, "mountPath": outputs.OUTPUTS_DIR}
    env = {"name": outputs.OUTPUTS_ENV, "value": outputs.OUTPUTS_DIR}
    container.setdefault("env", []).append(env)
    container.setdefault("volumeMounts", []).append(mount)
    spec.setdefault("volumes", []).append({"name": OUTPUTS_VOLUME, "emptyDir": {}})
    spec.setdefault("initContainers", []).append({
        "name": OUTPUTS_CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "command": ["sh", "-c", outputs.READER_SCRIPT, "conveyor-outputs", str(cap), *names],
        "env": [env],
        "volumeMounts": [{**mount, "readOnly": True}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    })


class KubernetesRuntime:
    """The Kubernetes API behind :class:`~runner.containers.ContainerRuntime`: one Pod per attempt."""

    def __init__(self, api_client: kubernetes.client.ApiClient, namespace: str = "default", *,
                 poll_seconds: float = POLL_SECONDS, start_timeout: float = START_TIMEOUT_SECONDS,
                 request_timeout: float = REQUEST_TIMEOUT_SECONDS, outputs_image: str = OUTPUTS_IMAGE):
        self.api_client = api_client
        pools = api_client.rest_client.pool_manager
        pools.connection_pool_kw["retries"] = RETRIES  # for the pools made from now on
        pools.clear()
        self.outputs_image = outputs_image  # the reader sidecar's image (a busybox: sh, wc, base64, sleep)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.namespace = namespace
        self.poll_seconds = poll_seconds
        self.start_timeout = start_timeout
        self.timeout = request_timeout  # every call's _request_timeout
        self._version: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KubernetesRuntime:
        """In-cluster config when ``KUBERNETES_SERVICE_HOST`` is set, else the kubeconfig
        (``KUBECONFIG`` or ``~/.kube/config``). The namespace is ``CONVEYOR_K8S_NAMESPACE``, else the worker
        Pod's own ``POD_NAMESPACE`` (the chart sets it; its Role is there), else ``default``."""
        environ = os.environ if environ is None else environ
        configuration = kubernetes.client.Configuration()
        if environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        else:
            kubernetes.config.load_kube_config(config_file=environ.get("KUBECONFIG") or None,
                                               client_configuration=configuration)
        namespace = environ.get("CONVEYOR_K8S_NAMESPACE") or environ.get("POD_NAMESPACE") or "default"
        return cls(kubernetes.client.ApiClient(configuration), namespace,
                   outputs_image=environ.get("CONVEYOR_K8S_OUTPUTS_IMAGE") or OUTPUTS_IMAGE)

    def engine_version(self) -> str:
        if self._version is None:
            self._version = str(kubernetes.client.VersionApi(self.api_client).get_code(
                _request_timeout=self.timeout).git_version)
        return self._version

    def run(self, plan: StepPlan, labels: Mapping[str, str], on_output: Callable[[bytes], None],
            should_stop: Callable[[], str | None], *, keep: bool = False) -> Outcome:
        if plan.network not in ("", "bridge", "none"):
            return Outcome(None, "network_unsupported", f"network {plan.network!r}: the Kubernetes runtime runs "
                           "steps on the Pod network (bridge) or with none; a named network is Docker's")
        manifest = pod_manifest(plan, labels, self.namespace, outputs_image=self.outputs_image,
                                output_cap=outputs.output_cap())
        name = manifest["metadata"]["name"]
        secrets = secret_values(plan)
        try:
            if secrets:
                self._create_secret(secret_manifest(name, secrets, labels, self.namespace))
            try:
                pod = self.core.create_namespaced_pod(self.namespace, manifest, _request_timeout=self.timeout)
            except BaseException:
                if secrets:
                    self.delete_secret(name)
                raise
        except ApiException as exc:
            if exc.status == 409:
                return Outcome(None, "create_failed", f"a Pod or Secret named {name!r} already exists in namespace "
                               f"{self.namespace!r} (a leftover of this attempt?)", container_id=name)
            return Outcome(None, "create_failed", f"cannot create the Pod: {_explain(exc)}")
        except _Transport as exc:
            return Outcome(None, "kubernetes_unreachable", f"cannot reach the Kubernetes API: {exc}")
        outcome: Outcome | None = None
        try:
            if secrets:
                self._own_secret(name, pod)
            outcome = _Attempt(self, plan, name, on_output, should_stop).follow()
            outcome = self._collect_outputs(name, plan, outcome)
        finally:
            if outcome is None or not (outcome.detached or keep):  # a detached Pod runs on under its adopter
                self.delete(name)
                if secrets:
                    self.delete_secret(name)
        return replace(outcome, kept=True) if keep and not outcome.detached else outcome

    def _collect_outputs(self, name: str, plan: StepPlan, outcome: Outcome) -> Outcome:
        """A successful attempt's declared outputs, from the reader sidecar's log (see
        :func:`add_outputs_reader`); a missing, too large or unreadable one fails the attempt."""
        if not plan.outputs or not outcome.ok:
            return outcome
        try:
            log = self.core.read_namespaced_pod_log(name, self.namespace, container=OUTPUTS_CONTAINER,
                                                    _preload_content=False, _request_timeout=self.timeout).data
        except (ApiException, *_Transport) as exc:
            return replace(outcome, reason="outputs_unreadable", error=f"cannot read the outputs: {exc}")
        found = outputs.parse_dump(log.decode("utf-8", "replace"))
        if found is None:
            return replace(outcome, reason="output_missing",
                           error="the outputs reader left no complete dump (was it killed?)")
        try:
            values = outputs.collect(plan.outputs, outputs.fetch_from(found))
        except outputs.OutputFailure as exc:
            return replace(outcome, reason=exc.reason, error=str(exc))
        return replace(outcome, outputs=values)

    def _create_secret(self, manifest: dict[str, Any]) -> None:
        try:
            self.core.create_namespaced_secret(self.namespace, manifest, _request_timeout=self.timeout)
        except ApiException as exc:
            if exc.status != 409:
                raise
            # A leftover of this very attempt (a worker died between create and delete): replace it.
            self.delete_secret(manifest["metadata"]["name"])
            self.core.create_namespaced_secret(self.namespace, manifest, _request_timeout=self.timeout)

    def _own_secret(self, name: str, pod: Any) -> None:
        """Make the Pod the Secret's owner, so that the cluster deletes the Secret with the Pod."""
        uid = pod.metadata.uid if hasattr(pod, "metadata") else pod["metadata"]["uid"]
        if not uid:
            return
        owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid, "blockOwnerDeletion": False}
        with contextlib.suppress(ApiException, *_Transport):
            self.core.patch_namespaced_secret(name, self.namespace, {"metadata": {"ownerReferences": [owner]}},
                                              _request_timeout=self.timeout)

    def delete_secret(self, name: str) -> None:
        """Delete the attempt's Secret; one already gone is fine."""
        with contextlib.suppress(ApiException, *_Transport):
            self.core.delete_namespaced_secret(name, self.namespace, _request_timeout=self.timeout)

    def delete(self, name: str) -> None:
        """Delete a Pod at once (zero grace, dependents first); a Pod already gone is fine."""
        with contextlib.suppress(ApiException, *_Transport):
            self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0,
                                            propagation_policy="Foreground", _request_timeout=self.timeout)

    def orphans(self, prefix: str, live_attempts: Collection[AttemptKey] = ()) -> list[Leftover]:
        """The Pods carrying ``prefix`` whose attempt is not in ``live_attempts`` (for the reaper)."""
        selector = f"{LABEL_PREFIX}.prefix={label_value(prefix)}"
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector,
                                             _request_timeout=self.timeout).items
        found = []
        for pod in pods:
            meta = pod.metadata
            exact = dict(meta.annotations or {})
            if exact.get(f"{LABEL_PREFIX}.prefix") != prefix or meta.deletion_timestamp:
                continue  # the selector may be a hash stand-in; a Pod being deleted is already reaped
            leftover = Leftover.from_labels(meta.name, exact)
            if leftover.key not in live_attempts:
                found.append(leftover)
        return found

    def reap(self, ids: Iterable[str]) -> None:
        """Delete the given Pods (names from :meth:`orphans`, or of ``run(keep=True)``) and their Secrets at once."""
        for name in ids:
            self.delete(name)
            self.delete_secret(name)  # the owner reference does it too, in a cluster; not in every emulator


class _Attempt:
    """One Pod from creation to its end: polls it, follows its log, stops it when asked."""

    def __init__(self, runtime: KubernetesRuntime, plan: StepPlan, name: str, on_output: Callable[[bytes], None],
                 should_stop: Callable[[], str | None]):
        self.runtime = runtime
        self.plan = plan
        self.name = name
        self.on_output = on_output
        self.should_stop = should_stop
        self.logs: _LogPump | None = None
        self.image_id: str | None = None
        self.killed = False

    def outcome(self, exit_code: int | None, reason: str | None, error: str | None) -> Outcome:
        digest = self.image_id if self.image_id and "@sha256:" in self.image_id else None
        return Outcome(exit_code, reason, error, image_id=self.image_id, image_digest=digest, container_id=self.name)

    def follow(self) -> Outcome:
        try:
            return self._follow()
        finally:
            if self.logs:
                self.logs.join(timeout=2.0 if self.killed else 10.0)

    def _follow(self) -> Outcome:
        plan, began = self.plan, time.monotonic()
        deadline = began + plan.timeout + DEADLINE_GRACE_SECONDS if plan.timeout else None
        last_ok = began
        while True:
            reason = self._stop_reason()
            if reason in DETACH_REASONS:
                self.killed = True  # not killed, but its log is no longer ours to wait for
                return replace(self.outcome(None, reason, f"left running for another worker: {reason}"), detached=True)
            if reason:
                self.kill()
                return self.outcome(None, reason, f"stopped: {reason}")
            try:
                pod = self.runtime.core.read_namespaced_pod(self.name, self.runtime.namespace,
                                                            _request_timeout=self.runtime.timeout)
                last_ok = time.monotonic()
            except ApiException as exc:
                if exc.status == 404:
                    return self.outcome(None, "container_removed",
                                        "the Pod was deleted while it ran (by someone else?)")
                pod = None
                error = _explain(exc)
            except _Transport as exc:
                pod, error = None, str(exc)
            if pod is None:
                if time.monotonic() - last_ok > API_ERROR_PATIENCE_SECONDS:
                    return self.outcome(None, "kubernetes_error",
                                        f"lost the Kubernetes API while the step ran: {error}")
            else:
                ended = self._look(pod, began)
                if ended is not None:
                    return ended
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                return self.outcome(None, "timeout", f"killed after the step's timeout of {plan.timeout:g}s")
            time.sleep(self.runtime.poll_seconds)

    def kill(self) -> None:
        self.killed = True
        self.runtime.delete(self.name)

    def _stop_reason(self) -> str | None:
        try:
            return self.should_stop()
        except Exception:
            return None

    def _look(self, pod, began: float) -> Outcome | None:
        """The outcome if the Pod has ended (or cannot start), else None; starts the log pump once it runs."""
        status = pod.status
        phase = status.phase if status else None
        if pod.metadata.deletion_timestamp:
            return self.outcome(None, "container_removed", "the Pod was deleted while it ran (by someone else?)")
        state = _container(status)
        if state is not None and state.image_id:
            self.image_id = _image_id(state.image_id)
        waiting = state.state.waiting if state is not None and state.state else None
        running = state is not None and state.state and (state.state.running or state.state.terminated)
        if running and self.logs is None:
            self.logs = _LogPump(self.runtime, self.name, self.on_output)
        if phase in ("Succeeded", "Failed"):
            return self._ended(pod, state)
        if waiting is not None and waiting.reason in IMAGE_WAITING_REASONS:
            how = "pull policy is 'never'" if self.plan.pull == "never" else "it could not be pulled"
            return self.outcome(None, "image_not_found", f"image '{self.plan.image}' is not on the node and {how} "
                                f"({waiting.reason}: {waiting.message or 'no message'})")
        if waiting is not None and waiting.reason in CREATE_WAITING_REASONS:
            return self.outcome(None, "create_failed", f"the container could not be created: "
                                f"{waiting.reason}: {waiting.message or 'no message'}")
        if not running and time.monotonic() - began > self.runtime.start_timeout:
            why = _pending_reason(status)
            return self.outcome(None, "start_timeout",
                                f"the Pod did not start within {self.runtime.start_timeout:g}s{why}")
        return None

    def _ended(self, pod, state) -> Outcome:
        plan, status = self.plan, pod.status
        terminated = None
        if state is not None and state.state and state.state.terminated:
            terminated = state.state.terminated
        elif state is not None and state.last_state and state.last_state.terminated:
            terminated = state.last_state.terminated
        exit_code = terminated.exit_code if terminated is not None else None
        if status.phase == "Succeeded":
            return self.outcome(0 if exit_code is None else exit_code, None, None)
        if status.reason == "DeadlineExceeded":
            return self.outcome(exit_code, "timeout", f"killed after the step's timeout of {plan.timeout:g}s")
        if status.reason == "Evicted":
            return self.outcome(exit_code, "evicted", f"evicted from its node: {status.message or 'no message'}")
        if terminated is None:
            return self.outcome(None, "pod_failed", f"the Pod failed: {status.reason or ''} {status.message or ''}"
                                .strip())
        text = f"{terminated.reason or ''} {terminated.message or ''}"
        if terminated.reason == "OOMKilled":
            limit = f" (limit {plan.memory // (1024 * 1024)} MiB)" if plan.memory else ""
            return self.outcome(exit_code, "oom_killed", f"killed for running out of memory{limit}")
        if terminated.reason in ("StartError", "ContainerCannotRun") and (
                "executable file not found" in text or "no such file or directory" in text):
            return self.outcome(127, "command_not_found", f"command not found in the image: {plan.argv[0]!r}")
        if terminated.reason in ("StartError", "ContainerCannotRun"):
            return self.outcome(exit_code, "start_failed", f"the container did not start: {text.strip()}")
        if exit_code != 0:
            return self.outcome(exit_code, "exit_code", f"exited with code {exit_code}")
        return self.outcome(exit_code, "pod_failed", f"the Pod failed: {text.strip() or status.reason}")


def _container(status):
    for state in (status.container_statuses or []) if status else []:
        if state.name == CONTAINER:
            return state
    return None


def _image_id(value: str) -> str:
    """``docker-pullable://repo@sha256:…`` (dockershim) → ``repo@sha256:…``; containerd's values stay."""
    return value.split("://", 1)[1] if "://" in value else value


def _pending_reason(status) -> str:
    for condition in (status.conditions or []) if status else []:
        if condition.status == "False" and (condition.reason or condition.message):
            return f" ({condition.reason or ''}: {condition.message or ''})"
    return ""


def _explain(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body)["message"])
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"


class _LogPump:
    """Follows the Pod's log in a thread, handing it on in batches; never raises."""

    def __init__(self, runtime: KubernetesRuntime, name: str, on_output: Callable[[bytes], None]):
        self.runtime = runtime
        self.name = name
        self.on_output = on_output
        self.response = None
        self.thread = threading.Thread(target=self._pump, daemon=True, name="conveyor-k8s-logs")
        self.thread.start()

    def _pump(self) -> None:
        try:
            self.response = self.runtime.core.read_namespaced_pod_log(
                self.name, self.runtime.namespace, container=CONTAINER, follow=True, _preload_content=False,
                _request_timeout=(self.runtime.timeout, None))
        except Exception:  # the Pod went away or the API dropped us: no log to follow
            return
        # The stream ends when the container does, or raises when the Pod goes away or we close it.
        assert self.response is not None
        pump_in_batches(self.response.stream(LOG_FLUSH_BYTES, decode_content=True), self.on_output)

    def join(self, timeout: float = 10.0) -> None:
        """Wait for the log's end (the API closes it when the container ends); close it if it lingers."""
        self.thread.join(timeout=timeout)
        if self.response is not None:
            with contextlib.suppress(Exception):
                self.response.close()
            with contextlib.suppress(Exception):
                self.response.release_conn()
        self.thread.join(timeout=1)
