"""Watched pods: read only. No annotations, finalizers or status are ever written on
them (they belong to other charts); the handlers are stateless and only feed guards."""

from __future__ import annotations

from typing import Any

from . import registry


def slim(body: Any) -> dict:
    """The parts of a pod a guard reads (the index holds every pod of the namespaces)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    return {
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "labels")},
        "status": {k: status.get(k) for k in ("conditions", "containerStatuses")},
    }


def on_event(event: dict, body: Any, **_: Any) -> None:
    deleted = event.get("type") == "DELETED"
    pod = slim(body)
    for runtime in list(registry.GUARDS.values()):
        runtime.observe(pod, deleted=deleted)


def index(body: Any, namespace: str, **_: Any) -> dict:
    """Pods by namespace, so a guard created later starts from what exists now."""
    return {namespace: slim(body)}
