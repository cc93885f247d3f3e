"""The operator's kopf wiring: decorators only; each concern lives in ``handlers/``.

Run it with ``blipguard operator run`` (outside a cluster, with a kubeconfig) or as the
chart's Deployment. One replica, standalone (no peering objects), Recreate strategy: two
operators pausing the same fleet would only double the broadcasts, never conflict (a
pause is a lease, resume is idempotent), and standalone needs no extra RBAC.
"""

from __future__ import annotations

from typing import Any

import kopf

from . import crd
from .handlers import guards, pods, probes, startup


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    startup.configure(settings)


@kopf.on.login()
def login(**kwargs: Any) -> Any:
    return startup.login(**kwargs)


@kopf.index("", "v1", "pods")
def pods_by_namespace(**kwargs: Any) -> dict:
    return pods.index(**kwargs)


@kopf.on.event("", "v1", "pods")
def pod_event(**kwargs: Any) -> None:
    pods.on_event(**kwargs)


@kopf.daemon(crd.GROUP, crd.VERSION, crd.PLURAL, cancellation_timeout=10.0)
async def guard(**kwargs: Any) -> None:
    await guards.run(**kwargs)


@kopf.on.probe(id="guards")
def guards_probe(**kwargs: Any) -> dict:
    return probes.guards(**kwargs)
