"""The Helm chart in charts/conveyor, checked offline.

* Rendering and linting use helm-python-sdk, which embeds the Helm v4 SDK (no helm binary,
  no cluster): every variant is the defaults plus one charts/conveyor/ci/*-values.yaml.
* Every rendered manifest of a built-in kind is validated with kubernetes-validate in
  strict mode (unknown fields fail) against Kubernetes 1.32.
* ServiceMonitor (Prometheus Operator) and ScaledObject (KEDA) are CRDs that
  kubernetes-validate has no schema for: they are checked structurally here instead
  (see test_crd_objects_are_well_formed), not against the operators' real CRD schemas.
* What needs a real cluster (install, KEDA scaling, PVC behaviour) is in docs/deploy.md.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from scheduler.records import COMPACT_HASHES

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "conveyor"
KUBE_VERSION = "1.32.0"
RELEASE = "demo"
NAMESPACE = "jobs"

CI_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
VARIANTS: dict[str, dict[str, Any]] = {"defaults": {}}
VARIANTS.update({p.name.removesuffix("-values.yaml"): yaml.safe_load(p.read_text()) or {} for p in CI_FILES})

# Kinds whose schema is not built into Kubernetes: validated structurally below.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}


# --- rendering ---------------------------------------------------------------------------


@functools.cache
def _rendered(variant: str) -> tuple[dict[str, str], ...]:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values=VARIANTS[variant], name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__template__"] = path
                docs.append(doc)
    return tuple(docs)


def manifests(variant: str) -> list[dict[str, Any]]:
    """Rendered objects of a variant (each with its template path under "__template__")."""
    return [dict(d) for d in _rendered(variant)]


def clean(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "__template__"}


def of_kind(variant: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests(variant) if d["kind"] == kind]


def one(variant: str, kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in of_kind(variant, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{variant}: expected one {kind} *{name_suffix}, got {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"] if workload["kind"] == "Pod" else workload["spec"]["template"]["spec"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def main_container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    (c,) = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    return c


def values_of(variant: str) -> dict[str, Any]:
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(VARIANTS[variant])


all_variants = pytest.mark.parametrize("variant", sorted(VARIANTS))


# --- the chart as a whole ----------------------------------------------------------------


def test_ci_variants_exist():
    names = {p.name for p in CI_FILES}
    assert {
        "default-values.yaml",
        "external-redis-values.yaml",
        "keda-values.yaml",
        "kubernetes-runtime-values.yaml",
    } <= names


def test_chart_metadata():
    with helm.Chart.load(CHART) as chart:
        meta = chart.metadata
        assert meta["apiVersion"] == "v2"
        assert meta["appVersion"] == "0.1.0"
        assert chart.schema is not None, "values.schema.json is missing"


@all_variants
def test_lint_is_clean(variant):
    report = helm.lint(CHART, VARIANTS[variant], strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], problems or report["errors"]


@all_variants
def test_manifests_validate_strict(variant):
    """kubernetes-validate --strict -k 1.32.0 on every object of a built-in kind."""
    failures = []
    for doc in manifests(variant):
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(clean(doc), KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            failures.append(f"{doc['__template__']}: {doc['kind']}/{doc['metadata']['name']}: {where}: {e.message}")
    assert not failures, "\n".join(failures)


@all_variants
def test_every_object_is_namespaced_and_labelled(variant):
    for doc in manifests(variant):
        meta = doc["metadata"]
        assert meta["namespace"] == NAMESPACE, doc["__template__"]
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE, doc["__template__"]
        assert len(meta["name"]) <= 63


# --- the things that could break ---------------------------------------------------------


@all_variants
def test_two_scheduler_replicas_with_lease_ttl(variant):
    dep = one(variant, "Deployment", "-scheduler")
    assert dep["spec"]["replicas"] == 2
    # A rollout never takes the standby away first.
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    env = env_of(main_container(dep, "scheduler"))
    # Plain seconds: what `ctl scheduler --lease-ttl` accepts with or without duration parsing.
    assert env["CONVEYOR_LEASE_TTL"]["value"] == "10"
    assert main_container(dep, "scheduler")["args"][:3] == ["scheduler", "--metrics-port", "9100"]
    pdb = one(variant, "PodDisruptionBudget", "-scheduler")
    assert pdb["spec"]["minAvailable"] == 1


@all_variants
def test_shared_environment(variant):
    for name in ("scheduler", "worker", "server"):
        env = env_of(main_container(one(variant, "Deployment", f"-{name}"), name))
        assert {"REDIS_URL", "CONVEYOR_PREFIX", "CONVEYOR_RUNTIME"} <= env.keys()
        assert re.match(r"^(redis|rediss|unix)://", env["REDIS_URL"]["value"])
        if "REDIS_PASSWORD" in env:
            names = list(env)
            assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL"), "$(REDIS_PASSWORD) must be defined first"


def _pairs(args: list[str]) -> dict[str, str]:
    return {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}


@pytest.mark.parametrize("variant", [v for v in sorted(VARIANTS) if v != "external-redis"])
def test_bundled_redis_has_aof_on_a_pvc(variant):
    sts = one(variant, "StatefulSet", "-redis")
    redis = main_container(sts, "redis")
    flags = _pairs(redis["args"])
    assert flags["--appendonly"] == "yes"
    assert flags["--appendfsync"] == "everysec"
    assert flags["--dir"] == "/data"
    assert flags[COMPACT_HASHES[0]] == COMPACT_HASHES[1]  # the same setting as the embedded Redis
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert {"name": "data", "mountPath": "/data"} in redis["volumeMounts"]
    svc = one(variant, "Service", "-redis")
    assert svc["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]


def test_redis_without_persistence_uses_an_emptydir():
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values={"redis": {"persistence": {"enabled": False}}}, name=RELEASE, namespace=NAMESPACE)
    sts = yaml.safe_load(files["conveyor/templates/redis-statefulset.yaml"])
    assert "volumeClaimTemplates" not in sts["spec"]
    assert {"name": "data", "emptyDir": {}} in pod_spec(sts)["volumes"]


PASSWORD_IN_URL = re.compile(r"^[a-z]+://[^/@]*:(?!\$\(REDIS_PASSWORD\)@)[^/@]+@|[?&]password=(?!\$\(REDIS_PASSWORD\))")


def test_external_redis_password_only_from_the_secret():
    variant = "external-redis"
    values = VARIANTS[variant]
    secret = values["externalRedis"]["existingSecret"]
    assert not of_kind(variant, "StatefulSet"), "no bundled Redis with externalRedis"
    # The chart renders no Secret of its own for the Redis password (the signing key's and the server
    # tokens' only).
    assert sorted(s["metadata"]["name"] for s in of_kind(variant, "Secret")) == [
        f"{RELEASE}-conveyor-server-tokens", f"{RELEASE}-conveyor-signing"]
    for name in ("scheduler", "worker", "server"):
        env = env_of(main_container(one(variant, "Deployment", f"-{name}"), name))
        ref = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret, "key": values["externalRedis"]["existingSecretPasswordKey"]}
        assert env["REDIS_URL"]["value"] == ("rediss://conveyor:$(REDIS_PASSWORD)@redis.example.internal:6380/2"
                                             "?ssl_ca_certs=/etc/conveyor/redis-ca/ca.crt")
    # No manifest carries a password: every URL-shaped string either has no credentials or
    # the $(REDIS_PASSWORD) reference, and no env var named like a secret has a plain value.
    for doc in manifests(variant):
        for text in _strings(clean(doc)):
            assert not PASSWORD_IN_URL.search(text), f"{doc['__template__']}: {text}"
    for doc in manifests(variant):
        if doc["kind"] in WORKLOAD_KINDS:
            for c in containers(doc):
                for e in c.get("env", []):
                    if re.search(r"PASSWORD|SECRET|TOKEN", e["name"]):
                        assert "value" not in e, f"{c['name']}: {e['name']} has a plain value"


def test_external_redis_schema_refuses_a_url_with_a_password():
    with helm.Chart.load(CHART) as chart:
        for url in ("redis://:hunter2@redis:6379/0", "rediss://user:hunter2@redis:6380", "unix:///r.sock?password=x"):
            with pytest.raises(helm.HelmValuesError):
                chart.validate_schema({"redis": {"enabled": False}, "externalRedis": {"url": url}})


def _strings(node: Any):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


@all_variants
def test_security_contexts_on_every_container(variant):
    workloads = [d for d in manifests(variant) if d["kind"] in WORKLOAD_KINDS]
    assert workloads
    for w in workloads:
        pod = pod_spec(w)
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", w["metadata"]["name"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in containers(w):
            where = f"{variant}: {w['metadata']['name']}/{c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, where
            assert (sc.get("runAsUser") or pod_sc.get("runAsUser", 0)) != 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
            assert not sc.get("privileged", False), where
            assert not sc.get("capabilities", {}).get("add"), where
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp must be an emptyDir"
            assert c.get("resources", {}).get("requests"), f"{where}: no resource requests"


@all_variants
def test_keda_object_only_when_enabled(variant):
    enabled = values_of(variant)["worker"]["keda"]["enabled"]
    scaled = of_kind(variant, "ScaledObject")
    worker = one(variant, "Deployment", "-worker")
    if enabled:
        assert len(scaled) == 1
        assert not of_kind(variant, "HorizontalPodAutoscaler"), "KEDA owns the HPA"
        assert "replicas" not in worker["spec"], "KEDA owns the replica count"
    else:
        assert scaled == []


def test_keda_triggers_cover_every_rq_queue():
    so = one("keda", "ScaledObject")
    triggers = so["spec"]["triggers"]
    assert [t["metadata"]["listName"] for t in triggers] == ["rq:queue:high", "rq:queue:default", "rq:queue:low"]
    for t in triggers:
        assert t["type"] == "redis"
        md = t["metadata"]
        assert md["address"] == f"{RELEASE}-conveyor-redis.{NAMESPACE}.svc:6379"
        assert md["passwordFromEnv"] == "REDIS_PASSWORD"
        assert md["listLength"] == "10"
        assert all(isinstance(v, str) for v in md.values()), "KEDA trigger metadata is map[string]string"


def test_keda_with_external_redis_parses_the_url():
    values = {**VARIANTS["external-redis"], "worker": {"keda": {"enabled": True}}}
    with helm.Chart.load(CHART) as chart:
        so = yaml.safe_load(
            chart.render(values=values, name=RELEASE, namespace=NAMESPACE)[
                "conveyor/templates/worker-scaledobject.yaml"
            ]
        )
    md = so["spec"]["triggers"][0]["metadata"]
    assert (md["address"], md["enableTLS"], md["databaseIndex"]) == ("redis.example.internal:6380", "true", "2")
    assert md["username"] == "conveyor"


@all_variants
def test_crd_objects_are_well_formed(variant):
    """Structural checks of the CRD objects kubernetes-validate cannot know."""
    docs = manifests(variant)
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key not in CRD_KINDS:
            continue
        assert set(clean(doc)) == {"apiVersion", "kind", "metadata", "spec"}
        if doc["kind"] == "ScaledObject":
            spec = doc["spec"]
            assert set(spec) <= {
                "scaleTargetRef",
                "minReplicaCount",
                "maxReplicaCount",
                "pollingInterval",
                "cooldownPeriod",
                "triggers",
                "advanced",
                "fallback",
                "idleReplicaCount",
            }
            target = spec["scaleTargetRef"]
            assert target["kind"] == "Deployment" and ("Deployment", target["name"]) in by_name
            assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
            for field in ("pollingInterval", "cooldownPeriod"):
                assert isinstance(spec[field], int) and spec[field] >= 0
            assert spec["triggers"], "a ScaledObject needs triggers"
            for t in spec["triggers"]:
                assert set(t) <= {"type", "metadata", "authenticationRef", "name", "metricType"}
                assert {"address", "listName", "listLength"} <= set(t["metadata"])
        elif doc["kind"] == "ServiceMonitor":
            spec = doc["spec"]
            selector = spec["selector"]["matchLabels"]
            services = [
                d for d in docs if d["kind"] == "Service" and selector.items() <= d["metadata"]["labels"].items()
            ]
            assert {s["metadata"]["name"].rsplit("-", 2)[-2] for s in services} == {"scheduler", "worker"}
            for ep in spec["endpoints"]:
                assert all(ep["port"] in {p["name"] for p in s["spec"]["ports"]} for s in services)
                for field in ("interval", "scrapeTimeout"):
                    assert re.fullmatch(r"[0-9]+(ms|s|m|h)", ep[field])


def test_servicemonitor_only_when_enabled():
    assert of_kind("defaults", "ServiceMonitor") == []
    assert len(of_kind("kubernetes-runtime", "ServiceMonitor")) == 1


def test_kubernetes_runtime_has_role_on_pods_and_no_socket():
    variant = "kubernetes-runtime"
    role = one(variant, "Role")
    rules = {res: set(rule["verbs"]) for rule in role["rules"] for res in rule["resources"]}
    # Exactly what runner/kubernetes.py calls (tests/test_kubernetes_secrets.py compares with the code).
    assert rules["pods"] == {"create", "get", "list", "delete"}
    assert rules["pods/log"] == {"get"}
    assert rules["secrets"] == {"create", "patch", "delete"}
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    binding = one(variant, "RoleBinding")
    sa = one(variant, "ServiceAccount")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
    worker = one(variant, "Deployment", "-worker")
    spec = pod_spec(worker)
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is True
    assert env_of(main_container(worker, "worker"))["CONVEYOR_RUNTIME"]["value"] == "kubernetes"
    assert not any("hostPath" in v for v in spec.get("volumes", []))
    assert "supplementalGroups" not in spec["securityContext"]
    # The scheduler never calls the API.
    assert pod_spec(one(variant, "Deployment", "-scheduler"))["automountServiceAccountToken"] is False
    # Autoscaling in this variant is the plain HPA.
    hpa = one(variant, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]


def test_docker_runtime_mounts_the_socket_through_a_group():
    worker = one("defaults", "Deployment", "-worker")
    spec = pod_spec(worker)
    assert of_kind("defaults", "Role") == [] and of_kind("defaults", "RoleBinding") == []
    assert spec["automountServiceAccountToken"] is False
    (sock,) = [v for v in spec["volumes"] if "hostPath" in v]
    assert sock["hostPath"] == {"path": "/var/run/docker.sock", "type": "Socket"}
    assert {"name": sock["name"], "mountPath": "/var/run/docker.sock"} in main_container(worker, "worker")[
        "volumeMounts"
    ]
    assert spec["securityContext"]["supplementalGroups"] == [999]
    assert spec["securityContext"]["runAsUser"] == 10001
    assert main_container(worker, "worker")["args"] == [
        "worker",
        "--queues",
        "high,default,low",
        "--metrics-port",
        "9101",
        "--concurrency",
        "4",
    ]


def test_dags_from_a_configmap():
    variant = "external-redis"
    cm = one(variant, "ConfigMap", "-dags")
    assert "hello.yaml" in cm["data"]
    scheduler = one(variant, "Deployment", "-scheduler")
    c = main_container(scheduler, "scheduler")
    assert env_of(c)["CONVEYOR_DAGS"]["value"] == "/etc/conveyor/dags"
    assert {"name": "dags", "mountPath": "/etc/conveyor/dags", "readOnly": True} in c["volumeMounts"]
    assert "checksum/dags" in scheduler["spec"]["template"]["metadata"]["annotations"]
    assert of_kind("defaults", "ConfigMap") == []


def test_dags_from_git_sync():
    variant = "git-sync"
    scheduler = one(variant, "Deployment", "-scheduler")
    spec = pod_spec(scheduler)
    assert [c["name"] for c in spec["initContainers"]] == ["git-sync-init"]
    assert [c["name"] for c in spec["containers"]] == ["scheduler", "git-sync"]
    assert env_of(spec["initContainers"][0])["GITSYNC_ONE_TIME"]["value"] == "true"
    assert env_of(main_container(scheduler, "scheduler"))["CONVEYOR_DAGS"]["value"] == "/git/current/conveyor/dags"
    assert of_kind(variant, "ConfigMap") == []


@all_variants
def test_network_policy_guards_redis(variant):
    if not values_of(variant)["redis"]["enabled"]:
        assert not [d for d in of_kind(variant, "NetworkPolicy") if d["metadata"]["name"].endswith("-redis")]
        return
    np = one(variant, "NetworkPolicy", "-redis")
    (rule,) = np["spec"]["ingress"]
    (peer,) = rule["from"]
    exprs = {e["key"]: e["values"] for e in peer["podSelector"]["matchExpressions"]}
    # Only this release's Conveyor pods (the helm test pod runs ctl against Redis too); on by default.
    assert exprs["app.kubernetes.io/component"] == ["scheduler", "worker", "server", "test"]
    assert exprs["app.kubernetes.io/instance"] == [RELEASE]
    assert np["spec"]["policyTypes"] == ["Ingress"]
    assert values_of("defaults")["networkPolicy"]["enabled"] is True


# --- values.yaml and values.schema.json ----------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"scheduler": {"replicas": "two"}},
        {"scheduler": {"replicas": 0}},
        {"config": {"runtime": "podman"}},
        {"config": {"leaseTTL": "ten seconds"}},
        {"config": {"leaseTTL": "1m30s"}},
        {"config": {"leaseTTL": 0}},
        {"redis": {"tls": {"enabled": True}}},
        {"signing": {"key": "inline"}},
        {"worker": {"queues": []}},
        {"worker": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}}},
        {"redis": {"enabled": False}},
        {"externalRedis": {"url": "http://redis:6379"}},
        {"dags": {"gitSync": {"enabled": True}}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"unknownKey": True},
    ],
    ids=lambda v: re.sub(r"[^A-Za-z0-9]+", "-", str(v)).strip("-")[:60],
)
def test_schema_rejects_bad_values(bad):
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(bad)
        with pytest.raises(helm.HelmValuesError):
            chart.render(values=bad, name=RELEASE, namespace=NAMESPACE)
    report = helm.lint(CHART, bad)
    assert report["errors"], "lint must report values that break the schema"


def test_schema_accepts_every_variant():
    with helm.Chart.load(CHART) as chart:
        for values in VARIANTS.values():
            chart.validate_schema(values)


def test_every_values_key_is_commented():
    """Each key in values.yaml has a comment on the line above it (or at its end)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][\w.-]*):(\s|$)", line)
        if not m:
            continue
        above = lines[i - 1].strip() if i else ""
        # "# text" documents a key; "#  text" (two spaces) is a commented-out example.
        if not (re.match(r"#( \S|$)", above) or "#" in line.split(":", 1)[1]):
            missing.append(f"values.yaml:{i + 1}: {m.group(2)}")
    assert not missing, "keys without a comment:\n" + "\n".join(missing)


# --- Redis locked by default, signed plans (issue 11) ---------------------------------------


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [d for path, text in files.items() if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]


def _named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    return found


@pytest.mark.parametrize("variant", [v for v in sorted(VARIANTS) if v != "external-redis"])
def test_bundled_redis_requires_a_password_by_default(variant):
    values = values_of(variant)
    existing = values["redis"]["auth"]["existingSecret"]
    name = existing or f"{RELEASE}-conveyor-redis-auth"
    key = values["redis"]["auth"]["existingSecretPasswordKey"] if existing else "redis-password"
    generated = [s for s in of_kind(variant, "Secret") if s["metadata"]["name"].endswith("-redis-auth")]
    if existing:
        assert generated == [], "an existing Secret replaces the generated one"
    else:
        (secret,) = generated
        import base64

        password = base64.b64decode(secret["data"]["redis-password"]).decode()
        assert re.fullmatch(r"[A-Za-z0-9]{40}", password), "random and URL-safe"
    redis = main_container(one(variant, "StatefulSet", "-redis"), "redis")
    flags = _pairs(redis["args"])
    assert flags["--requirepass"] == "$(REDIS_PASSWORD)" and "--protected-mode" not in flags
    assert env_of(redis)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": name, "key": key}
    for component in ("scheduler", "worker"):
        env = env_of(main_container(one(variant, "Deployment", f"-{component}"), component))
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": name, "key": key}
        assert env["REDIS_URL"]["value"] == f"redis://:$(REDIS_PASSWORD)@{RELEASE}-conveyor-redis:6379/0"


def test_generated_secrets_are_random_per_install():
    """Offline, Helm's lookup finds nothing: each render is a first install with new values. In a
    cluster, lookup returns the Secret already there, so an upgrade keeps it (see docs/deploy.md)."""
    first, second = _render({}), _render({})
    for suffix in ("-redis-auth", "-signing", "-server-tokens"):
        a, b = _named(first, "Secret", suffix), _named(second, "Secret", suffix)
        assert a["data"] != b["data"], suffix
    template = (CHART / "templates" / "_helpers.tpl").read_text()
    assert 'lookup "v1" "Secret" .root.Release.Namespace .name' in template


@all_variants
def test_signing_key_only_for_the_scheduler_workers_and_server(variant):
    (secret,) = [s for s in of_kind(variant, "Secret") if s["metadata"]["name"].endswith("-signing")]
    assert len(secret["data"]["signing-key"]) >= 64
    for component in ("scheduler", "worker", "server"):
        env = env_of(main_container(one(variant, "Deployment", f"-{component}"), component))
        ref = env["CONVEYOR_SIGNING_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": "signing-key"}
    redis = [main_container(d, "redis") for d in of_kind(variant, "StatefulSet")]
    assert all("CONVEYOR_SIGNING_KEY" not in env_of(c) for c in redis)


def test_signing_key_from_an_existing_secret():
    docs = _render({"signing": {"existingSecret": "my-key", "existingSecretKey": "k"}})
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-signing")]
    env = env_of(main_container(_named(docs, "Deployment", "-worker"), "worker"))
    assert env["CONVEYOR_SIGNING_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "my-key", "key": "k"}


def test_redis_without_auth_is_explicit():
    docs = _render({"redis": {"auth": {"enabled": False}}})
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-redis-auth")]
    redis = main_container(_named(docs, "StatefulSet", "-redis"), "redis")
    assert _pairs(redis["args"])["--protected-mode"] == "no" and "--requirepass" not in redis["args"]
    env = env_of(main_container(_named(docs, "Deployment", "-scheduler"), "scheduler"))
    assert "REDIS_PASSWORD" not in env and env["REDIS_URL"]["value"] == f"redis://{RELEASE}-conveyor-redis:6379/0"


def test_bundled_redis_over_tls():
    docs = _render({"redis": {"tls": {"enabled": True, "existingSecret": "redis-tls"}},
                    "worker": {"keda": {"enabled": True}}})
    sts = _named(docs, "StatefulSet", "-redis")
    redis = main_container(sts, "redis")
    flags = _pairs(redis["args"])
    assert flags["--port"] == "0" and flags["--tls-port"] == "6379" and flags["--tls-auth-clients"] == "no"
    assert {"name": "tls", "mountPath": "/tls", "readOnly": True} in redis["volumeMounts"]
    assert {"name": "tls", "secret": {"secretName": "redis-tls", "defaultMode": 0o440}} in pod_spec(sts)["volumes"]
    assert "--tls" in redis["readinessProbe"]["exec"]["command"]
    for component in ("scheduler", "worker"):
        dep = _named(docs, "Deployment", f"-{component}")
        c = main_container(dep, component)
        assert env_of(c)["REDIS_URL"]["value"] == (f"rediss://:$(REDIS_PASSWORD)@{RELEASE}-conveyor-redis:6379/0"
                                                   "?ssl_ca_certs=/etc/conveyor/redis-ca/ca.crt")
        assert {"name": "redis-ca", "mountPath": "/etc/conveyor/redis-ca", "readOnly": True} in c["volumeMounts"]
        (ca,) = [v for v in pod_spec(dep)["volumes"] if v["name"] == "redis-ca"]
        assert ca["secret"] == {"secretName": "redis-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    md = _named(docs, "ScaledObject", "-worker")["spec"]["triggers"][0]["metadata"]
    assert md["enableTLS"] == "true"
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_external_redis_ca_from_a_secret():
    values = {**VARIANTS["external-redis"]}
    values["externalRedis"] = {**values["externalRedis"], "tls": {"caSecret": "corp-ca", "caKey": "root.pem"}}
    docs = _render(values)
    dep = _named(docs, "Deployment", "-scheduler")
    url = env_of(main_container(dep, "scheduler"))["REDIS_URL"]["value"]
    assert url == ("rediss://conveyor:$(REDIS_PASSWORD)@redis.example.internal:6380/2"
                   "?ssl_ca_certs=/etc/conveyor/redis-ca/ca.crt")
    (ca,) = [v for v in pod_spec(dep)["volumes"] if v["name"] == "redis-ca"]
    assert ca["secret"]["items"] == [{"key": "root.pem", "path": "ca.crt"}]


@pytest.mark.parametrize(("given", "seconds"), [(10, "10"), ("15", "15"), ("10s", "10"), ("2m", "120"),
                                                ("1h", "3600"), (2.5, "2.5")])
def test_lease_ttl_renders_as_plain_seconds(given, seconds):
    docs = _render({"config": {"leaseTTL": given}})
    env = env_of(main_container(_named(docs, "Deployment", "-scheduler"), "scheduler"))
    assert env["CONVEYOR_LEASE_TTL"]["value"] == seconds


# --- a chart that really starts (issue 12) ---------------------------------------------------


@all_variants
def test_probes_are_http_health_endpoints(variant):
    for component in ("scheduler", "worker"):
        c = main_container(one(variant, "Deployment", f"-{component}"), component)
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert "--metrics-port" in c["args"], "the probes need the metrics server"


def _sample_dags() -> dict[str, str]:
    """The commented sample of values.yaml (uncommented) and every dags.files of the ci variants."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    start = lines.index("  #  nightly.yaml: |")
    sample = []
    for line in lines[start + 1:]:
        if not line.startswith("  #    "):
            break
        sample.append(line.removeprefix("  #    "))
    found = {"values.yaml sample": "\n".join(sample) + "\n"}
    for name, values in VARIANTS.items():
        for file, text in (values.get("dags", {}).get("files") or {}).items():
            found[f"{name}: {file}"] = text
    return found


@pytest.mark.parametrize("where", sorted(_sample_dags()))
def test_sample_dags_are_valid(where, tmp_path):
    from scheduler.spec import load_file

    path = tmp_path / "dag.yaml"
    path.write_text(_sample_dags()[where])
    spec, _ = load_file(path)  # raises with file:line:col messages when invalid
    images = {step.image for step in spec.steps.values()}
    assert images == {"conveyor/busybox:local"}, "an image that exists locally (pull: never by default)"


@all_variants
def test_helm_test_pod_runs_the_cli_without_the_signing_key(variant):
    (pod,) = [d for d in of_kind(variant, "Pod") if d["metadata"]["name"].endswith("-test-ctl")]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "test"  # admitted by the Redis policy
    (c,) = pod["spec"]["containers"]
    assert c["args"] == ["dags"]
    env = env_of(c)
    assert "CONVEYOR_SIGNING_KEY" not in env
    worker = env_of(main_container(one(variant, "Deployment", "-worker"), "worker"))
    assert env["REDIS_URL"] == worker["REDIS_URL"]
    assert env.get("REDIS_PASSWORD") == worker.get("REDIS_PASSWORD")


# --- ctl server (issue 13) ------------------------------------------------------------------


@all_variants
def test_server_runs_with_tokens_from_a_secret_and_health_probes(variant):
    dep = one(variant, "Deployment", "-server")
    c = main_container(dep, "server")
    flags = _pairs(c["args"])
    assert c["args"][0] == "server" and flags["--host"] == "0.0.0.0" and flags["--port"] == "8080"
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # The tokens file is the generated Secret's only key, mounted read-only where --tokens-file points.
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "tokens"]
    assert mount["readOnly"] is True and flags["--tokens-file"] == f"{mount['mountPath']}/tokens"
    (volume,) = [v for v in pod_spec(dep)["volumes"] if v["name"] == "tokens"]
    secret = one(variant, "Secret", "-server-tokens")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert volume["secret"]["items"] == [{"key": "tokens", "path": "tokens"}]
    import base64

    lines = [line for line in base64.b64decode(secret["data"]["tokens"]).decode().splitlines()
             if not line.startswith("#")]
    assert len(lines) == 1 and re.fullmatch(r"operator [A-Za-z0-9]{48}", lines[0])
    # The same Redis and signing key as the scheduler: the server creates runs.
    scheduler = env_of(main_container(one(variant, "Deployment", "-scheduler"), "scheduler"))
    env = env_of(c)
    for name in ("REDIS_URL", "REDIS_PASSWORD", "CONVEYOR_SIGNING_KEY", "CONVEYOR_PREFIX"):
        assert env.get(name) == scheduler.get(name), name
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    service = one(variant, "Service", "-server")
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "server"
    assert of_kind(variant, "Ingress") == [], "no Ingress unless asked for"
    policy = one(variant, "NetworkPolicy", "-server")
    assert policy["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]


def test_server_ingress_existing_tokens_and_off():
    docs = _render({"server": {"tokens": {"existingSecret": "team-tokens", "existingSecretKey": "file"},
                               "ingress": {"enabled": True, "className": "nginx", "host": "conveyor.example.com",
                                           "tls": [{"hosts": ["conveyor.example.com"], "secretName": "tls"}]},
                               "networkPolicyFrom": [{"namespaceSelector": {"matchLabels": {"team": "data"}}}]}})
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-server-tokens")]
    dep = _named(docs, "Deployment", "-server")
    (volume,) = [v for v in pod_spec(dep)["volumes"] if v["name"] == "tokens"]
    assert volume["secret"]["secretName"] == "team-tokens"
    assert volume["secret"]["items"] == [{"key": "file", "path": "tokens"}]
    ingress = _named(docs, "Ingress", "-server")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "conveyor.example.com" and ingress["spec"]["ingressClassName"] == "nginx"
    assert rule["http"]["paths"][0]["backend"]["service"] == {"name": f"{RELEASE}-conveyor-server",
                                                              "port": {"name": "http"}}
    assert _named(docs, "NetworkPolicy", "-server")["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"team": "data"}}}]
    for doc in docs:
        if doc["kind"] in {"Deployment", "Ingress", "Service", "NetworkPolicy"}:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    off = _render({"server": {"enabled": False}})
    assert not [d for d in off if d["metadata"]["labels"].get("app.kubernetes.io/component") == "server"]
