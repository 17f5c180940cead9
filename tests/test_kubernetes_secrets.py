"""Kubernetes runtime: a step's resolved secrets go into a per-attempt Secret owned by the Pod and read
through ``valueFrom.secretKeyRef``, never into the Pod spec; the Secret is gone when the attempt ends.

Against the kmock *emulator* (tests/kube_emulator.py: an API that stores objects, no cluster). What it
cannot show: the kubelet resolving the reference (the fake kubelet reads the Secret itself, as a kubelet
would) and the garbage collector deleting the Secret with its owner (the runtime deletes it itself).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from kubernetes.client.exceptions import ApiException

import runner.kubernetes
from runner.containers import labels_for
from runner.kubernetes import KubernetesRuntime, pod_manifest, secret_manifest
from tests.kube_emulator import Emulator, Exec, FakeKubelet, Script
from tests.runtime_contract import PREFIX, plan
from tests.test_chart import VARIANTS, one

NAMESPACE = "secrets-test"
TOKEN = "s3cr3t-t0ken-value-42"
PASSWORD = "hunter2-but-longer"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cluster() -> Iterator[tuple[Emulator, FakeKubelet]]:
    with Emulator() as emulator, FakeKubelet(emulator, NAMESPACE) as kubelet:
        yield emulator, kubelet


def secret_plan():
    base = plan("conveyor/busybox:local", ["sh", "-c", "echo $API_TOKEN"])
    # What runner.job.prepare hands the runtime: secret values resolved into env, their names in secrets.
    return replace(base, env={**base.env, "PLAIN": "visible", "API_TOKEN": TOKEN, "DB_PASSWORD": PASSWORD},
                   secrets={"API_TOKEN": {"env": "WORKER_TOKEN"}, "DB_PASSWORD": {"file": "/run/db"}})


def forbidden(text: str) -> list[str]:
    """Every form of a secret value that must not appear: plain and base64."""
    needles = [TOKEN, PASSWORD, base64.b64encode(TOKEN.encode()).decode(),
               base64.b64encode(PASSWORD.encode()).decode()]
    return [n for n in needles if n in text]


def test_pod_manifest_references_the_secret_and_holds_no_value() -> None:
    step = secret_plan()
    labels = labels_for(step, 1, PREFIX)
    pod = pod_manifest(step, labels, NAMESPACE)
    name = pod["metadata"]["name"]
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["PLAIN"] == {"name": "PLAIN", "value": "visible"}
    assert env["API_TOKEN"] == {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": name, "key": "API_TOKEN"}}}
    assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == name
    assert forbidden(json.dumps(pod)) == []
    secret = secret_manifest(name, {"API_TOKEN": TOKEN, "DB_PASSWORD": PASSWORD}, labels, NAMESPACE)
    assert base64.b64decode(secret["data"]["API_TOKEN"]).decode() == TOKEN
    assert secret["immutable"] is True


def test_attempt_with_secrets_on_the_emulator(cluster: tuple[Emulator, FakeKubelet]) -> None:
    emulator, kubelet = cluster
    runtime = KubernetesRuntime(emulator.api_client(), NAMESPACE, poll_seconds=0.05)
    seen: dict[str, object] = {}

    def container(run: Exec) -> Script:
        """The kubelet's part: resolve the references from the Secret that exists while the Pod runs."""
        spec = run.pod["spec"]["containers"][0]
        secret = runtime.core.read_namespaced_secret(run.pod["metadata"]["name"], NAMESPACE)
        values = {e["name"]: base64.b64decode(secret.data[e["valueFrom"]["secretKeyRef"]["key"]]).decode()
                  for e in spec["env"] if "valueFrom" in e}
        return Script(output=f"token={values['API_TOKEN']}\n".encode())

    kubelet.script = container
    delete_secret = runtime.delete_secret

    def delete_and_remember(name: str) -> None:  # the Secret as it stood when the attempt ended
        seen["at_end"] = runtime.core.read_namespaced_secret(name, NAMESPACE).to_dict()
        delete_secret(name)

    runtime.delete_secret = delete_and_remember
    create_pod = runtime.core.create_namespaced_pod

    def create_with_uid(namespace: str, body: dict, **kwargs):  # kmock assigns no uid; an API server does
        return create_pod(namespace, {**body, "metadata": {**body["metadata"], "uid": "6f1e-uid-of-the-pod"}},
                          **kwargs)

    runtime.core.create_namespaced_pod = create_with_uid
    step = secret_plan()
    output = bytearray()
    outcome = runtime.run(step, labels_for(step, 1, PREFIX), output.extend, lambda: None)
    assert outcome.exit_code == 0 and outcome.reason is None, outcome
    assert output.decode() == f"token={TOKEN}\n", "the container got the value through the Secret"

    # No secret value anywhere in the Pod object the API stored (spec, annotations, labels...).
    (pod,) = kubelet.pods_seen
    assert forbidden(json.dumps(pod)) == []
    name = pod["metadata"]["name"]
    refs = [e for e in pod["spec"]["containers"][0]["env"] if "valueFrom" in e]
    assert {e["name"] for e in refs} == {"API_TOKEN", "DB_PASSWORD"}
    # The Secret was the attempt's own, owned by its Pod...
    assert pod["metadata"].get("uid"), "the API gave the Pod a uid"
    owners = seen["at_end"]["metadata"]["owner_references"]
    assert [(o["kind"], o["name"], o["uid"]) for o in owners] == [("Pod", name, pod["metadata"]["uid"])]
    # ... and it is gone with the attempt, like the Pod.
    with pytest.raises(ApiException) as gone:
        runtime.core.read_namespaced_secret(name, NAMESPACE)
    assert gone.value.status == 404
    assert runtime.core.list_namespaced_secret(NAMESPACE).items == []


def test_attempt_without_secrets_makes_no_secret(cluster: tuple[Emulator, FakeKubelet]) -> None:
    emulator, kubelet = cluster
    runtime = KubernetesRuntime(emulator.api_client(), NAMESPACE, poll_seconds=0.05)
    made: list[str] = []
    kubelet.script = lambda run: made.extend(s.metadata.name for s in
                                             runtime.core.list_namespaced_secret(NAMESPACE).items) or Script()
    step = plan("conveyor/busybox:local", ["true"])
    outcome = runtime.run(step, labels_for(step, 1, PREFIX), lambda _: None, lambda: None)
    assert outcome.exit_code == 0 and made == []


def test_chart_role_grants_exactly_what_the_runtime_uses() -> None:
    role = one("kubernetes-runtime", "Role")
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    code = Path(runner.kubernetes.__file__).read_text()
    used = set()
    for verb, resource in re.findall(r"self(?:\.runtime)?\.core\.(create|read|list|patch|delete)_namespaced_(\w+?)\(",
                                     code):
        resource = {"pod": "pods", "pod_log": "pods/log", "secret": "secrets"}[resource]
        used.add((resource, {"read": "get"}.get(verb, verb)))
    assert granted == used, f"granted but unused: {granted - used}; used but not granted: {used - granted}"
    assert VARIANTS["kubernetes-runtime"]["config"]["runtime"] == "kubernetes"
