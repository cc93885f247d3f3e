"""The running guards, for the pod handlers to fan observations out to."""

from __future__ import annotations

from ..runtime import GuardRuntime

GUARDS: dict[tuple[str, str], GuardRuntime] = {}


def add(runtime: GuardRuntime) -> None:
    GUARDS[(runtime.namespace, runtime.name)] = runtime


def remove(runtime: GuardRuntime) -> None:
    if GUARDS.get((runtime.namespace, runtime.name)) is runtime:
        del GUARDS[(runtime.namespace, runtime.name)]
