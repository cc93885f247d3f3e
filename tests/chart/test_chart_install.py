"""The chart installed into a real API server (etcd + kube-apiserver) with Helm 4 and
Helm 3: Pod Security "restricted" admission, upgrade, the CRD upgrade step, uninstall."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from blipguard.localstack.kube import KubeAPIError, KubeServer
from blipguard.localstack.procs import free_port, wait_until
from blipguard.operator import crd, rbac
from chart_helpers import (CHART, CI_VALUES, Helm, RenderedOperator, bound_roles, granted_permissions, one,
                           restricted_namespace, wait_authorized, write_values)

pytestmark = [pytest.mark.chart, pytest.mark.kube]

RELEASE = "guard"
WEAK = {"securityContext": {"allowPrivilegeEscalation": True, "capabilities": {"add": ["NET_ADMIN"]}},
        "podSecurityContext": {"runAsNonRoot": False}}


@pytest.fixture
def cluster_helm(helm: Helm, kube: KubeServer) -> Helm:
    return Helm(helm.name, helm.binary, helm.home, kubeconfig=kube.kubeconfig)


def _paths(ns: str, name: str) -> dict[str, str]:
    return {
        "Deployment": f"/apis/apps/v1/namespaces/{ns}/deployments/{name}",
        "ServiceAccount": f"/api/v1/namespaces/{ns}/serviceaccounts/{name}",
        "Service": f"/api/v1/namespaces/{ns}/services/{name}-metrics",
        "Role": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{name}",
        "RoleBinding": f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/{name}",
        "BlipGuard": f"/apis/{crd.API_VERSION}/namespaces/{ns}/{crd.PLURAL}/fleet",
    }


def _exists(kube: KubeServer, path: str) -> bool:
    status, _ = kube.client.request_raw("GET", path)
    assert status in (200, 404), (path, status)
    return status == 200


def _pod_from(template: dict, name: str) -> dict:
    """The Pod a ReplicaSet would make from this pod template (no controller runs here)."""
    template = copy.deepcopy(template)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": template["metadata"].get("labels", {})},
            "spec": template["spec"]}


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning" in line.lower() or "podsecurity" in line.lower()]


def test_install_upgrade_uninstall_in_a_pss_restricted_namespace(cluster_helm: Helm, kube: KubeServer,
                                                                   tmp_path: Path):
    helm = cluster_helm
    ns = restricted_namespace(kube, f"chart-{helm.name}")
    name = f"{RELEASE}-blipguard"

    proc = helm.run("install", RELEASE, str(CHART), "--namespace", ns, "--set", "exampleGuard.enabled=true")
    assert _warnings(proc.stderr) == [], proc.stderr
    assert "STATUS: deployed" in proc.stdout
    assert "kubectl apply --server-side --force-conflicts -f crds/" in proc.stdout, "NOTES.txt"
    paths = _paths(ns, name)
    assert {kind: _exists(kube, path) for kind, path in paths.items()} == dict.fromkeys(paths, True)
    # The API server checked the example guard against the CRD's schema and CEL rules.
    guard = kube.client.get(paths["BlipGuard"])
    assert guard["spec"]["timing"]["settleSeconds"] == crd.manifest()["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]["properties"]["spec"]["properties"]["timing"]["properties"]["settleSeconds"]["default"]
    assert kube.client.get(paths["Role"])["rules"] == rbac.role_rules()

    # No controller turns the Deployment into a Pod here: make the Pod its ReplicaSet would.
    deployment = kube.client.get(paths["Deployment"])
    pod = kube.client.create(f"/api/v1/namespaces/{ns}/pods",
                             _pod_from(deployment["spec"]["template"], "operator-restricted"))
    assert pod["spec"]["serviceAccountName"] == name
    assert any(v.get("projected") for v in pod["spec"]["volumes"]), "the ServiceAccount token is mounted"
    kube.client.delete(f"/api/v1/namespaces/{ns}/pods/operator-restricted", grace_period_seconds=0)

    # The same pod template with a weakened securityContext is refused by PodSecurity.
    weak_values = write_values(tmp_path / "weak.yaml", WEAK)
    weak = one(helm.template("--values", str(weak_values), namespace=ns, release=RELEASE), "Deployment")
    with pytest.raises(KubeAPIError) as refused:
        kube.client.create(f"/api/v1/namespaces/{ns}/pods", _pod_from(weak["spec"]["template"], "operator-weak"))
    assert refused.value.status == 403, refused.value
    assert 'violates PodSecurity "restricted:latest"' in refused.value.message
    for what in ("allowPrivilegeEscalation != false", "unrestricted capabilities", "runAsNonRoot != true"):
        assert what in refused.value.message, refused.value.message

    # And Helm shows the server's PodSecurity warning when an upgrade would weaken it: the
    # check above for "no warnings" can see one.
    proc = helm.run("upgrade", RELEASE, str(CHART), "--namespace", ns, "--values", str(weak_values),
                    "--set", "exampleGuard.enabled=true")
    assert any("would violate PodSecurity" in line for line in _warnings(proc.stderr)), proc.stderr

    proc = helm.run("upgrade", RELEASE, str(CHART), "--namespace", ns, "--set", "exampleGuard.enabled=true",
                    "--set", "operator.verbose=true,exampleGuard.mode=observe-only,resources.limits.memory=300Mi")
    assert _warnings(proc.stderr) == [], proc.stderr
    assert "REVISION: 3" in proc.stdout
    container = kube.client.get(paths["Deployment"])["spec"]["template"]["spec"]["containers"][0]
    assert "--verbose" in container["args"] and container["resources"]["limits"]["memory"] == "300Mi"
    assert kube.client.get(paths["BlipGuard"])["spec"]["mode"] == "observe-only"

    helm.run("uninstall", RELEASE, "--namespace", ns)
    assert {kind: _exists(kube, path) for kind, path in paths.items()} == dict.fromkeys(paths, False)
    assert _exists(kube, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd.CRD_NAME}"), \
        "Helm never deletes crds/: the CRD (and guards made outside the chart) must remain"
    left = kube.client.get(f"/api/v1/namespaces/{ns}/services", labelSelector=f"app.kubernetes.io/instance={RELEASE}")
    assert left["items"] == []


def test_the_documented_crd_upgrade_step_updates_the_crd(kube: KubeServer, helm4: Helm, tmp_path: Path):
    """Helm never upgrades crds/: `kubectl apply --server-side --force-conflicts -f crds/`
    (README, NOTES.txt) does, over a CRD Helm installed."""
    helm = Helm(helm4.name, helm4.binary, helm4.home, kubeconfig=kube.kubeconfig)
    ns = restricted_namespace(kube, "crd-upgrade")
    helm.run("install", RELEASE, str(CHART), "--namespace", ns)
    readme = (CHART / "README.md").read_text() + (CHART / "templates" / "NOTES.txt").read_text()
    assert "kubectl apply --server-side --force-conflicts -f" in readme
    crd_path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd.CRD_NAME}"

    newer = crd.manifest()
    columns = newer["spec"]["versions"][0]["additionalPrinterColumns"]
    columns.insert(1, {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"})
    crds = tmp_path / "crds"
    crds.mkdir()
    (crds / "blipguards.blipguard.io.yaml").write_text(yaml.safe_dump(newer))
    try:
        proc = kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds), check=False)
        assert proc.returncode == 0, proc.stderr
        served = kube.client.get(crd_path)["spec"]["versions"][0]["additionalPrinterColumns"]
        assert [c["name"] for c in served][:2] == ["Phase", "Mode"]
        # Helm itself leaves it alone: an upgrade does not bring the old CRD back.
        helm.run("upgrade", RELEASE, str(CHART), "--namespace", ns)
        assert [c["name"] for c in kube.client.get(crd_path)["spec"]["versions"][0]["additionalPrinterColumns"]
                ][:2] == ["Phase", "Mode"]
    finally:
        kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
        helm.run("uninstall", RELEASE, "--namespace", ns, check=False)
    served = kube.client.get(crd_path)
    assert served["spec"]["versions"][0]["additionalPrinterColumns"] == \
        crd.manifest()["spec"]["versions"][0]["additionalPrinterColumns"]


@pytest.mark.parametrize("cluster_wide", [False, True], ids=["namespaced", "cluster-wide"])
def test_the_rendered_operator_runs_under_the_charts_service_account(kube: KubeServer, helm4: Helm,
                                                                     tmp_path: Path, cluster_wide: bool):
    """The Deployment's own command line and environment, run here as the chart's
    ServiceAccount (its token, as mounted in the pod) with the chart's RBAC (Role or
    ClusterRole): its probe endpoint answers on the rendered port and path, and the API
    server refused it nothing."""
    helm = Helm(helm4.name, helm4.binary, helm4.home, kubeconfig=kube.kubeconfig)
    ns = restricted_namespace(kube, "operator")
    metrics_port, probe_port = free_port(), free_port()
    helm.run("install", RELEASE, str(CHART), "--namespace", ns, "--set", "exampleGuard.enabled=true",
             "--set", f"operator.metricsPort={metrics_port},operator.probePort={probe_port}",
             "--set", f"operator.clusterWide={str(cluster_wide).lower()}")
    try:
        name = f"{RELEASE}-blipguard"
        deployment = kube.client.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
        op = RenderedOperator.from_deployment(kube, deployment, tmp_path)
        container = op.container
        assert container["command"] == ["blipguard"]
        assert ("--all-namespaces" in container["args"]) == cluster_wide
        probe = container["livenessProbe"]["httpGet"]
        assert op.port(probe["port"]) == probe_port and container["readinessProbe"]["httpGet"] == probe
        assert op.port("metrics") == metrics_port
        manifest = [d for d in yaml.safe_load_all(
            helm.run("get", "manifest", RELEASE, "--namespace", ns).stdout) if d]
        wait_authorized(kube, ns, op.service_account,
                        granted_permissions(bound_roles(manifest, op.service_account, ns)))

        with op.running():
            # kopf answers once it runs; the guards probe lists the example guard once its
            # daemon has read it (through the Role's list/watch on blipguards).
            wait_until(lambda: f"{ns}/fleet" in ((op.healthz() or {}).get("guards") or {}), 60,
                       f"{op.probe_url} to list the example guard")
            assert "blipguard_operator_" in op.metrics_text()
            used = rbac.used(kube.audit_events(), op.user)
            assert ("", "pods", "watch") in used and (crd.GROUP, crd.PLURAL, "watch") in used, used
            assert rbac.used(kube.audit_events(), op.user, forbidden=True) == set(), op.log_tail()
    finally:
        helm.run("uninstall", RELEASE, "--namespace", ns, check=False)


@pytest.mark.parametrize("values", [p for p in CI_VALUES if (yaml.safe_load(p.read_text()) or {}).get("exampleGuard", {}).get("enabled")] + [None],
                         ids=lambda v: v.name if v else "guard-defaults")
def test_every_rendered_guard_passes_the_api_servers_crd_validation(kube: KubeServer, helm4: Helm, values):
    """The CRD's schema and CEL rules, applied by the API server itself (server-side dry run)."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    wait_until(lambda: any(c["type"] == "Established" and c["status"] == "True" for c in kube.client.get(
        f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd.CRD_NAME}")["status"].get("conditions", [])),
        30, "the CRD to be established")
    args = ("--values", str(values)) if values else ("--set", "exampleGuard.enabled=true")
    guard = one(helm4.template(*args), "BlipGuard")
    ns = kube.create_namespace("guard-dry-run")
    guard["metadata"]["namespace"] = ns
    created = kube.client.create(f"/apis/{crd.API_VERSION}/namespaces/{ns}/{crd.PLURAL}", guard, dryRun="All")
    assert created["spec"]["dependencies"] == guard["spec"]["dependencies"]
    broken = copy.deepcopy(guard)
    broken["spec"]["dependencies"].append(copy.deepcopy(broken["spec"]["dependencies"][0]))
    with pytest.raises(KubeAPIError) as refused:
        kube.client.create(f"/apis/{crd.API_VERSION}/namespaces/{ns}/{crd.PLURAL}", broken, dryRun="All")
    assert "each dependency kind may appear only once" in refused.value.message
