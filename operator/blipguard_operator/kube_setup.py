"""Installing the BlipGuard CRD with a plain API client (tests and local setups; in a
cluster the Helm chart installs ``operator/crds/``)."""

from __future__ import annotations

import time
from typing import Any, Protocol

from . import crd


class Client(Protocol):
    """What ``install_crd`` needs, e.g. ``blipguard.localstack.kube.KubeClient``. Errors
    carry the HTTP status as ``.status``."""

    def get(self, path: str, **params: Any) -> Any: ...
    def create(self, path: str, body: Any, **params: Any) -> Any: ...
    def replace(self, path: str, body: Any) -> Any: ...


CRDS_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def install_crd(client: Client, timeout: float = 30) -> dict:
    """Create the CRD, or update it to ``crd.manifest()``; return once BlipGuards are
    served (Established, and the resource answers: it can 404 a moment after). A changed
    schema of an existing CRD can take a moment longer to apply."""
    body = crd.manifest()
    try:
        client.create(CRDS_PATH, body)
    except Exception as exc:  # noqa: BLE001 - only a 409 is expected; others re-raise
        if getattr(exc, "status", None) != 409:
            raise
        current = client.get(f"{CRDS_PATH}/{crd.CRD_NAME}")
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        client.replace(f"{CRDS_PATH}/{crd.CRD_NAME}", body)
    deadline = time.monotonic() + timeout
    while True:
        installed = client.get(f"{CRDS_PATH}/{crd.CRD_NAME}")
        if _established(installed) and _served(client):
            return installed
        if time.monotonic() >= deadline:
            raise TimeoutError(f"CRD {crd.CRD_NAME} not served after {timeout}s: "
                               f"{(installed.get('status') or {}).get('conditions')}")
        time.sleep(0.05)


def _established(installed: dict) -> bool:
    conditions = (installed.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def _served(client: Client) -> bool:
    try:
        client.get(f"/apis/{crd.GROUP}/{crd.VERSION}/{crd.PLURAL}", limit=1)
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "status", None) == 404:
            return False
        raise
    return True
