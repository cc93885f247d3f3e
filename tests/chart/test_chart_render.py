"""The chart without a cluster: lint, render, validate against Kubernetes' own schemas,
values.schema.json, the generated files, and what the templates promise."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from blipguard.operator import cli, crd, rbac, spec
from chart_helpers import (CHART, CI_VALUES, MONITORING_KINDS, ROOT, SAMPLE_ALERTS, SAMPLE_DASHBOARD, Helm,
                           binary, kinds, one, write_values)

pytestmark = pytest.mark.chart

# The Kubernetes versions the installed kubernetes-validate knows, from 1.31 on.
K8S_VERSIONS = [v for v in kubernetes_validate.utils.all_versions()
                if tuple(map(int, v.split(".")[:2])) >= (1, 31)]
CUSTOM_KINDS = ("BlipGuard",) + MONITORING_KINDS
ALL_ON = CHART / "ci" / "all-options-on-values.yaml"


def _render_generator():
    spec_ = importlib.util.spec_from_file_location("render_chart", ROOT / "scripts" / "render_chart.py")
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- lint and render

@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.name if v else "no-values")
def test_lint_strict(helm: Helm, values: Path | None):
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    out = helm.run(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout, out.stdout
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout, out.stdout


def _validate(objects: list[dict], versions: list[str]) -> list[str]:
    problems = []
    for version in versions:
        for obj in objects:
            if obj["kind"] in CUSTOM_KINDS:
                continue  # no schema there; checked by the tests below and the API server
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{version} {obj['kind']}/{obj['metadata']['name']}: "
                                f"{exc.message} at {list(exc.absolute_path)}")
    return problems


@pytest.mark.parametrize("sample_files", [False, True], ids=["repo-files", "sample-files"])
@pytest.mark.parametrize("values", CI_VALUES, ids=lambda v: v.name)
def test_every_ci_values_file_renders_objects_valid_for_kubernetes_1_31_on(helm: Helm, values: Path,
                                                                            chart_with_monitoring: Path,
                                                                            sample_files: bool):
    """The chart as it is (the repo's alerts and dashboards), and with sample ones."""
    objects = helm.template("--values", str(values), chart=chart_with_monitoring if sample_files else CHART)
    assert K8S_VERSIONS and K8S_VERSIONS[0] == "1.31.0", K8S_VERSIONS
    assert _validate(objects, K8S_VERSIONS) == []
    assert {"Deployment", "ServiceAccount", "Service"} <= {o["kind"] for o in objects}


def test_helm_4_and_helm_3_render_the_same_objects(tmp_path: Path, chart_with_monitoring: Path,
                                                    helm4: Helm):
    helm3 = Helm("helm3", binary("helm3"), tmp_path / "helm3")
    for values in CI_VALUES:
        args = ("--values", str(values))
        assert helm4.template(*args, chart=chart_with_monitoring) == \
            helm3.template(*args, chart=chart_with_monitoring), values.name


def test_the_validation_catches_a_broken_template(helm4: Helm):
    """The Kubernetes schema check is not a no-op: a misspelt field fails it."""
    objects = helm4.template()
    deployment = one(objects, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    problems = _validate([deployment], K8S_VERSIONS[-1:])
    assert len(problems) == 1 and "'livenessprobe' was unexpected" in problems[0], problems


# ---------------------------------------------------------------- the operator's Deployment

def _container(objects: list[dict]) -> dict:
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def _cli_args(objects: list[dict]):
    """The container's command line, parsed by the operator's own CLI parser."""
    container = _container(objects)
    assert container["command"] == ["blipguard"]
    assert container["args"][0] == "operator"
    return cli.parser().parse_args(container["args"][1:])


def test_the_deployment_runs_one_standalone_operator_on_its_real_flags_and_probe(helm4: Helm):
    objects = helm4.template(namespace="ml")
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    args = _cli_args(objects)
    assert args.command == "run" and args.namespace == ["ml"] and not args.all_namespaces
    assert args.pod_selector is None and not args.verbose
    container = _container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.metrics_port == ports["metrics"] == 9090 and args.metrics_address == "0.0.0.0"
    # kopf serves its probe endpoint on the --liveness URL: the probes must read exactly there.
    assert args.liveness == f"http://0.0.0.0:{ports['probes']}/healthz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "probes"}, probe
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    service = one(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics",
                                         "protocol": "TCP"}]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_values_reach_the_command_line(helm4: Helm):
    objects = helm4.template("--values", str(ALL_ON))
    args = _cli_args(objects)
    assert args.namespace == ["ml", "ml-staging"]
    env = {e["name"]: e for e in one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SENTRY_DSN"]["valueFrom"] == {"secretKeyRef": {"name": "blipguard-sentry", "key": "dsn"}}
    assert env["SENTRY_ENVIRONMENT"]["value"] == "production"
    assert "SENTRY_DSN" not in str(helm4.template()), "no Sentry unless a DSN Secret is named"
    assert args.pod_selector == "app.kubernetes.io/name in (redis,nats,valkey)" and args.verbose
    args = _cli_args(helm4.template("--set", "operator.clusterWide=true,operator.metricsPort=9100,"
                                            "operator.probePort=8181,operator.podSelector="))
    assert args.all_namespaces and args.namespace == [] and args.metrics_port == 9100
    assert args.liveness == "http://0.0.0.0:8181/healthz" and args.pod_selector == ""


def test_the_pod_meets_pod_security_restricted(helm4: Helm):
    pod = one(helm4.template(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is True
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert [v for v in pod["volumes"] if set(v) - {"name", "emptyDir"}] == []


# ---------------------------------------------------------------- RBAC

def test_namespaced_rbac_is_exactly_the_operators_rules_in_each_served_namespace(helm4: Helm):
    objects = helm4.template("--values", str(ALL_ON), namespace="ops")
    assert kinds(objects, "ClusterRole") == [] and kinds(objects, "ClusterRoleBinding") == []
    roles = kinds(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "ml-staging"]
    for role in roles:
        assert role["rules"] == rbac.role_rules()
    sa = one(objects, "ServiceAccount")["metadata"]
    for binding in kinds(objects, "RoleBinding"):
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": roles[0]["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": "ops"}]
    # No list given: the release namespace alone.
    roles = kinds(helm4.template(namespace="ops"), "Role")
    assert [r["metadata"]["namespace"] for r in roles] == ["ops"]


def test_cluster_wide_rbac_only_on_request(helm4: Helm):
    objects = helm4.template("--values", str(CHART / "ci" / "cluster-wide-values.yaml"), namespace="ops")
    assert kinds(objects, "Role") == [] and kinds(objects, "RoleBinding") == []
    assert one(objects, "ClusterRole")["rules"] == rbac.role_rules()
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["kind"] == "ClusterRole"
    assert binding["subjects"][0]["namespace"] == "ops"
    assert _cli_args(objects).all_namespaces


# ---------------------------------------------------------------- generated files

def test_the_generated_chart_files_are_up_to_date():
    """Changing rbac.py, crd.py, alerts/ or dashboards/ without `python scripts/render_chart.py`
    fails here."""
    assert _render_generator().differences() == []
    assert (CHART / "crds" / "blipguards.blipguard.io.yaml").read_bytes() == \
        (ROOT / "operator" / "crds" / "blipguards.blipguard.io.yaml").read_bytes() == crd.render().encode()


def test_the_generator_notices_a_change_of_its_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    gen = _render_generator()
    chart = tmp_path / "chart"
    (tmp_path / "alerts").mkdir()
    gen.write(tmp_path, chart)
    assert gen.differences(tmp_path, chart) == []
    (tmp_path / "alerts" / "operator.yaml").write_text(SAMPLE_ALERTS)
    (tmp_path / "alerts" / "tests.yaml").write_text("rule_files: [operator.yaml]\ntests: []\n")
    assert gen.differences(tmp_path, chart) == ["missing: files/alerts/operator.yaml"]
    gen.write(tmp_path, chart)
    assert (chart / "files" / "alerts" / "operator.yaml").read_text() == SAMPLE_ALERTS
    monkeypatch.setattr(rbac, "RULES", rbac.RULES[:-1])  # a rule dropped from rbac.py
    assert gen.differences(tmp_path, chart) == ["out of date: files/rbac-rules.yaml"]
    monkeypatch.undo()
    (tmp_path / "alerts" / "operator.yaml").unlink()
    assert gen.differences(tmp_path, chart) == ["stale (no source any more): files/alerts/operator.yaml"]


# ---------------------------------------------------------------- monitoring

def test_monitoring_objects_are_opt_in(helm4: Helm, chart_with_monitoring: Path):
    objects = helm4.template(chart=chart_with_monitoring)
    present = {o["kind"] for o in objects}
    assert not present & {*MONITORING_KINDS, "ConfigMap", "NetworkPolicy", "BlipGuard", "ClusterRole"}, present


def test_every_monitoring_object_carries_the_extra_labels_and_a_fixed_job(helm4: Helm, chart_with_monitoring: Path):
    objects = helm4.template("--values", str(ALL_ON), chart=chart_with_monitoring, release="any-name")
    monitoring = [o for o in objects if o["kind"] in MONITORING_KINDS or o["kind"] == "ConfigMap"]
    assert sorted(o["kind"] for o in monitoring) == ["ConfigMap", "PodMonitor", "PrometheusRule", "ServiceMonitor"]
    for obj in monitoring:
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", obj["kind"]
        assert obj["apiVersion"] == ("v1" if obj["kind"] == "ConfigMap" else "monitoring.coreos.com/v1")
    fixed_job = {"action": "replace", "targetLabel": "job"}
    sm = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    [endpoint] = sm["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert endpoint["relabelings"] == [{**fixed_job, "replacement": "blipguard-operator"}]
    assert endpoint["honorLabels"] is True, "the operator's `namespace` label is the guard's: keep it"
    pm = one(objects, "PodMonitor")
    [endpoint] = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert endpoint["relabelings"] == [{**fixed_job, "replacement": "blipguard-workers"}]
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["ml", "ml-staging"]}
    assert pm["spec"]["selector"] == {"matchLabels": {"app.kubernetes.io/component": "celery-worker"}}
    dashboard = one(objects, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "blipguard"}
    custom = helm4.template("--values", str(ALL_ON), "--set", "monitoring.dashboards.label=dash,"
                            "monitoring.dashboards.labelValue=yes", chart=chart_with_monitoring)
    assert one(custom, "ConfigMap")["metadata"]["labels"]["dash"] == "yes"


def test_alert_and_dashboard_templating_reaches_prometheus_and_grafana_unchanged(
        helm: Helm, chart_with_monitoring: Path):
    objects = helm.template("--values", str(ALL_ON), chart=chart_with_monitoring)
    rule = one(objects, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(SAMPLE_ALERTS)
    annotations = rule["spec"]["groups"][0]["rules"][0]["annotations"]
    assert annotations["summary"] == "Guard {{ $labels.namespace }}/{{ $labels.guard }} paused"
    assert one(objects, "ConfigMap")["data"] == {"sample.json": SAMPLE_DASHBOARD.rstrip("\n")}


def test_network_policy_admits_scrapes_and_limits_egress_when_asked(helm4: Helm):
    policy = one(helm4.template("--values", str(ALL_ON)), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    [ingress] = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert {"port": 53, "protocol": "UDP"} in policy["spec"]["egress"][0]["ports"]
    policy = one(helm4.template("--set", "networkPolicy.enabled=true"), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"] and "from" not in policy["spec"]["ingress"][0]


# ---------------------------------------------------------------- the example guard

def test_the_example_guard_is_valid_and_matches_the_nats_and_redis_charts(helm4: Helm):
    guard = one(helm4.template("--set", "exampleGuard.enabled=true", namespace="ml"), "BlipGuard")
    assert guard["apiVersion"] == crd.API_VERSION and guard["metadata"]["namespace"] == "ml"
    parsed = spec.parse(guard["spec"], "ml")  # the operator's own checks
    selectors = {d.kind.value: d.selector for d in parsed.dependencies}
    # The operator's own defaults for the two charts (crd.DEFAULT_SELECTORS), written out.
    assert selectors == {kind.value: spec.default_selector(kind) for kind in crd.DEFAULT_SELECTORS}
    nats_server = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "nats",
                   "app.kubernetes.io/instance": "bus"}
    nats_box = {**nats_server, "app.kubernetes.io/component": "nats-box"}
    assert selectors["nats"].matches(nats_server) and not selectors["nats"].matches(nats_box)
    for component in ("master", "replica", "node"):
        assert selectors["redis"].matches({"app.kubernetes.io/name": "redis", "app.kubernetes.io/component": component})
    assert not selectors["redis"].matches({"app.kubernetes.io/name": "redis", "app.kubernetes.io/component": "metrics"})
    # Both fall inside the operator's default pod watch.
    args = _cli_args(helm4.template("--set", "exampleGuard.enabled=true"))
    assert args.pod_selector is None


def test_the_all_options_guard_is_valid_and_lives_in_a_served_namespace(helm4: Helm):
    objects = helm4.template("--values", str(ALL_ON))
    guard = one(objects, "BlipGuard")
    ns = guard["metadata"]["namespace"]
    assert ns in _cli_args(objects).namespace
    parsed = spec.parse(guard["spec"], ns)
    assert parsed.settings.mode.value == "observe-only" and parsed.pause.nats.url == "nats://nats:4222"


# ---------------------------------------------------------------- values.schema.json

BAD_VALUES = [
    # (values, what each Helm must say: all of these fragments, in Helm 4's or Helm 3's words)
    ({"replicaCount": 2}, {"helm": ["additional properties 'replicaCount' not allowed"],
                           "helm3": ["Additional property replicaCount is not allowed"]}),
    ({"operator": {"clusterwide": True}}, {"helm": ["/operator", "additional properties 'clusterwide' not allowed"],
                                           "helm3": ["operator: Additional property clusterwide is not allowed"]}),
    ({"operator": {"metricsPort": 70000}}, {"helm": ["/operator/metricsPort", "maximum: got 70,000, want 65,535"],
                                            "helm3": ["operator.metricsPort: Must be less than or equal to 65535"]}),
    ({"operator": {"probePort": 0}}, {"helm": ["/operator/probePort", "minimum: got 0, want 1"],
                                      "helm3": ["operator.probePort: Must be greater than or equal to 1"]}),
    ({"operator": {"watchNamespaces": ["Bad_NS"]}}, {"helm": ["/operator/watchNamespaces/0", "does not match pattern"],
                                                     "helm3": ["operator.watchNamespaces.0: Does not match pattern"]}),
    ({"service": {"type": "Headless"}}, {"helm": ["/service/type", "value must be one of 'ClusterIP'"],
                                         "helm3": ["service.type must be one of the following"]}),
    ({"image": {"pullPolicy": "Sometimes"}}, {"helm": ["/image/pullPolicy", "value must be one of"],
                                              "helm3": ["image.pullPolicy must be one of the following"]}),
    ({"exampleGuard": {"mode": "pause-everything"}},
     {"helm": ["/exampleGuard/mode", "value must be one of 'active', 'observe-only', 'suspended'"],
      "helm3": ["exampleGuard.mode must be one of the following: \"active\", \"observe-only\", \"suspended\""]}),
    ({"monitoring": {"serviceMonitor": {"enabled": "yes"}}},
     {"helm": ["/monitoring/serviceMonitor/enabled", "got string, want boolean"],
      "helm3": ["monitoring.serviceMonitor.enabled: Invalid type. Expected: boolean, given: string"]}),
    ({"monitoring": {"extraLabels": {"release": 1}}},
     {"helm": ["/monitoring/extraLabels/release", "got number, want string"],
      "helm3": ["monitoring.extraLabels.release: Invalid type. Expected: string, given: integer"]}),
    ({"monitoring": {"serviceMonitor": {"interval": "30 seconds"}}},
     {"helm": ["/monitoring/serviceMonitor/interval", "does not match pattern"],
      "helm3": ["monitoring.serviceMonitor.interval: Does not match pattern"]}),
]
TEMPLATE_CHECKS = [
    ({"operator": {"clusterWide": True, "watchNamespaces": ["ml"]}},
     "operator.clusterWide: true serves every namespace (-A): leave operator.watchNamespaces empty"),
    ({"operator": {"metricsPort": 8080}}, "operator.metricsPort and operator.probePort must differ"),
    ({"exampleGuard": {"enabled": True, "redis": {"enabled": False}, "nats": {"enabled": False}}},
     "exampleGuard: enable exampleGuard.redis or exampleGuard.nats"),
]


@pytest.mark.parametrize("values,expected", BAD_VALUES, ids=[json.dumps(v) for v, _ in BAD_VALUES])
def test_the_schema_rejects_bad_values_naming_the_value(helm: Helm, tmp_path: Path, values, expected):
    proc = helm.run("template", "guard", str(CHART), "--values", str(write_values(tmp_path / "v.yaml", values)),
                    check=False)
    assert proc.returncode != 0, f"{values} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    for fragment in expected[helm.name]:
        assert fragment in proc.stderr, proc.stderr


@pytest.mark.parametrize("values,message", TEMPLATE_CHECKS, ids=[json.dumps(v) for v, _ in TEMPLATE_CHECKS])
def test_contradictory_values_fail_with_a_message_naming_them(helm: Helm, tmp_path: Path, values, message):
    proc = helm.run("template", "guard", str(CHART), "--values", str(write_values(tmp_path / "v.yaml", values)),
                    check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


def test_the_readme_documents_every_value():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    # Maps documented as a whole (their keys are Kubernetes' or the user's own).
    whole = {"podLabels", "podAnnotations", "annotations", "extraLabels", "selector", "resources", "timing",
             "podSecurityContext", "securityContext", "livenessProbe", "readinessProbe", "brokerSecretRef",
             "nodeSelector", "affinity"}

    def leaves(node, prefix=""):
        if isinstance(node, dict) and node and prefix.rpartition(".")[2] not in whole:
            for key, child in node.items():
                yield from leaves(child, f"{prefix}.{key}" if prefix else key)
        else:
            yield prefix

    missing = [key for key in leaves(values) if f"`{key}`" not in readme]
    assert missing == []
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]) - {"global"} == set(values), "values.yaml and the schema differ at the top"


def test_the_repos_alerts_and_dashboards_ship_unchanged_and_select_the_fixed_jobs(helm4: Helm):
    """The real files/alerts and files/dashboards (copies of alerts/ and dashboards/)."""
    objects = helm4.template("--set", "monitoring.prometheusRule.enabled=true,monitoring.dashboards.enabled=true")
    rule_files = sorted((CHART / "files" / "alerts").glob("*.yaml"))
    assert [r["spec"] for r in kinds(objects, "PrometheusRule")] == [yaml.safe_load(p.read_text()) for p in rule_files]
    dashboards = sorted((CHART / "files" / "dashboards").glob("*.json"))
    assert [c["data"] for c in kinds(objects, "ConfigMap")] == [{p.name: p.read_text().rstrip("\n")} for p in dashboards]
    jobs = set()
    for rule_file in rule_files:
        for group in yaml.safe_load(rule_file.read_text())["groups"]:
            for rule in group["rules"]:
                jobs.update(re.findall(r'job="([^"]*)"', rule["expr"]))
    from blipguard.app_patch.metrics import SCRAPE_JOB as WORKERS
    from blipguard.operator.metrics import SCRAPE_JOB as OPERATOR

    assert jobs and jobs <= {OPERATOR, WORKERS}, jobs
