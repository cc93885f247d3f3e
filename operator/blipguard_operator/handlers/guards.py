"""One daemon per guard: parse its spec, run its machine, follow spec changes and the
force-resume annotation until the guard is deleted or the operator stops."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import kopf

from .. import crd, kubeapi
from ..model import Tick
from ..runtime import TICK, GuardRuntime
from ..spec import SpecError, parse
from . import registry

logger = logging.getLogger(__name__)


def _parse(spec: Any, namespace: str):
    try:
        return parse(dict(spec), namespace), None
    except SpecError as e:
        return None, str(e)


async def run(name: str, namespace: str, body: Any, spec: Any, meta: Any, status: Any,
              stopped: Any, pods_by_namespace: Any, **_: Any) -> None:
    kube = kubeapi.Kube()

    def emit(kind: str, reason: str, message: str) -> None:
        kopf.event(body, type=kind, reason=reason, message=message[:1024])
        log = logger.warning if kind == "Warning" else logger.info
        log("%s/%s %s: %s", namespace, name, reason, message)

    async def patch_status(data: dict) -> None:
        await kube.patch_status(namespace, name, data)

    async def secret(secret_name: str, key: str) -> str:
        return await kube.secret_value(namespace, secret_name, key)

    runtime = GuardRuntime(namespace, name, emit, patch_status, secret, status=dict(status or {}))
    seen_generation = None
    # A value handled before a restart (status) is not handled again.
    force_seen = (status or {}).get("forceResumeHandled")
    runtime.obs.force_resume_handled = force_seen
    try:
        registry.add(runtime)
        while not stopped:
            generation = meta.get("generation")
            if generation != seen_generation:
                parsed, error = _parse(spec, namespace)
                if error:
                    emit("Warning", "InvalidSpec", error)
                await runtime.configure(parsed, error, generation)
                seen_generation = generation
                if parsed is not None:  # what exists now, for new selectors or a mode change
                    for pod in _pods(pods_by_namespace, parsed):
                        runtime.observe(pod)
            force = (meta.get("annotations") or {}).get(crd.FORCE_RESUME_ANNOTATION)
            if force and force != force_seen:
                force_seen = force
                runtime.force_resume(by=f"annotation {crd.FORCE_RESUME_ANNOTATION}={force}")
                runtime.obs.force_resume_handled = force
            await _one_tick(runtime)
    finally:
        registry.remove(runtime)
        await runtime.close()
        await kube.close()


async def _one_tick(runtime: GuardRuntime) -> None:
    try:
        event = await asyncio.wait_for(runtime.queue.get(), timeout=TICK)
    except asyncio.TimeoutError:
        event = Tick(time.time())
    await runtime.handle(event)


def _pods(index: Any, spec) -> list[dict]:
    namespaces = {dep.namespace for dep in spec.dependencies}
    return [pod for ns in sorted(namespaces) for pod in (index.get(ns, []) if index is not None else [])]
