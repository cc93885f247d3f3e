"""One guard at run time: feeds the blip machine, carries out its actions, writes status.

The guard's daemon owns one ``GuardRuntime``; pod handlers put observations on its queue.
Every decision is the machine's (``blip.step``); this module only does I/O and timing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from . import metrics, sentry_events
from .blip import GuardState, step
from .channels import CeleryChannel, NatsChannel, not_consuming
from .model import (
    CheckConsuming,
    ContainerStatus,
    Dependency,
    ForceResume,
    HeldResultsDrained,
    HeldResultsDraining,
    HoldNats,
    Mode,
    Pause,
    Phase,
    PodObserved,
    Renew,
    Report,
    ResumeCelery,
    ResumeNats,
    Tick,
)
from .spec import GuardSpec, WatchedDependency
from .status import Observations, build, restore

logger = logging.getLogger(__name__)

TICK = 0.25  # seconds between ticks while nothing happens
CONSUMING_WAIT = 5.0  # a resumed worker re-subscribes asynchronously: give it this long
CONSUMING_RECHECK = 2.0  # then look again: consuming at first and dropped soon after is catatonic
# While some worker does not consume, ask again this often: the figure (and its critical
# alert) clears once the workers are fixed, not only at the next resume.
CONSUMING_FOLLOW_UP = 30.0

Emit = Callable[[str, str, str], None]  # (type Normal/Warning, reason, message)


class GuardRuntime:
    def __init__(self, namespace: str, name: str, emit: Emit,
                 patch_status: Callable[[dict], Awaitable[None]], secret: Callable[[str, str], Awaitable[str]],
                 status: dict | None = None):
        self.namespace, self.name = namespace, name
        self._status_at_start = status  # what a predecessor left: a blip to take up again
        self.emit = emit
        self.patch_status = patch_status
        self.secret = secret
        self.queue: asyncio.Queue = asyncio.Queue()
        self.spec: GuardSpec | None = None
        self.state: GuardState | None = None
        self.obs = Observations()
        self.celery: CeleryChannel | None = None
        self.nats: NatsChannel | None = None
        self.generation: int | None = None
        self._broker_url: str | None = None  # from the guard's Secret
        self._written: dict | None = None
        self._labels = {"namespace": namespace, "guard": name}
        self._blip_dependencies: dict[str, str] = {}  # blip id -> dependency, for reports after it ended
        self._consuming_follow_up = 0.0  # monotonic time of the next look at workers not consuming

    # -- inputs ------------------------------------------------------------------
    def watches(self, namespace: str, labels: dict) -> list[WatchedDependency]:
        if self.spec is None:
            return []
        return [d for d in self.spec.dependencies if d.namespace == namespace and d.selector.matches(labels)]

    def observe(self, pod: dict, deleted: bool = False) -> None:
        meta = pod.get("metadata") or {}
        for dep in self.watches(meta.get("namespace", ""), meta.get("labels") or {}):
            self.queue.put_nowait(pod_observed(pod, dep.kind, deleted))

    def force_resume(self, by: str) -> None:
        self.queue.put_nowait(ForceResume(time.time(), by=by))

    # -- configuration -------------------------------------------------------------
    async def configure(self, spec: GuardSpec | None, error: str | None, generation: int | None) -> None:
        self.generation = generation
        self.obs.spec_error = error
        metrics.SPEC_VALID.labels(**self._labels).set(0 if error else 1)
        if spec is None:
            return
        old = self.spec
        self.spec = spec
        metrics.initialize(self._labels["namespace"], self._labels["guard"], [d.kind for d in spec.dependencies])
        restored: list = []
        if self.state is None:
            self.state, restored = restore(self._status_at_start, spec.settings, time.time())
            self._status_at_start = None
        if old is None or old.pause != spec.pause:
            await self._open_channels(spec)
        self.obs.unprotectable = unprotectable(spec, self._broker_url)
        if self.state.drain is not None and self.nats is not None:
            try:  # the consumers our predecessor paused are the ones whose acks the drain waits for
                await self.nats.adopt_paused()
            except Exception as e:  # noqa: BLE001 - the drain wait times out by itself
                logger.warning("cannot list the paused job consumers: %s", e)
        for action in restored:
            await self._do(action)

    async def _open_channels(self, spec: GuardSpec) -> None:
        self.obs.broker_error = None
        if self.celery is not None:
            self.celery.close()
            self.celery = None
        if self.nats is not None:
            await self.nats.close()
            self.nats = None
        p = spec.pause
        try:
            self._broker_url = await self.secret(p.broker_secret.name, p.broker_secret.key)
            self.celery = CeleryChannel(self._broker_url, p.result_queues, p.expected_workers)
            if p.nats is not None:
                url = p.nats.url or await self.secret(p.nats.url_secret.name, p.nats.url_secret.key)
                self.nats = NatsChannel(url, p.nats)
        except Exception as e:  # noqa: BLE001 - reported in status; the next spec change retries
            self.obs.broker_error = f"cannot set up the pause channel: {e}"
            self.emit("Warning", "PauseChannelError", self.obs.broker_error)

    # -- the loop ------------------------------------------------------------------
    async def handle(self, event) -> None:
        if self.spec is None or self.state is None:
            await self.write_status()
            return
        before = self.state
        self.state, actions = step(self.state, event, self.spec.settings)
        self._count(before, self.state, event)
        for action in actions:
            await self._do(action)
        if self.state.drain is not None and isinstance(event, Tick) and self.celery is not None:
            try:
                remaining = await self._held_remaining()
            except Exception as e:  # noqa: BLE001 - the drain wait times out by itself
                logger.debug("drain check failed: %s", e)
            else:
                now = time.time()
                await self.handle(HeldResultsDrained(now) if remaining == 0 else HeldResultsDraining(now, remaining))
                return
        if isinstance(event, Tick) and self.obs.not_consuming and self.state.blip is None:
            await self._follow_up_consuming()
        await self.write_status()

    async def _held_remaining(self) -> int:
        """Held results still on their way: waiting in the broker, plus the tasks the paused
        job consumers handed out and nobody acked yet (0: drained)."""
        ready = await self.celery.ready_messages()
        return ready + (await self.nats.ack_pending() if self.nats is not None else 0)

    def _count(self, before: GuardState, after: GuardState, event) -> None:
        deps = {d.kind for d in self.spec.dependencies}
        for dep in deps:
            up = all(p.healthy for p in after.pods if p.dependency is dep)
            metrics.DEPENDENCY_UP.labels(**self._labels, dependency=str(dep)).set(1 if up else 0)
        if isinstance(event, PodObserved) and after.pods != before.pods:
            old = next((p for p in before.pods if p.name == event.name and p.dependency is event.dependency), None)
            new = next((p for p in after.pods if p.name == event.name and p.dependency is event.dependency), None)
            if old is not None and (new is None or new.uid != old.uid or new.restarts != old.restarts
                                    or (old.healthy and not new.healthy)):
                metrics.RESTARTS_SEEN.labels(**self._labels, dependency=str(event.dependency)).inc()
        if after.blip is not None:
            self._blip_dependencies = {**dict(list(self._blip_dependencies.items())[-15:]),
                                       after.blip.id: str(after.blip.dependency)}
        if after.counters.blips_seen > before.counters.blips_seen and after.blip is not None:
            metrics.BLIPS.labels(**self._labels, dependency=str(after.blip.dependency)).inc()
        if before.blip is not None and after.blip is None and after.counters.last_blip_seconds is not None:
            metrics.BLIP_SECONDS.labels(**self._labels, dependency=str(before.blip.dependency)).observe(
                after.counters.last_blip_seconds)
        metrics.PAUSED.labels(**self._labels).set(1 if after.phase is Phase.PAUSED else 0)
        metrics.DEGRADED.labels(**self._labels).set(1 if after.phase is Phase.DEGRADED else 0)

    def _dependency_of(self, blip_id: str | None) -> str | None:
        blip = self.state.blip if self.state is not None else None
        if blip is not None and (blip_id is None or blip.id == blip_id):
            return str(blip.dependency)
        return self._blip_dependencies.get(blip_id) if blip_id else None

    # -- actions -------------------------------------------------------------------
    async def _do(self, action) -> None:
        if isinstance(action, Report):
            prefix = f"[{action.blip_id}] " if action.blip_id else ""
            self.emit("Warning" if action.warning else "Normal", str(action.reason), prefix + action.message)
            sentry_events.report(self.namespace, self.name, action.reason, self._dependency_of(action.blip_id),
                                 action.blip_id, action.message)
        elif isinstance(action, (Pause, Renew)):
            await self._pause(action)
        elif isinstance(action, ResumeCelery):
            await self._resume_celery(action.blip_id)
        elif isinstance(action, ResumeNats):
            await self._resume_nats(action.blip_id)
        elif isinstance(action, HoldNats):
            await self._hold_nats(action.blip_id)
        elif isinstance(action, CheckConsuming):
            await self._check_consuming(action.blip_id)

    def _broadcast(self, command: str, ok: bool) -> None:
        metrics.BROADCASTS.labels(**self._labels, command=command, outcome="ok" if ok else "failed").inc()

    async def _pause(self, action: Pause | Renew) -> None:
        command = "pause" if isinstance(action, Pause) else "renew"
        reason = f"blip {action.blip_id}: {action.reason}"
        if self.celery is None:
            self._broadcast(command, False)
            self.emit("Warning", "PauseFailed", f"[{action.blip_id}] no pause channel: {self.obs.broker_error}")
            return
        sent = await self.celery.pause(action.lease_seconds, reason, str(action.dependency))
        self._after_broadcast(command, action.blip_id, sent)
        if self.nats is not None:
            # Held past the workers' lease plus the drain: a crashed operator cannot leave a
            # job's consumer paused for longer than its workers.
            hold = action.lease_seconds + self.spec.settings.drain_timeout_seconds + self.spec.settings.settle_seconds
            done, errors = await self.nats.pause(hold)
            self._broadcast(f"{command}_nats", not errors)
            if errors:
                self.emit("Warning", "NatsPauseFailed", f"[{action.blip_id}] {'; '.join(errors[:5])}")
            elif command == "pause" and done:
                self.emit("Normal", "NatsPaused", f"[{action.blip_id}] paused {len(done)} job consumers: "
                          + ", ".join(done[:10]))

    def _after_broadcast(self, command: str, blip_id: str, sent) -> None:
        expected = self.spec.pause.expected_workers
        ok = sent.failure is None and (expected is None or len(sent.confirmed) >= expected) and bool(sent.confirmed)
        self._broadcast(command, ok)
        metrics.WORKERS_CONFIRMED.labels(**self._labels, command=command).set(len(sent.confirmed))
        if command in ("pause", "renew"):
            self.obs.workers_confirmed = len(sent.confirmed)
        if sent.failure:
            self.emit("Warning", f"{command.capitalize()}Failed", f"[{blip_id}] {sent.failure}")
        elif not ok:
            want = f"{expected}" if expected is not None else "at least 1"
            errors = "; ".join(f"{h}: {e}" for h, e in sorted(sent.errors.items()))
            self.emit("Warning", f"{command.capitalize()}Incomplete",
                      f"[{blip_id}] {len(sent.confirmed)} workers confirmed {command} (want {want})"
                      + (f"; errors: {errors}" if errors else ""))
        elif command == "pause":
            self.emit("Normal", "Paused", f"[{blip_id}] {len(sent.confirmed)} workers paused: "
                      + ", ".join(sent.confirmed))

    async def _resume_celery(self, blip_id: str) -> None:
        if self.celery is None:
            return
        sent = await self.celery.resume()
        self._after_broadcast("resume_celery", blip_id, sent)

    async def _hold_nats(self, blip_id: str) -> None:
        if self.nats is None:
            return
        s = self.spec.settings
        errors = await self.nats.hold(s.lease_seconds + s.drain_timeout_seconds + s.settle_seconds)
        self._broadcast("renew_nats", not errors)
        if errors:
            self.emit("Warning", "NatsPauseFailed", f"[{blip_id}] {'; '.join(errors[:5])}")

    async def _resume_nats(self, blip_id: str) -> None:
        if self.nats is None:
            return
        done, errors = await self.nats.resume()
        self._broadcast("resume_nats", not errors)
        if errors:
            self.emit("Warning", "NatsResumeFailed", f"[{blip_id}] {'; '.join(errors[:5])}")

    async def _check_consuming(self, blip_id: str) -> None:
        """Every worker consumes its result queues again, and still does a moment later: a
        worker that re-subscribes and then drops its consumer is the catatonic kind."""
        if self.celery is None:
            return
        missing = await self._missing_consumers(until_all=True)
        if missing is not None and not missing:
            await asyncio.sleep(CONSUMING_RECHECK)
            missing = await self._missing_consumers(until_all=False)
        if missing is None:
            self._broadcast("status", False)
            return
        self._broadcast("status", True)
        self._set_not_consuming(missing)
        self._consuming_follow_up = time.monotonic() + CONSUMING_FOLLOW_UP
        if missing:
            self.emit("Warning", "WorkersNotConsuming",
                      f"[{blip_id}] after the resume these workers do not consume their result queue "
                      f"(restart them): {'; '.join(missing)}")

    async def _follow_up_consuming(self) -> None:
        """Workers named as not consuming, asked again: cleared once they consume (restarted,
        say), or once they are gone from the fleet."""
        if time.monotonic() < self._consuming_follow_up or self.celery is None:
            return
        self._consuming_follow_up = time.monotonic() + CONSUMING_FOLLOW_UP
        missing = await self._missing_consumers(until_all=False)
        if missing is None or missing == self.obs.not_consuming:
            return
        self._set_not_consuming(missing)
        if not missing:
            self.emit("Normal", "WorkersConsuming", "every worker that answered consumes its result queues again")

    def _set_not_consuming(self, missing: list[str]) -> None:
        self.obs.not_consuming = missing
        metrics.WORKERS_NOT_CONSUMING.labels(**self._labels).set(len(missing))

    async def _missing_consumers(self, until_all: bool) -> list[str] | None:
        deadline = time.monotonic() + CONSUMING_WAIT
        while True:
            try:
                replies = await self.celery.status()
            except Exception as e:  # noqa: BLE001
                self.emit("Warning", "StatusFailed", f"cannot ask the workers whether they consume: {e}")
                return None
            missing = not_consuming(replies, self.spec.pause.result_queues)
            if not until_all or not missing or time.monotonic() >= deadline:
                return missing
            await asyncio.sleep(0.25)

    # -- status --------------------------------------------------------------------
    async def write_status(self, force: bool = False) -> None:
        # A guard whose first spec is invalid has no state yet: report it as suspended.
        state = self.state if self.state is not None else GuardState(mode=Mode.SUSPENDED)
        status = build(state, self.obs, time.time(), self.generation)
        if status == self._written and not force:
            return
        try:
            await self.patch_status(status)
            self._written = status
        except Exception as e:  # noqa: BLE001 - retried at the next change or tick
            logger.warning("status of %s/%s not written: %s", self.namespace, self.name, e)

    async def close(self) -> None:
        if self.celery is not None:
            self.celery.close()
        if self.nats is not None:
            await self.nats.close()
        metrics.forget(self.namespace, self.name)


def pod_observed(pod: dict, dependency: Dependency, deleted: bool, now: float | None = None) -> PodObserved:
    """A pod as the machine sees it, stamped ``now`` (default: the wall clock)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    containers = tuple(
        ContainerStatus(
            name=c.get("name", ""),
            restart_count=int(c.get("restartCount") or 0),
            waiting_reason=((c.get("state") or {}).get("waiting") or {}).get("reason"),
        )
        for c in status.get("containerStatuses") or []
    )
    return PodObserved(
        now=time.time() if now is None else now,
        dependency=dependency,
        name=meta.get("name") or "",
        uid=meta.get("uid") or "",
        ready=conditions.get("Ready") == "True" and not deleted,
        containers=containers,
        deleted=deleted,
    )


def unprotectable(spec: GuardSpec, broker_url: str | None) -> str | None:
    """The pause channel runs through a guarded dependency: pausing cannot work then."""
    if not broker_url:
        return None
    scheme = urlsplit(broker_url).scheme
    kinds = {d.kind for d in spec.dependencies}
    if scheme.startswith("redis") and Dependency.REDIS in kinds:
        host = urlsplit(broker_url).hostname
        return (f"the Celery broker is Redis ({host}) and a Redis is guarded: if it is the same Redis, "
                "the pause cannot reach the workers during its blips; use a separate broker (RabbitMQ) "
                "or guard only NATS")
    return None
