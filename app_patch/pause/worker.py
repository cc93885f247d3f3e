"""The worker side: remote-control commands, lease expiry, start-up catch-up, breaker probe.

Every change to what the consumer consumes happens on the worker's event loop (control
command handlers and consumer timers), never from another thread.
"""

import logging
import threading
import time

from .. import metrics
from . import board, breaker
from .leases import BREAKER, OPERATOR, InvalidPause, Leases, check_source, validate
from .probes import probe

logger = logging.getLogger("blipguard.pause")

PAUSE = "blipguard_pause"
RESUME = "blipguard_resume"
STATUS = "blipguard_pause_status"
PUBLISH_WAIT = 0.2  # s the main process waits for the board's write lock at a time
ALLOWED_ARGS = {
    PAUSE: {"queue", "lease", "reason", "dependency", "source"},
    RESUME: {"queue", "dependency", "source"},
    STATUS: set(),
}


class Controller:
    """One per worker main process."""

    probe_interval = 1.0  # s between probes while the breaker holds
    probe_timeout = 1.0  # s for one probe, connect included

    def __init__(self, queues: tuple[str, ...]):
        self.queues = queues
        self.leases = Leases()
        self.cancelled: set[str] = set()
        self.probing: set[str] = set()
        self.breaker_holds: dict[str, tuple[float, str]] = {}  # dependency -> (lease s, reason) until the probe answers
        self.probe = probe
        self._expiry_scheduled_for = 0.0
        self.paused_since: float | None = None  # for the reapers (app_patch.reaper)
        self.last_pause: tuple[float, float] | None = None

    # -- helpers ---------------------------------------------------------------
    def _publish(self, consumer, reset_failures: tuple[str, ...] = ()) -> None:
        now = time.time()
        view = self.leases.board_view(now)
        if view["leases"] and self.paused_since is None:
            self.paused_since = now
        elif not view["leases"] and self.paused_since is not None:
            self.last_pause = (self.paused_since, now)
            self.paused_since = None
        view["pause_span"] = {"since": self.paused_since, "last": self.last_pause}
        metrics.set_gauge("worker_paused", 1 if view["leases"] else 0)

        def publish(data: dict) -> dict:
            failures = {k: v for k, v in data.get("failures", {}).items() if k not in reset_failures}
            return {**data, **view, "failures": failures}

        try:
            (board.current() or board.create()).update(publish, timeout=PUBLISH_WAIT)
        except board.BoardBusy as e:
            # A child is stuck holding the board: do not block the event loop (it enforces
            # the time limit that will kill that child); try again shortly.
            logger.warning("%s; retrying", e)
            consumer.timer.call_after(PUBLISH_WAIT, self._publish, (consumer, reset_failures))

    def _check_queue(self, queue) -> list[str]:
        if queue is None:
            return list(self.queues)
        if not isinstance(queue, str) or queue not in self.queues:
            raise InvalidPause(f"unknown queue {queue!r}: this worker's result queues are {list(self.queues)}")
        return [queue]

    def _stop_consuming(self, consumer, queues: list[str]) -> None:
        for q in queues:
            if q not in self.cancelled:
                consumer.cancel_task_queue(q)
                self.cancelled.add(q)

    def _start_consuming(self, consumer) -> None:
        amqp_queues = consumer.app.amqp.queues
        for q in sorted(self.cancelled):
            consumer.add_task_queue(q)
            # Celery's add_task_queue leaves a previously cancelled queue out of the
            # consume-from set (celery#7733): the next broker reconnect would silently
            # drop it. Put it back.
            if q in amqp_queues:
                amqp_queues.select_add(amqp_queues[q])
        self.cancelled.clear()

    def _schedule_expiry(self, consumer) -> None:
        until = self.leases.until(time.time())
        if until and until != self._expiry_scheduled_for:
            self._expiry_scheduled_for = until
            consumer.timer.call_after(max(0.0, until - time.time()) + 0.01, self.expire, (consumer,))

    # -- operations (on the event loop) ---------------------------------------
    def pause(self, consumer, lease=None, reason="", dependency="redis", queue=None, source=OPERATOR) -> dict:
        seconds, reason, dependency = validate(lease, reason, dependency)
        source = check_source(source)
        queues = self._check_queue(queue)
        now = time.time()
        held, renewed = self.leases.pause(dependency, reason, seconds, now, source)
        self._publish(consumer)
        self._stop_consuming(consumer, queues)
        self._schedule_expiry(consumer)
        if not renewed:
            logger.warning("paused %s for %s (%.0fs lease, by %s): %s", queues, dependency, seconds, source, reason)
        if source == BREAKER:
            tripped_for, why = self.breaker_holds.get(dependency, (seconds, ""))  # renewals keep the trip's
            self.breaker_holds[dependency] = (tripped_for, why or held.reason)
            self.start_probe(consumer, dependency)
        return {"ok": True, "paused": True, "renewed": renewed, "queues": queues, "lease": held.as_dict(now)}

    def resume(self, consumer, queue=None, dependency=None, source=OPERATOR) -> dict:
        """End the pause for one dependency or all. An operator's resume (the default
        source) leaves a breaker hold in force: that worker cannot reach the dependency
        itself, and its probe ends the hold as soon as it can. ``source="breaker"`` ends
        a breaker hold (the probe does that; on-call may too, to override it)."""
        self._check_queue(queue)
        if dependency is not None and not isinstance(dependency, str):
            raise InvalidPause(f"dependency must be a name, got {dependency!r:.40}")
        source = check_source(source)
        ended = self.leases.resume(dependency, source)
        if source == BREAKER:
            for dep in [dependency] if dependency else list(self.breaker_holds):
                self.breaker_holds.pop(dep, None)
        self._publish(consumer, tuple(lease.dependency for lease in ended if lease.source == BREAKER))
        now = time.time()
        if not self.leases.paused(now):
            self._start_consuming(consumer)
        if ended:
            logger.warning("resumed %s (%s, by %s)", list(self.queues), ", ".join(lease.dependency for lease in ended), source)
        held_by_breaker = sorted(lease.dependency for lease in self.leases.active(now) if lease.source == BREAKER)
        if held_by_breaker and source != BREAKER:
            logger.warning("still paused: this worker's breaker holds %s until its probe answers", held_by_breaker)
        return {"ok": True, "paused": self.leases.paused(now), "ended": [lease.dependency for lease in ended],
                "held_by_breaker": held_by_breaker}

    def expire(self, consumer) -> None:
        now = time.time()
        ended = self.leases.expire(now)
        for lease in ended:
            if lease.source == BREAKER and lease.dependency in self.breaker_holds:
                # Normally the probe extends the lease well before this; if it could not
                # (a lost control message, a dead probe thread), the hold still stands.
                _, decision = breaker.step(breaker.State(holding=True), breaker.Event.LEASE_EXPIRED)
                if decision is breaker.Decision.EXTEND:
                    seconds, reason = self.breaker_holds[lease.dependency]
                    self.leases.pause(lease.dependency, reason, seconds, now, BREAKER)
                    self.start_probe(consumer, lease.dependency)
        self._publish(consumer)
        if ended:
            logger.warning("pause lease expired for %s", ", ".join(lease.dependency for lease in ended))
        if not self.leases.paused(now):
            self._start_consuming(consumer)
        else:
            self._schedule_expiry(consumer)

    def status(self, consumer) -> dict:
        now = time.time()
        return {
            "ok": True,
            "paused": self.leases.paused(now),
            "leases": [lease.as_dict(now) for lease in self.leases.active(now)],
            # What kombu really consumes, not what this controller meant to: a worker that
            # lost its consumer after a broker reconnect (celery#8030) shows up here.
            "consuming": sorted(q for q in self.queues if _consuming_from(consumer, q)),
            "held": sorted(self.cancelled),
            "queues": sorted(self.queues),
        }

    def adopt(self, consumer, peer_leases: list[dict]) -> None:
        """At start-up: take on the longest pause a peer reports (remaining time)."""
        for lease in peer_leases:
            try:
                self.pause(consumer, lease["remaining"], lease.get("reason", ""), lease["dependency"], source="peer")
            except (InvalidPause, KeyError):
                continue

    # -- breaker probe (its own thread; changes go through control commands) ---
    def start_probe(self, consumer, dependency: str) -> None:
        if dependency in self.probing:
            return
        self.probing.add(dependency)
        threading.Thread(
            target=self._probe_loop, args=(consumer.app, consumer.hostname, dependency),
            name=f"blipguard-probe-{dependency}", daemon=True,
        ).start()

    def _probe_loop(self, app, hostname: str, dependency: str) -> None:
        started = time.time()
        try:
            while dependency in self.breaker_holds:
                ok = self.probe(dependency, self.probe_timeout)
                _, decision = breaker.step(breaker.State(holding=True),
                                           breaker.Event.PROBE_OK if ok else breaker.Event.PROBE_FAILED)
                if decision is breaker.Decision.RESUME:
                    logger.warning("%s answers again: resuming", dependency)
                    app.control.broadcast(RESUME, arguments={"dependency": dependency, "source": BREAKER},
                                          destination=[hostname])
                    return
                self._extend_if_due(app, hostname, dependency, started)
                time.sleep(self.probe_interval)
        finally:
            self.probing.discard(dependency)

    def _extend_if_due(self, app, hostname: str, dependency: str, started: float) -> None:
        now = time.time()
        hold = self.breaker_holds.get(dependency)
        lease = self.leases.held(dependency, BREAKER, now)
        if hold is None:
            return
        seconds, reason = hold
        extend_by = breaker.renewal(lease.remaining(now) if lease else 0.0, seconds,
                                    self.probe_interval + self.probe_timeout)
        if extend_by is None:
            return
        logger.warning("%s still unreachable after %.0fs: the breaker keeps this worker paused", dependency, now - started)
        app.control.broadcast(
            PAUSE, arguments={"lease": extend_by, "reason": reason, "dependency": dependency, "source": BREAKER},
            destination=[hostname],
        )


_controller: Controller | None = None


def controller() -> Controller:
    global _controller
    if _controller is None:
        from ..host import current_host

        _controller = Controller((current_host().config.result_queue,))
    return _controller


def _reply(fn, state, kwargs: dict, command: str) -> dict:
    unknown = set(kwargs) - ALLOWED_ARGS[command]
    if unknown:
        return {"ok": False, "error": f"{command}: unknown arguments {sorted(unknown)}; allowed: {sorted(ALLOWED_ARGS[command])}"}
    try:
        return {**fn(state.consumer, **kwargs), "hostname": state.consumer.hostname}
    except (InvalidPause, TypeError) as e:
        return {"ok": False, "error": f"{command}: {e}", "hostname": state.consumer.hostname}


def register() -> None:
    """Register the control commands and the start-up catch-up (idempotent)."""
    from celery import signals
    from celery.worker.control import Panel, control_command

    if PAUSE in Panel.data:
        return

    @control_command()
    def blipguard_pause(state, **kwargs):
        """Stop taking result tasks for a lease: queue, lease (s), reason, dependency."""
        return _reply(controller().pause, state, kwargs, PAUSE)

    @control_command()
    def blipguard_resume(state, **kwargs):
        """End the pause (one dependency's, or all)."""
        return _reply(controller().resume, state, kwargs, RESUME)

    @control_command()
    def blipguard_pause_status(state, **kwargs):
        """Report this worker's pause leases and queues."""
        return _reply(controller().status, state, kwargs, STATUS)

    signals.celeryd_after_setup.connect(_hold_result_queues, weak=False)
    signals.worker_ready.connect(_catch_up, weak=False)


def _consuming_from(consumer, queue: str) -> bool:
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is None:
        return False
    try:
        return bool(task_consumer.consuming_from(queue))
    except Exception:  # noqa: BLE001 - a consumer torn down mid-reconnect consumes nothing
        return False


def _hold_result_queues(sender=None, instance=None, **kwargs) -> None:
    """Before the consumer starts: leave the result queues out until _catch_up decides."""
    from .. import sentry

    sentry.WORKER = sender if isinstance(sender, str) else getattr(instance, "hostname", None)
    c = controller()
    queues = instance.app.amqp.queues
    for q in c.queues:
        if q in queues.consume_from:
            queues.deselect(q)
            c.cancelled.add(q)


def _catch_up(sender=None, **kwargs) -> None:
    """A worker that starts during a pause asks its peers before it takes result tasks."""
    consumer = sender
    if consumer is None or not hasattr(consumer, "app"):
        return
    c = controller()
    try:
        _adopt_peer_pauses(consumer)
    finally:
        if not c.leases.paused(time.time()):
            c._start_consuming(consumer)


def _adopt_peer_pauses(consumer) -> None:
    try:
        replies = consumer.app.control.broadcast(STATUS, reply=True, timeout=0.5)
    except Exception as e:  # no peers reachable: nothing to adopt
        logger.info("could not ask peers for pause state: %s", e)
        return
    leases = []
    for reply in replies or []:
        for host, answer in reply.items():
            if host != consumer.hostname and isinstance(answer, dict):
                leases.extend(answer.get("leases", []))
    if leases:
        longest = {}
        for lease in leases:
            dep = lease.get("dependency")
            if dep and lease.get("remaining", 0) > longest.get(dep, {}).get("remaining", 0):
                longest[dep] = lease
        controller().adopt(consumer, list(longest.values()))
