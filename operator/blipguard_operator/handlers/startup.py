"""Operator-wide settings and the login shared with our own API calls."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from .. import kubeapi

FINALIZER = "blipguard.io/guard-daemon"
# Server-side filter of the pod watch: the charts' own name labels. Pods outside it are
# never sent to the operator (with thousands of pods per namespace, kopf's per-object
# bookkeeping is what costs memory); guards' selectors narrow it further. '' watches all.
DEFAULT_POD_SELECTOR = "app.kubernetes.io/name in (redis,nats)"
pod_selector = DEFAULT_POD_SELECTOR
watch_server_timeout = 60  # s; --watch-timeout


def configure(settings: kopf.OperatorSettings) -> None:
    # A restarted or unreachable API server is noticed within seconds, not minutes; a
    # quiet watch is renewed by the server's own timeout, so silence is never "dead".
    settings.watching.server_timeout = watch_server_timeout
    settings.watching.client_timeout = watch_server_timeout + 30
    settings.watching.connect_timeout = 5
    settings.watching.reconnect_backoff = 1.0
    # Explicit namespaces only, no cluster-wide Namespace/CRD watches: least privilege
    # (rbac.py). The CRD must exist before the operator starts (the chart's crds/).
    settings.scanning.disabled = True
    if pod_selector:
        settings.watching.label_selectors["v1", "pods"] = pod_selector
    settings.persistence.finalizer = FINALIZER
    # Our events are posted explicitly (kopf.event). kopf would also post every handler
    # log line as an Event on the object, i.e. on other charts' pods: none of that.
    settings.posting.level = logging.CRITICAL + 10
    settings.networking.request_timeout = 15


def login(**kwargs: Any) -> Any:
    """The ServiceAccount in a pod, else the kubeconfig (``KUBECONFIG`` or ~/.kube/config)."""
    info = None
    if os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token") and not os.environ.get("KUBECONFIG"):
        info = kopf.login_with_service_account(**kwargs)
    if info is None:
        info = kopf.login_with_kubeconfig(**kwargs)
    if info is None:
        raise kopf.LoginError("no Kubernetes credentials: no ServiceAccount token and no kubeconfig")
    return kubeapi.remember(info)
