"""kopf's probe endpoint (``/healthz``): what the liveness and readiness probes read."""

from __future__ import annotations

from typing import Any

from . import registry


def guards(**_: Any) -> dict:
    return {f"{ns}/{name}": str(rt.state.phase) if rt.state is not None else "invalid"
            for (ns, name), rt in sorted(registry.GUARDS.items())}
