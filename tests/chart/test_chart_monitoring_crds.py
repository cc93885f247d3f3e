"""The chart's ServiceMonitor, PodMonitor and PrometheusRule against the Prometheus operator's
own CRDs (v0.85.0, fetched pinned by scripts/setup_kube.sh), on the real API server: every
rendered object created with a server-side dry run and strict field validation, a misspelled
field and a wrong type refused naming the field, and a real install with Helm 4 and Helm 3."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from blipguard.localstack.kube import MONITORING_CRD_PLURALS, KubeAPIError, KubeServer
from blipguard.localstack.procs import wait_until
from chart_helpers import (CHART, CI_VALUES, MONITORING_KINDS, Helm, helm_warnings, kinds, monitoring_crd_files,
                           restricted_namespace, write_values)

pytestmark = [pytest.mark.chart, pytest.mark.kube]

GROUP = "monitoring.coreos.com"
PLURALS = dict(zip(MONITORING_KINDS, MONITORING_CRD_PLURALS))  # ServiceMonitor -> servicemonitors, ...
STRICT = {"dryRun": "All", "fieldValidation": "Strict"}
RELEASE = "guard"
VALUE_KEYS = {"ServiceMonitor": "serviceMonitor", "PodMonitor": "podMonitor", "PrometheusRule": "prometheusRule"}

# Every monitoring value set, none left at its default.
MONITORING_ON = {"monitoring": {
    "extraLabels": {"release": "kube-prometheus-stack", "team": "platform"},
    "serviceMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "10s"},
    "podMonitor": {"enabled": True, "port": "worker-metrics", "path": "/custom/metrics", "interval": "1m30s",
                   "namespaces": ["ml", "ml-staging"],
                   "selector": {"matchLabels": {"app.kubernetes.io/component": "celery-worker"},
                                "matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In",
                                                      "values": ["ml-worker"]},
                                                     {"key": "canary", "operator": "DoesNotExist"}]}},
    "prometheusRule": {"enabled": True},
    "dashboards": {"enabled": True, "label": "dash", "labelValue": "yes",
                   "annotations": {"grafana_folder": "blipguard"}},
}}


def _enabled_kinds(values: dict) -> set[str]:
    monitoring = (values or {}).get("monitoring") or {}
    return {kind for kind, key in VALUE_KEYS.items() if (monitoring.get(key) or {}).get("enabled")}


MONITORING_CI_VALUES = [p for p in CI_VALUES if _enabled_kinds(yaml.safe_load(p.read_text()))]


def _path(kind: str, namespace: str, name: str | None = None) -> str:
    return f"/apis/{GROUP}/v1/namespaces/{namespace}/{PLURALS[kind]}" + (f"/{name}" if name else "")


@pytest.fixture(scope="module")
def monitoring_crds(kube: KubeServer) -> dict[str, dict]:
    """The three CRDs installed into the session's API server, established, by kind."""
    files = monitoring_crd_files()
    for path in files.values():
        proc = kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path), check=False)
        assert proc.returncode == 0, proc.stderr

    def crd(plural: str) -> dict:
        return kube.client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.{GROUP}")

    def established() -> bool:
        return all(any(c["type"] == "Established" and c["status"] == "True"
                       for c in crd(plural)["status"].get("conditions", [])) for plural in MONITORING_CRD_PLURALS)

    wait_until(established, 30, "the Prometheus operator's CRDs to be established", interval=0.1)
    served = {kind: crd(plural) for kind, plural in PLURALS.items()}
    for kind, obj in served.items():
        assert obj["spec"]["names"]["kind"] == kind
        assert [v["name"] for v in obj["spec"]["versions"] if v["served"]] == ["v1"], kind
    return served


@pytest.fixture(scope="module")
def monitoring_values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_values(tmp_path_factory.mktemp("monitoring-values") / "monitoring-on.yaml", MONITORING_ON)


def _set(obj: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _dotted(path: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


# ---------------------------------------------------------------- every rendered object accepted

@pytest.mark.parametrize("sample_files", [False, True], ids=["repo-files", "sample-files"])
@pytest.mark.parametrize("values", [None, *MONITORING_CI_VALUES], ids=lambda v: v.name if v else "monitoring-on")
def test_every_rendered_monitor_and_rule_passes_the_prometheus_operators_crds(
        kube: KubeServer, monitoring_crds: dict, helm: Helm, monitoring_values: Path, chart_with_monitoring: Path,
        values: Path | None, sample_files: bool):
    """Created with a server-side dry run and strict field validation: an unknown field, a
    wrong type, a pattern or enum the CRD's schema refuses would fail the create. The server
    returns the object unchanged: nothing was pruned or defaulted away."""
    values_file = values or monitoring_values
    chart = chart_with_monitoring if sample_files else CHART
    enabled = _enabled_kinds(yaml.safe_load(values_file.read_text()))
    ns = kube.create_namespace("monitoring-dry-run")
    objects = helm.template("--values", str(values_file), chart=chart, namespace=ns, release=RELEASE)
    monitoring = [o for o in objects if o["kind"] in MONITORING_KINDS]
    assert {o["kind"] for o in monitoring} == enabled
    if "PrometheusRule" in enabled:  # one per rule file
        assert len(kinds(monitoring, "PrometheusRule")) == len(list((chart / "files" / "alerts").glob("*.yaml")))
    for obj in monitoring:
        name = obj["metadata"]["name"]
        assert obj["apiVersion"] == f"{GROUP}/v1" and obj["metadata"]["namespace"] == ns
        created = kube.client.create(_path(obj["kind"], ns), obj, **STRICT)
        assert created["spec"] == obj["spec"], f"{obj['kind']}/{name}"
        assert created["metadata"]["labels"] == obj["metadata"]["labels"], f"{obj['kind']}/{name}"
    # A dry run stores nothing.
    for kind in {o["kind"] for o in monitoring}:
        assert kube.client.get(_path(kind, ns))["items"] == []


# ---------------------------------------------------------------- the check bites

BROKEN = [
    # kind, where, value, status, what the error names
    ("ServiceMonitor", ("spec", "endpoints", 0, "intervall"), "30s", 400, None),
    ("ServiceMonitor", ("spec", "endpoints", 0, "honorLabels"), "true", 422, "must be of type boolean"),
    ("ServiceMonitor", ("spec", "endpoints", 0, "interval"), "30 seconds", 422, "should match"),
    ("PodMonitor", ("spec", "podMetricsEndpoints", 0, "intervall"), "30s", 400, None),
    ("PodMonitor", ("spec", "namespaceSelector", "matchNames"), "ml", 422, "must be of type array"),
    ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "expresion"), "up == 0", 400, None),
    ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "for"), 10, 422, "must be of type string"),
]


@pytest.mark.parametrize("kind,where,value,status,why", BROKEN,
                         ids=[f"{k}-{_dotted(w)}" for k, w, *_ in BROKEN])
def test_a_misspelled_field_or_a_wrong_type_is_refused_naming_the_field(
        kube: KubeServer, monitoring_crds: dict, helm4: Helm, monitoring_values: Path,
        kind: str, where: tuple, value: Any, status: int, why: str | None):
    """The same rendered object, with one field misspelled (400, strict decoding: "unknown
    field") or of a wrong type or format (422, the CRD's schema), each naming the field."""
    ns = kube.create_namespace("monitoring-broken")
    obj = kinds(helm4.template("--values", str(monitoring_values), namespace=ns, release=RELEASE), kind)[0]
    kube.client.create(_path(kind, ns), obj, **STRICT)  # as rendered: accepted
    broken = copy.deepcopy(obj)
    _set(broken, where, value)
    field = _dotted(where)
    with pytest.raises(KubeAPIError) as refused:
        kube.client.create(_path(kind, ns), broken, **STRICT)
    error = refused.value
    assert error.status == status, error
    if why is None:
        assert error.reason == "BadRequest" and f'unknown field "{field}"' in error.message, error
        # Without strict validation the API server would have dropped the field silently.
        lenient = kube.client.create(_path(kind, ns), broken, dryRun="All", fieldValidation="Ignore")
        assert lenient["spec"] == obj["spec"]
    else:
        assert error.reason == "Invalid" and why in error.message, error
        assert [c["field"] for c in error.body["details"]["causes"]] == [field], error.body


def test_missing_crd_files_fail_naming_the_setup_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BLIPGUARD_CACHE", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"servicemonitors, podmonitors, prometheusrules .*"
                                                  r"`bash scripts/setup\.sh`"):
        monitoring_crd_files()


# ---------------------------------------------------------------- a real install

def test_install_with_every_monitoring_option_on(kube: KubeServer, monitoring_crds: dict, helm: Helm,
                                                 monitoring_values: Path):
    """`helm install` (Helm 4 and Helm 3) with the CRDs present: no warning, and each object the
    API server stores is the one in the release's manifest; uninstall removes them."""
    helm = Helm(helm.name, helm.binary, helm.home, kubeconfig=kube.kubeconfig)
    ns = restricted_namespace(kube, f"monitoring-{helm.name}")
    proc = helm.run("install", RELEASE, str(CHART), "--namespace", ns, "--values", str(monitoring_values))
    try:
        assert helm_warnings(proc.stderr) == [], proc.stderr
        assert "STATUS: deployed" in proc.stdout
        manifest = [d for d in yaml.safe_load_all(helm.run("get", "manifest", RELEASE, "--namespace", ns).stdout) if d]
        monitoring = [o for o in manifest if o["kind"] in MONITORING_KINDS]
        assert {o["kind"] for o in monitoring} == set(MONITORING_KINDS)
        for obj in monitoring:
            stored = kube.client.get(_path(obj["kind"], ns, obj["metadata"]["name"]))
            assert stored["spec"] == obj["spec"], f"{obj['kind']}/{obj['metadata']['name']}"
            assert stored["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    finally:
        helm.run("uninstall", RELEASE, "--namespace", ns, check=False)
    for kind in MONITORING_KINDS:
        assert kube.client.get(_path(kind, ns))["items"] == [], kind
