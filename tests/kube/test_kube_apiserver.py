"""The local Kubernetes API server: version, CEL validation, PodSecurity, RBAC + audit."""

from __future__ import annotations

from pathlib import Path

import pytest

from blipguard.localstack import kube as kube_mod
from blipguard.localstack.kube import KubeAPIError, KubeServer
from blipguard.localstack.procs import wait_until

pytestmark = pytest.mark.kube


def test_missing_binaries_name_the_setup_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLIPGUARD_CACHE", str(tmp_path))
    assert not kube_mod.kube_available()
    assert kube_mod.missing_kube_binaries() == ["etcd", "kube-apiserver"]
    with pytest.raises(kube_mod.KubeBinariesMissing, match=r"etcd, kube-apiserver.*bash scripts/setup\.sh"):
        KubeServer(tmp_path / "k").start()


def test_starts_from_nothing_ready_with_version(kube: KubeServer) -> None:
    assert kube.started_in < 30
    status, body = kube.client.request_raw("GET", "/readyz")
    assert (status, body) == (200, "ok")
    version = kube.client.get("/version")
    assert version["gitVersion"] == "v1.34.4"
    assert (version["major"], version["minor"]) == ("1", "34")
    out = kube.kubectl("version", "-o", "json").stdout
    assert '"gitVersion": "v1.34.4"' in out


def _crd(group: str) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group, "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "properties": {
                            "minReplicas": {"type": "integer"},
                            "maxReplicas": {"type": "integer"},
                            "mode": {"type": "string"},
                        },
                        "x-kubernetes-validations": [
                            {"rule": "self.minReplicas <= self.maxReplicas",
                             "message": "minReplicas must not exceed maxReplicas"},
                            {"rule": "!has(self.mode) || self.mode in ['fast', 'safe']"},
                        ],
                    }},
                }},
            }],
        },
    }


def test_crd_cel_rule_rejects_bad_object(kube: KubeServer, namespace: str) -> None:
    group = f"{namespace}.blipguard.test"
    kube.client.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", _crd(group))

    def established() -> bool:
        crd = kube.client.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{group}")
        return any(c["type"] == "Established" and c["status"] == "True"
                   for c in (crd.get("status") or {}).get("conditions") or [])

    wait_until(established, 15, "CRD Established", 0.05)
    path = f"/apis/{group}/v1/namespaces/{namespace}/widgets"

    def widget(name: str, **spec: object) -> dict:
        return {"apiVersion": f"{group}/v1", "kind": "Widget",
                "metadata": {"name": name}, "spec": spec}

    def create(body: dict) -> tuple[int, object]:
        return kube.client.request_raw("POST", path, body)

    # The resource is served a moment after Established: wait past 404s.
    status, body = wait_until(lambda: (r := create(widget("good", minReplicas=1, maxReplicas=3)))[0] != 404 and r,
                              15, "widgets served", 0.05)
    assert status == 201, body

    status, body = create(widget("bad", minReplicas=5, maxReplicas=2))
    assert status == 422
    assert body["reason"] == "Invalid"
    assert body["message"] == (
        f'Widget.{group} "bad" is invalid: spec: Invalid value: "object": '
        "minReplicas must not exceed maxReplicas"
    )

    status, body = create(widget("worse", minReplicas=1, maxReplicas=2, mode="yolo"))
    assert status == 422
    assert body["message"] == (
        f'Widget.{group} "worse" is invalid: spec: Invalid value: "object": '
        "failed rule: !has(self.mode) || self.mode in ['fast', 'safe']"
    )


def _pod(name: str, security: dict, pod_security: dict | None = None) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"securityContext": pod_security or {},
                 "containers": [{"name": "app", "image": "busybox:1.36", "securityContext": security}]},
    }


def test_pod_security_restricted_namespace(kube: KubeServer) -> None:
    ns = kube.create_namespace("psa", {"pod-security.kubernetes.io/enforce": "restricted"})
    path = f"/api/v1/namespaces/{ns}/pods"
    status, body = kube.client.request_raw("POST", path, _pod("root", {"runAsUser": 0}))
    assert status == 403
    assert body["reason"] == "Forbidden"
    msg = body["message"]
    assert msg.startswith('pods "root" is forbidden: violates PodSecurity "restricted:latest": ')
    assert 'runAsUser=0 (container "app" must not set runAsUser=0)' in msg
    assert 'allowPrivilegeEscalation != false (container "app" must set ' \
           "securityContext.allowPrivilegeEscalation=false)" in msg
    assert "runAsNonRoot != true" in msg

    compliant = _pod("app", {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                             "runAsUser": 1000, "capabilities": {"drop": ["ALL"]}},
                     {"seccompProfile": {"type": "RuntimeDefault"}})
    created = kube.client.create(path, compliant)
    assert created["metadata"]["name"] == "app"


def test_service_account_token_rbac_and_audit(kube: KubeServer, namespace: str) -> None:
    c = kube.client
    c.create(f"/api/v1/namespaces/{namespace}/serviceaccounts",
             {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}})
    c.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
    })
    c.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    })
    token = kube.service_account_token(namespace, "reader", expiration=600)
    user = f"system:serviceaccount:{namespace}:reader"
    reader = kube.token_client(token)

    assert reader.get(f"/api/v1/namespaces/{namespace}/pods")["items"] == []
    with pytest.raises(KubeAPIError) as denied:
        reader.get(f"/api/v1/namespaces/{namespace}/secrets")
    assert denied.value.status == 403
    assert denied.value.message == (
        f'secrets is forbidden: User "{user}" cannot list resource "secrets" '
        f'in API group "" in the namespace "{namespace}"'
    )
    with pytest.raises(KubeAPIError) as denied_create:
        reader.create(f"/api/v1/namespaces/{namespace}/pods", _pod("x", {}))
    assert denied_create.value.status == 403

    # The same token from kubectl, through a kubeconfig made for it.
    cfg = kube.token_kubeconfig(token, namespace=namespace)
    out = kube.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=cfg)
    assert out.stdout == user
    res = kube.kubectl("get", "configmaps", kubeconfig=cfg, check=False)
    assert res.returncode != 0 and "forbidden" in res.stderr

    expected = [
        ("list", "pods", 200),
        ("list", "secrets", 403),
        ("create", "pods", 403),
        ("create", "selfsubjectreviews", 201),
        ("list", "configmaps", 403),
    ]

    def seen() -> list[tuple[str, str, int]]:
        return [
            (e["verb"], e.get("objectRef", {}).get("resource", ""), e["responseStatus"]["code"])
            for e in kube.audit_events()
            if e["user"]["username"] == user and e["stage"] == "ResponseComplete"
            and "objectRef" in e  # not kubectl's discovery requests (/api, /apis)
        ]

    wait_until(lambda: len(seen()) >= len(expected), 5, "the audit events of the token's requests")
    assert seen() == expected
