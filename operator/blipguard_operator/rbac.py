"""The exact permissions the operator uses: the one place the chart renders its Role from.

Per served namespace (guards and the pods they watch live there). Nothing cluster-wide:
the operator runs standalone (no peering objects) and with explicit namespaces, so kopf
needs no Namespace or CRD watches; API discovery is open to every authenticated user.
The tests run the operator with a ServiceAccount bound to exactly this and compare it with
what the API server's audit log shows the operator really did.
"""

from __future__ import annotations

from . import crd

# (apiGroup, resource, verbs)
RULES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # Guards: kopf lists and watches them, and patches its finalizer (the per-guard daemon
    # is stopped through it) and its own progress marks.
    (crd.GROUP, crd.PLURAL, ("list", "watch", "patch")),
    # The guard's status, written by its daemon.
    (crd.GROUP, f"{crd.PLURAL}/status", ("patch",)),
    # Watched pods: read only (a stateless event handler and an index; nothing written).
    ("", "pods", ("list", "watch")),
    # Kubernetes events on the guard (kopf posts core/v1 events).
    ("", "events", ("create",)),
    # The broker (and NATS) URL Secrets named by the guards of this namespace.
    ("", "secrets", ("get",)),
)


def role_rules() -> list[dict]:
    return [{"apiGroups": [group], "resources": [resource], "verbs": list(verbs)}
            for group, resource, verbs in RULES]


def role(namespace: str, name: str = "blipguard-operator") -> dict:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": namespace}, "rules": role_rules()}


def role_binding(namespace: str, service_account: str, sa_namespace: str | None = None,
                 name: str = "blipguard-operator") -> dict:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": service_account,
                          "namespace": sa_namespace or namespace}]}


def granted() -> set[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) the Role grants."""
    return {(group, resource, verb) for group, resource, verbs in RULES for verb in verbs}


def used(audit_events: list[dict], username: str, forbidden: bool = False) -> set[tuple[str, str, str]]:
    """(apiGroup, resource[/subresource], verb) of a user's resource requests in API
    server audit events: the allowed ones, or with ``forbidden`` the refused ones (pure)."""
    out = set()
    for event in audit_events:
        # A watch still open logs ResponseStarted only; every other request ResponseComplete.
        if (event.get("user") or {}).get("username") != username or event.get("stage") not in (
                "ResponseComplete", "ResponseStarted"):
            continue
        ref = event.get("objectRef")
        if not ref or not ref.get("resource"):
            continue  # discovery and other non-resource URLs
        refused = (event.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid"
        if refused != forbidden:
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.add((ref.get("apiGroup", ""), resource, event.get("verb", "")))
    return out
