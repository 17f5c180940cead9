"""The chart's extras, rendered offline like tests/test_chart.py: the PrometheusRule and the Grafana
dashboard ConfigMap (both off by default), and the README generated from values.yaml's comments.

The rule's PromQL is not evaluated here (no Prometheus): its metric names are checked against what the
exporter really exports, and its structure against the Prometheus Operator's PrometheusRule fields.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from scheduler import metrics
from scheduler.settings import Settings
from scheduler.store import RunStore
from tests.test_chart import CHART, KUBE_VERSION, NAMESPACE, RELEASE, ROOT, manifests

EXTRAS = {"metrics": {"serviceMonitor": {"enabled": True},
                      "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                                         "alertLabels": {"severity": "critical", "team": "data"}},
                      "grafanaDashboard": {"enabled": True, "folder": "Conveyor"}}}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [doc for path, text in sorted(files.items()) if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def test_both_are_off_by_default() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in manifests("defaults")}
    assert not any(kind == "PrometheusRule" for kind, _ in kinds)
    assert ("ConfigMap", f"{RELEASE}-conveyor-dashboard") not in kinds


def test_prometheus_rule_alerts_on_what_the_exporter_exports(store: RunStore, settings: Settings) -> None:
    from prometheus_client import generate_latest

    (rule,) = [d for d in render(EXTRAS) if d["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (group,) = rule["spec"]["groups"]
    alerts = {r["alert"]: r for r in group["rules"]}
    assert set(alerts) == {"ConveyorNoLeader", "ConveyorSchedulingLag", "ConveyorStepFailureRate",
                           "ConveyorAttemptsLost"}
    assert alerts["ConveyorNoLeader"]["for"] == "5m"
    registry, _ = metrics.build(store, settings.connect(decode=False))
    metrics.watch_leadership(registry, lambda: True)
    exported = set(re.findall(r"^# TYPE (conveyor_\w+) ", generate_latest(registry).decode(), re.M))
    for name, alert in alerts.items():
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert alert["labels"] == {"severity": "critical", "team": "data"}
        expr = alert["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        used = set(re.findall(r"\b(conveyor_\w+)", expr))
        assert used and used <= exported, used - exported
        assert f'namespace="{NAMESPACE}"' in expr  # another release's metrics never fire this one's alerts
    assert "conveyor_scheduler_leader" in alerts["ConveyorNoLeader"]["expr"]
    assert "conveyor_attempts_lost_total" in alerts["ConveyorAttemptsLost"]["expr"]


def test_dashboard_configmap_for_the_grafana_sidecar() -> None:
    (cm,) = [d for d in render(EXTRAS) if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    kubernetes_validate.validate(cm, KUBE_VERSION, strict=True)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Conveyor"}
    compose = (ROOT / "compose/grafana/conveyor-dashboard.json").read_text()
    assert (CHART / "dashboards/conveyor-dashboard.json").read_text() == compose, \
        "the chart's copy of the dashboard differs from Compose's: copy compose/grafana/conveyor-dashboard.json"
    assert json.loads(cm["data"]["conveyor-dashboard.json"]) == json.loads(compose)


def test_the_schema_refuses_bad_extras() -> None:
    with pytest.raises(Exception, match="failureRatio"):
        render({"metrics": {"prometheusRule": {"enabled": True, "failureRatio": 2}}})
    with pytest.raises(Exception, match="noLeaderFor"):
        render({"metrics": {"prometheusRule": {"enabled": True, "noLeaderFor": "five minutes"}}})


def test_the_chart_readme_is_generated_from_the_values_comments() -> None:
    done = subprocess.run([sys.executable, "scripts/chart-readme.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    readme = (CHART / "README.md").read_text()
    assert "| `metrics.prometheusRule.enabled` | `false` | Create a PrometheusRule" in readme
    assert "| `helmTest.args` | `[\"dags\"]` |" in readme


def test_the_readme_check_fails_when_a_comment_changes() -> None:
    """The generator reads the comments: a changed comment changes the README (so --check can fail)."""
    spec = importlib.util.spec_from_file_location("chart_readme", ROOT / "scripts/chart-readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chart_readme"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["chart_readme"]
    text = (CHART / "values.yaml").read_text()
    changed = text.replace("# -- Create a PrometheusRule (monitoring.coreos.com/v1).", "# -- Alerts, please.")
    assert module.render(changed, "x") != module.render(text, "x")
    assert "| `metrics.prometheusRule.enabled` | `false` | Alerts, please. |" in module.render(changed, "x")
    assert module.undocumented("a: 1\n# -- b\nb: 2\n") == ["a"]
